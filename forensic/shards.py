"""Scanning an archive in shards (`forensic scan --shard I/N`) and joining the shard reports
(`forensic merge`).

A file is in shard I of N when the first 8 bytes of the SHA-256 of its key (UTF-8), read as a
big-endian integer, are I modulo N. Its key is its path relative to the folder given that it
was found in (`2024/a.jpg` for /archive/2024/a.jpg scanned as `forensic scan /archive`), or,
for a file named directly (on the command line or in --from), the path as given (`./a.jpg` is
`a.jpg`). So a file's shard depends neither on the order the files are listed in nor on where
the archive is mounted, and it is the same on every machine.

Every shard lists all the inputs (names and metadata only: no file outside the shard is opened,
hashed or decoded) and scans its own. Its report's `shard` says which shard it is, how many
inputs the whole scan lists, a digest of that listing, and where in it each of its files (and,
if it was interrupted, each input it did not scan) stands. `forensic merge` checks that the
reports are the shards of one scan and puts the files in listing order: the order one full
scan gives.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, get_args

from forensic.errors import ForensicError, differences
from forensic.mtcnn import detector_fields
from forensic.report import REPORT_SCHEMA_VERSION, result_from_entry, timestamp
from forensic.scan import FileResult, Verdict

_SHARD = re.compile(r"([0-9]+)/([0-9]+)")


@dataclass(frozen=True)
class Shard:
    index: int  # from 0
    count: int


def parse_shard(text: str) -> Shard:
    """`I/N` with 0 <= I < N; anything else is a ForensicError."""
    match = _SHARD.fullmatch(text.strip())
    if not match or not int(match[1]) < int(match[2]):
        raise ForensicError(f"--shard must be I/N, shard I (counted from 0) of N, with 0 <= I < N "
                            f"(e.g. 0/16), not {text!r}")
    return Shard(int(match[1]), int(match[2]))


def _key_bytes(key: str) -> bytes:
    return key.encode("utf-8", "surrogateescape")  # a name that is not UTF-8: its own bytes


def shard_of(key: str, count: int) -> int:
    """The shard (of `count`) of the file with this key (`forensic.inputs.collect_keyed_inputs`)."""
    return int.from_bytes(hashlib.sha256(_key_bytes(key)).digest()[:8], "big") % count


@dataclass
class ShardSelection:
    shard: Shard
    paths: list[Path]  # the shard's inputs, in listing order
    positions: list[int]  # where each stands in the whole listing
    total: int  # inputs in the whole listing
    listing_sha256: str  # of the whole listing's keys, in order

    def record(self, results: list[FileResult], not_scanned: list[Path] | None = None) -> dict:
        """The report's `shard`, for these results (and the inputs an interrupted scan left)."""
        position = {str(path): at for path, at in zip(self.paths, self.positions)}
        return {"index": self.shard.index, "count": self.shard.count, "inputs": self.total,
                "listing_sha256": self.listing_sha256,
                "file_positions": [position[result.path] for result in results],
                "not_scanned_positions": [position[str(path)] for path in not_scanned or []]}


def select_shard(listing: list[tuple[Path, str]], shard: Shard) -> ShardSelection:
    """The inputs of `shard` among the whole listing of (path, key); nothing is opened."""
    digest = hashlib.sha256()
    paths, positions = [], []
    for at, (path, key) in enumerate(listing):
        digest.update(_key_bytes(key) + b"\0")  # no name holds a NUL
        if shard_of(key, shard.count) == shard.index:
            paths.append(path)
            positions.append(at)
    return ShardSelection(shard, paths, positions, len(listing), digest.hexdigest())


@dataclass
class ShardReport:
    path: Path
    report: dict
    results: list[FileResult]

    @property
    def shard(self) -> dict:
        return self.report["shard"]


def _is_int(value: Any, low: int = 0, high: int | None = None) -> bool:
    return type(value) is int and value >= low and (high is None or value < high)


_VERDICTS = get_args(Verdict)


def _face_detector(report: dict) -> dict | None:
    """The report's face detector as shards must share it (name, weights, each network's
    SHA-256), or None where the report has none or not of that shape."""
    detector = report.get("face_detector")
    if not isinstance(detector, dict) or not isinstance(detector.get("networks"), list):
        return None
    networks = detector["networks"]
    if not all(isinstance(value, str) for value in (detector.get("name"), detector.get("weights"))) \
            or not all(isinstance(network, dict) and isinstance(network.get("name"), str)
                       and isinstance(network.get("sha256"), str) for network in networks):
        return None
    return detector_fields({"name": detector["name"], "weights": detector["weights"], "networks": networks})


