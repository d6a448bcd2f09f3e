r"""The inputs of `trainer prepare` and the split each goes to.

    SRC/real/044.mp4                  real videos (or images: one-frame "videos")
    SRC/fake/<method>/044_945.mp4     fakes: target 044, source 945

A video's name is its stem, prefixed by the method for fakes (`Deepfakes-044_945`).

Splits are by identity: the numbers in a FaceForensics++ stem are its identities (`044`; `044`
and `945` for `044_945`) and every video sharing an identity with another lands in the same
split, so no face is seen in training and tested on. Other names say nothing reliable about who
is in them, so each is its own identity unless `--group-pattern REGEX` says (its first group is
the identity: `'(.+)_\d+'` puts LFW's `Aaron_Peirsol_0001` and `_0002` together).

A source folder holding `pairs.csv` (columns `real,fake`: paths under SRC, as
`../shared/data/dfdc-faces/`) is read as face crops in real/fake pairs: each fake is named after
its real (`pair-<real stem>`), so the two share an identity group and a split, and `trainer fit
--paired` can put them in one batch.

Several SRC folders make one dataset; each is split by identity on its own with the same ratios
(so a small source keeps its share in every split).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence, TypeVar

import numpy as np

from forensic.inputs import media_kind
from trainer.data.datasets import CLASSES, SPLITS
from trainer.data.pairing import PAIR_PREFIX

PAIRS_FILE = "pairs.csv"
FFPP_STEM = re.compile(r"\d+(?:_\d+)*")  # 044, 044_945

T = TypeVar("T")


class PrepareError(Exception):
    """Input that cannot be prepared as asked, described in one line."""


@dataclass(frozen=True)
class SourceVideo:
    """One input video (or image) and the names its crops get."""

    path: Path
    label: str  # "real" or "fake"
    name: str  # the stem, prefixed by the method (sub-folders) for fakes: Deepfakes-044_945
    kind: str  # "video" or "image"
    partner: str | None = None  # a paired fake's real (its name); its identity and face box are the real's
    source: int = 0  # which SRC folder
    padded: bool = False  # a tight face crop (a pairs.csv source): padded before detection and cropping

    @property
    def identity_stem(self) -> str:
        return self.partner if self.partner is not None else self.path.stem


def fake_method(name: str) -> str | None:
    """The manipulation of a fake video named by find_videos: its first sub-folder under fake/
    ('Deepfakes-044_945' -> 'Deepfakes'; 'pair-<real>' -> 'pair', a DFDC pair). None for a name
    without one (a fake directly in fake/ whose stem has no '-')."""
    method, dash, _ = name.partition("-")
    return method if dash and method else None


def video_ids(stem: str, pattern: str | None = None) -> tuple[str, ...]:
    """The identities in a stem. With `pattern`, the regex's first group where it matches the whole
    stem. Otherwise a FaceForensics++ stem gives its numbers ('044_945' -> ('44', '945'); leading
    zeros dropped, so 044 and 44 are one person). Any other stem is its own identity: numbers in
    names like 'clip_2023_01' or 'Aaron_Peirsol_0001' are not people."""
    if pattern is not None:
        match = re.fullmatch(pattern, stem)
        if match is not None and match.group(1):
            return (f"id:{match.group(1)}",)
    elif FFPP_STEM.fullmatch(stem):
        return tuple(str(int(n)) for n in stem.split("_"))
    return (f"name:{stem}",)


def check_group_pattern(pattern: str | None) -> None:
    if pattern is None:
        return
    try:
        compiled = re.compile(pattern)
    except re.error as exc:
        raise PrepareError(f"--group-pattern {pattern!r}: not a regular expression ({exc})") from None
    if compiled.groups < 1:
        raise PrepareError(f"--group-pattern {pattern!r}: needs a group, e.g. '(.+)_\\d+', whose match is the identity")


def _paired_crops(src: Path, source: int) -> list[SourceVideo]:
    """The pairs listed in SRC/pairs.csv, each real followed by its fake."""
    import csv

    table = src / PAIRS_FILE
    try:
        with open(table, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise PrepareError(f"{table}: unreadable ({exc})") from None
    items: list[SourceVideo] = []
    seen: set[str] = set()
    for number, row in enumerate(rows, start=2):
        real, fake = (row.get("real") or "").strip(), (row.get("fake") or "").strip()
        if not real or not fake:
            raise PrepareError(f"{table}: line {number} needs a real and a fake path")
        real_path, fake_path = src / real, src / fake
        for path in (real_path, fake_path):
            if not path.resolve().is_relative_to(src.resolve()) or media_kind(path) != "image" or not path.is_file():
                raise PrepareError(f"{table}: line {number}: {path} is not an image file inside {src}")
        name = real_path.stem
        if name in seen:
            raise PrepareError(f"{table}: line {number}: {real} is listed twice")
        seen.add(name)
        items.append(SourceVideo(path=real_path, label="real", name=name, kind="image", source=source, padded=True))
        items.append(SourceVideo(path=fake_path, label="fake", name=PAIR_PREFIX + name, kind="image", partner=name,
                                 source=source, padded=True))
    if not items:
        raise PrepareError(f"{table}: lists no pairs")
    return items


def find_videos(src: Path, source: int = 0) -> list[SourceVideo]:
    """The media under SRC/real and SRC/fake (recursively, sorted), or the pairs of SRC/pairs.csv;
    PrepareError when there is none."""
    src = Path(src)
    if not src.is_dir():
        raise PrepareError(f"{src}: no such folder (expected SRC/real/*.mp4 and SRC/fake/<method>/*.mp4)")
    if (src / PAIRS_FILE).is_file():
        return _paired_crops(src, source)
    videos: list[SourceVideo] = []
    seen: dict[str, Path] = {}
    for label in CLASSES:
        root = src / label
        if not root.is_dir():
            continue
        for path in sorted(p for p in root.rglob("*") if p.is_file() and media_kind(p) is not None):
            name = "-".join([*path.relative_to(root).parent.parts, path.stem])
            if name in seen:
                raise PrepareError(f"{path}: same video name {name!r} as {seen[name]}; rename one")
            seen[name] = path
            videos.append(SourceVideo(path=path, label=label, name=name, kind=media_kind(path), source=source))
    if not videos:
        raise PrepareError(f"{src}: no videos or images found in {src / 'real'} or {src / 'fake'}")
    return videos


def find_all_videos(sources: Sequence[Path]) -> list[SourceVideo]:
    """The videos of every SRC folder (find_videos, numbered by folder); PrepareError when two
    folders hold the same video name."""
    videos = [video for number, source in enumerate(sources) for video in find_videos(source, number)]
    names: dict[str, Path] = {}
    for video in videos:
        if video.name in names:
            raise PrepareError(f"{video.path}: same video name {video.name!r} as {names[video.name]}; rename one")
        names[video.name] = video.path
    return videos


def _stem(item) -> str:
    return item.identity_stem if isinstance(item, SourceVideo) else Path(item).stem


def group_videos(videos: Iterable[T], pattern: str | None = None) -> list[list[T]]:
    """Group videos (SourceVideo, paths or file names) that share an identity, transitively
    (union-find over the identities in their stems, see video_ids). Groups in order of first
    appearance."""
    items = list(videos)
    parent: dict[str, str] = {}

    def find(x: str) -> str:
        parent.setdefault(x, x)
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for item in items:
        ids = video_ids(_stem(item), pattern)
        for other in ids[1:]:
            a, b = find(ids[0]), find(other)
            if a != b:
                parent[b] = a
        find(ids[0])
    groups: dict[str, list[T]] = {}
    for item in items:
        groups.setdefault(find(video_ids(_stem(item), pattern)[0]), []).append(item)
    return list(groups.values())


def parse_ratios(text: str | Sequence[float]) -> tuple[float, float, float]:
    """'0.7,0.15,0.15' -> train, validation, test fractions (normalised to sum to 1)."""
    try:
        values = [float(v) for v in (text.split(",") if isinstance(text, str) else text)]
    except ValueError:
        raise PrepareError(f"--split expects three numbers like 0.7,0.15,0.15, not {text!r}") from None
    if len(values) != 3 or any(not np.isfinite(v) or v < 0 for v in values) or sum(values) <= 0:
        raise PrepareError(f"--split expects three non-negative numbers like 0.7,0.15,0.15, not {text!r}")
    total = sum(values)
    return tuple(v / total for v in values)  # type: ignore[return-value]


def assign_splits(groups: Sequence[Sequence], ratios: Sequence[float] = (0.7, 0.15, 0.15), seed: int = 0) -> list[str]:
    """A split name for each group, balancing video counts to `ratios` (train, validation, test).

    Groups are shuffled (seeded), then placed largest first, each into the split furthest below
    its target share; a split with ratio 0 gets nothing. Same groups, ratios and seed: same answer.
    """
    ratios = parse_ratios(list(ratios))
    total = sum(len(group) for group in groups)
    order = np.random.default_rng(seed).permutation(len(groups)).tolist()
    order.sort(key=lambda i: -len(groups[i]))  # stable: ties keep the shuffled order
    assigned = {split: 0 for split in SPLITS}
    result = [""] * len(groups)
    for i in order:
        open_splits = [s for s, r in zip(SPLITS, ratios) if r > 0]
        split = max(open_splits, key=lambda s: ratios[SPLITS.index(s)] * total - assigned[s])
        result[i] = split
        assigned[split] += len(groups[i])
    return result


def split_by_identity(videos: Sequence[SourceVideo], sources: int, ratios: Sequence[float], seed: int,
                      pattern: str | None, log: Callable[[str], None]) -> tuple[list[list[SourceVideo]], list[str]]:
    """The identity groups of `videos` and each group's split, each of the `sources` SRC folders
    split on its own. `log` gets how many names `pattern` matched, a warning where one group is
    too large to balance the splits, and each split's counts."""
    if pattern is not None:
        matched = sum(1 for video in videos if video_ids(video.path.stem, pattern)[0].startswith("id:"))
        if matched == 0:
            raise PrepareError(f"--group-pattern '{pattern}' matches none of the {len(videos)} names "
                               f"(e.g. {videos[0].path.stem!r}); every file would be its own identity")
        log(f"--group-pattern: {matched} of {len(videos)} names matched; the others are each their own identity")
    groups, group_splits = [], []
    for number in range(sources):  # each source split on its own, so each keeps the ratios
        in_source = [video for video in videos if video.source == number]
        source_groups = group_videos(in_source, pattern)
        largest = max(len(group) for group in source_groups)
        if len(in_source) >= 10 and largest > len(in_source) / 2:
            log(f"warning: one identity group holds {largest} of {len(in_source)} videos, so the splits cannot be "
                f"balanced; check the names (--group-pattern)")
        groups.extend(source_groups)
        group_splits.extend(assign_splits(source_groups, ratios, seed))
    for split_name in SPLITS:
        chosen = [group for group, s in zip(groups, group_splits) if s == split_name]
        n_videos = sum(len(g) for g in chosen)
        n_real = sum(1 for g in chosen for v in g if v.label == "real")
        log(f"{split_name}: {len(chosen)} identity groups, {n_videos} videos ({n_real} real, {n_videos - n_real} fake)")
    return groups, group_splits
