"""What the terminal UI knows about each file, and which rows it shows in which order.

Plain data and functions, free of Textual, so that tests can call them directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Literal

from forensic.display import printable
from forensic.inputs import MediaKind, media_kind
from forensic.scan import FileResult

Status = Literal["queued", "scanning", "done", "cached", "error"]
FINAL_STATUSES = frozenset({"done", "cached", "error"})

# Filter name → the verdicts it keeps (None: all files, scanned or not).
FILTERS: dict[str, frozenset[str] | None] = {
    "all": None,
    "suspicious": frozenset({"fake", "uncertain"}),
    "fake": frozenset({"fake"}),
    "uncertain": frozenset({"uncertain"}),
    "real": frozenset({"real"}),
    "no-face": frozenset({"no-face"}),
    "error": frozenset({"error"}),
}
SORTS = ("score", "verdict", "name")
# Most suspicious first; files without a result yet go last.
VERDICT_RANK = {"fake": 0, "uncertain": 1, "real": 2, "no-face": 3, "error": 4, None: 5}


@dataclass
class FileRecord:
    """One input file: where it is, how far its scan is and, once scanned, its result."""

    path: Path
    name: str  # path relative to the scanned folder, as shown (terminal codes escaped)
    kind: MediaKind | None
    size: int | None
    status: Status = "queued"
    frames_done: int = 0  # frames analysed so far, while scanning
    result: FileResult | None = None
    marked: bool = False

    @classmethod
    def for_path(cls, path: Path, folder: Path) -> FileRecord:
        try:
            size = path.stat().st_size
        except OSError:
            size = None  # the scan will report why it cannot read the file
        try:
            name = path.relative_to(folder).as_posix()
        except ValueError:
            name = str(path)
        return cls(path=path, name=printable(name), kind=media_kind(path), size=size)

    @property
    def key(self) -> str:
        return str(self.path)

    # While a file is rescanned or self-tested, its last result still shows (its status says it
    # is being redone), so that it keeps its place in the table instead of dropping to the end.
    @property
    def verdict(self) -> str | None:
        return self.result.verdict if self.result else None

    @property
    def score(self) -> float | None:
        return self.result.score if self.result else None

    @property
    def self_test(self) -> dict | None:
        return self.result.self_test if self.result else None

    @property
    def finished(self) -> bool:
        return self.status in FINAL_STATUSES


def matches(record: FileRecord, filter_name: str, search: str) -> bool:
    """Whether a row is shown: its verdict passes the filter and its name contains the search."""
    verdicts = FILTERS[filter_name]
    if verdicts is not None and record.verdict not in verdicts:
        return False
    return search.casefold() in record.name.casefold()


def sort_key(record: FileRecord, sort: str) -> tuple:
    if sort == "score":
        # Highest score first; files without a score after them, by verdict, then name.
        score = record.score
        return (score is None, -(score or 0.0), VERDICT_RANK[record.verdict], record.name)
    if sort == "verdict":
        return (VERDICT_RANK[record.verdict], -(record.score or 0.0), record.name)
    return (record.name,)


def visible_records(records: Iterable[FileRecord], filter_name: str = "all", search: str = "",
                    sort: str = "score") -> list[FileRecord]:
    """The rows the table shows, in order."""
    return sorted((r for r in records if matches(r, filter_name, search)), key=lambda r: sort_key(r, sort))


def verdict_counts(records: Iterable[FileRecord]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for record in records:
        if record.verdict is not None:
            counts[record.verdict] = counts.get(record.verdict, 0) + 1
    return counts


def format_size(size: int | None) -> str:
    if size is None:
        return "?"
    value = float(size)
    for unit in ("B", "K", "M", "G"):
        if value < 1024 or unit == "G":
            break
        value /= 1024
    return f"{value:.0f}{unit}" if unit == "B" or value >= 10 else f"{value:.1f}{unit}"


def format_epsilon(epsilon: float) -> str:
    """ε in units of 1/255 (one grey level), as the self-test's schedule is written."""
    return f"{epsilon * 255:.3g}/255"


def format_fragility(self_test: dict | None) -> str:
    """The smallest ε that flipped the verdict; '>ε' when the largest one tried did not."""
    if not self_test or not self_test["trials"]:
        return ""
    if self_test["fragility"] is None:
        return ">" + format_epsilon(max(trial["epsilon"] for trial in self_test["trials"]))
    return format_epsilon(self_test["fragility"])


def shorten(text: str, width: int) -> str:
    """Fit `text` into `width` cells, keeping its end (a file's name says more than its folders)."""
    if len(text) <= width:
        return text
    return "…" + text[len(text) - width + 1:] if width > 1 else text[-width:]


class Throughput:
    """Files per second over the files actually scanned (cache hits are not work), and the time
    left for the rest at that rate."""

    def __init__(self) -> None:
        self.files = 0
        self.seconds = 0.0

    def add(self, seconds: float) -> None:
        self.files += 1
        self.seconds += seconds

    @property
    def rate(self) -> float | None:
        return self.files / self.seconds if self.files and self.seconds > 0 else None

    def seconds_left(self, files_left: int) -> float | None:
        rate = self.rate
        return files_left / rate if rate else None