def _malformed(report: dict) -> str | None:
    """What is wrong with a parsed shard report's structure, or None."""
    kinds = {"tool_version": str, "bundle": dict, "provider": str, "settings": dict, "versions": dict,
             "complete": bool, "not_scanned": list, "files": list}
    for key, kind in kinds.items():
        if not isinstance(report.get(key), kind):
            return f"no {key}" if key not in report else f"{key} is not a {kind.__name__}"
    if not isinstance(report["bundle"].get("sha256"), str):
        return "no bundle sha256"
    if "face_detector" in report and _face_detector(report) is None:  # absent from reports made before it was recorded
        return "face_detector is not {name, weights, networks: [{name, sha256}]}"
    shard = report["shard"]
    if not isinstance(shard, dict) or not _is_int(shard.get("count"), 1) \
            or not _is_int(shard.get("index"), 0, shard["count"]):
        return "shard is not {index, count} with 0 <= index < count"
    if not _is_int(shard.get("inputs")) or not isinstance(shard.get("listing_sha256"), str):
        return "shard has no inputs count or listing_sha256"
    for positions, listed in (("file_positions", "files"), ("not_scanned_positions", "not_scanned")):
        values = shard.get(positions)
        if not isinstance(values, list) or len(values) != len(report[listed]) \
                or not all(_is_int(value, 0, shard["inputs"]) for value in values):
            return f"shard {positions} does not match {listed}"
    if not all(isinstance(path, str) for path in report["not_scanned"]):
        return "not_scanned holds something that is not a path"
    for entry in report["files"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str):
            return "a file entry has no path"
        score = entry.get("score")
        if entry.get("verdict") not in _VERDICTS or not (score is None or type(score) in (int, float)):
            return f"{entry['path']}: verdict {entry.get('verdict')!r} with score {score!r}"
    return None


def load_shard_report(path: Path) -> ShardReport:
    """A shard report of `forensic scan --shard`, checked; a ForensicError names the file and
    what is wrong with it."""
    try:
        report = json.loads(Path(path).read_bytes())
    except OSError as exc:
        raise ForensicError(f"{path}: cannot read the report ({exc.strerror or exc})") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, nesting too deep
        raise ForensicError(f"{path}: not a JSON report ({exc})") from None
    if not isinstance(report, dict) or "schema_version" not in report:
        raise ForensicError(f"{path}: not a forensic scan report (no schema_version)")
    if report["schema_version"] != REPORT_SCHEMA_VERSION:
        raise ForensicError(f"{path}: report schema version {report['schema_version']!r}; "
                            f"this forensic merges version {REPORT_SCHEMA_VERSION}")
    if report.get("shard") is None:
        made = "made by forensic merge" if report.get("merged_from") else "scanned without --shard"
        raise ForensicError(f"{path}: not a shard report ({made})")
    problem = _malformed(report)
    if problem:
        raise ForensicError(f"{path}: not a well-formed shard report ({problem})")
    try:
        results = [result_from_entry(entry) for entry in report["files"]]
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise ForensicError(f"{path}: a file entry is malformed ({type(exc).__name__}: {exc})") from None
    return ShardReport(Path(path), report, results)


# What the shards of one scan share: a merged report has one of each.
_SHARED: tuple[tuple[str, Callable[[dict], Any]], ...] = (
    ("scanned with another bundle than", lambda report: {"sha256": report["bundle"]["sha256"]}),
    ("scanned with another face detector than", _face_detector),
    ("scanned with other settings than", lambda report: report["settings"]),
    ("made by another forensic version than", lambda report: report["tool_version"]),
    ("run on another execution provider than", lambda report: report["provider"]),
    ("made with other library versions than", lambda report: report["versions"]),
    ("split into another number of shards than", lambda report: report["shard"]["count"]),
    ("listed other inputs (paths, globs or files) than",
     lambda report: {"inputs": report["shard"]["inputs"], "listing_sha256": report["shard"]["listing_sha256"]}),
)


def _difference(ours: Any, theirs: Any, reference: Path) -> str:
    """What differs, short: the fields (SHA-256s cut to 12 digits), never a whole record."""
    if ours is None or theirs is None:  # only a face detector goes unrecorded (in reports made before it was)
        return f"{'it' if ours is None else reference} has no face_detector record"
    if isinstance(ours, dict) and isinstance(theirs, dict):
        return differences(ours, theirs)
    return f"{ours!r} vs {theirs!r}"


def check_same_scan(reference: ShardReport, other: ShardReport) -> None:
    """Refuse `other` unless it is a shard of the scan `reference` is a shard of."""
    for problem, value in _SHARED:
        ours, theirs = value(other.report), value(reference.report)
        if ours != theirs:
            difference = _difference(ours, theirs, reference.path)
            raise ForensicError(f"{other.path}: {problem} {reference.path} ({difference})")


@dataclass
class Merged:
    report: dict
    results: list[FileResult]
    missing: list[int]  # shard indices no report was given for (only with allow_missing)
    unaccounted: int  # inputs in those shards: neither in files nor in not_scanned


def merge_reports(paths: list[Path], allow_missing: bool = False) -> Merged:
    """Join the shard reports at `paths` into the report one scan of all the shards gives.

    Refused (ForensicError, naming the file): a report that cannot be read or is not a shard
    report; one of another bundle, face detector (its networks' SHA-256), settings, tool or
    library version, execution provider, shard count or input listing than the first; a shard
    given twice; a file in two reports; and, unless `allow_missing`, a shard no report is given
    for. The files and `not_scanned` are in listing order; `complete` is true when every shard
    is present and complete; `shard` is null and `merged_from` lists the shard reports;
    `created` is now; the rest is the shards' (the bundle's `path` is the lowest shard's)."""
    if not paths:
        raise ForensicError("nothing to merge: give the shard reports")
    shards = [load_shard_report(path) for path in paths]
    given: dict[int, Path] = {}
    for shard in shards:
        check_same_scan(shards[0], shard)
        index = shard.shard["index"]
        if index in given:
            raise ForensicError(f"{shard.path}: shard {index}/{shard.shard['count']} again (also {given[index]})")
        given[index] = shard.path
    shards.sort(key=lambda shard: shard.shard["index"])
    count, total = shards[0].shard["count"], shards[0].shard["inputs"]
    missing = [index for index in range(count) if index not in given]
    if missing and not allow_missing:
        named = ", ".join(map(str, missing[:10])) + (", …" if len(missing) > 10 else "")
        raise ForensicError(f"shard{'s' if len(missing) > 1 else ''} {named} of {count} missing: no report given "
                            f"(--allow-missing merges the shards given, marked incomplete)")

    owner: dict[int, Path] = {}  # input position -> the report that holds it
    holder: dict[str, Path] = {}  # path -> the report that holds it

    def claim(shard: ShardReport, position: int, path: str) -> None:
        other = owner.get(position) or holder.get(path)
        if other is not None:
            raise ForensicError(f"{shard.path}: {path} is also in {other}: the reports overlap")
        owner[position] = holder[path] = shard.path

    files, not_scanned = [], []
    for shard in shards:
        positions = shard.shard["file_positions"]
        for position, entry, result in zip(positions, shard.report["files"], shard.results):
            claim(shard, position, entry["path"])
            files.append((position, entry, result))
        for position, path in zip(shard.shard["not_scanned_positions"], shard.report["not_scanned"]):
            claim(shard, position, path)
            not_scanned.append((position, path))
    if not missing and len(owner) != total:
        raise ForensicError(f"the {count} shard reports account for {len(owner)} of the {total} inputs "
                            f"they list: a report was cut or edited")
    files.sort(key=lambda item: item[0])
    not_scanned.sort(key=lambda item: item[0])
    report = {
        **shards[0].report,
        "created": timestamp(),
        "complete": not missing and all(shard.report["complete"] for shard in shards),
        "not_scanned": [path for _, path in not_scanned],
        "shard": None,
        "merged_from": [{"index": shard.shard["index"], "count": count, "report": str(shard.path),
                         "created": shard.report.get("created")} for shard in shards],
        "files": [entry for _, entry, _ in files],
    }
    return Merged(report, [result for _, _, result in files], missing, total - len(owner))
