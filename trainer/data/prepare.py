r"""`trainer prepare`: a face-crop dataset from videos in FaceForensics++ layout.

    SRC/real/044.mp4                  real videos (or images: one-frame "videos")
    SRC/fake/<method>/044_945.mp4     fakes: target 044, source 945

becomes DATASET_DIR/{train,validation,test}/{real,fake}/{video}_{frame:04d}_{face}.png, where
`video` is the stem, prefixed by the method for fakes (`Deepfakes-044_945`), so crops can be
regrouped by video. Frames are sampled, faces detected and cropped by exactly the code
`forensic scan` uses (forensic.media.sample_video_frames, forensic.faces.FaceDetector and
crop_face), so the model trains on the framing it will be shown.

Splits are by identity: the numbers in a FaceForensics++ stem are its identities (`044`; `044`
and `945` for `044_945`) and every video sharing an identity with another lands in the same
split, so no face is seen in training and tested on. Other names say nothing reliable about who
is in them, so each is its own identity unless `--group-pattern REGEX` says (its first group is
the identity: `'(.+)_\d+'` puts LFW's `Aaron_Peirsol_0001` and `_0002` together).

A source folder holding `pairs.csv` (columns `real,fake`: paths under SRC, as
`../shared/data/dfdc-faces/`) is read as face crops in real/fake pairs: each fake is named after
its real (`pair-<real stem>`), so the two share an identity group and a split, and `trainer fit
--paired` can put them in one batch. Such crops are tighter than a scan's framing, so before
detection and cropping each image is padded by half its size (detection on a black border, the
crop from a mirrored one, so a crop wider than the source shows no black bars); the fake is cut
with its real's face box (the pair is aligned: same scene, same frame region), which keeps the
pair pixel-aligned and detects faces once per pair.

Several SRC folders make one dataset; each is split by identity on its own with the same ratios
(so a small source keeps its share in every split).

Beside the crops:
    {split}/{class}/landmarks.json  crop file name -> MTCNN's five landmarks in crop pixels
    prepare.json                    settings, the video -> split assignment, counts, skipped videos
    .done                           one JSON line per finished (or skipped) video: a re-run skips
                                    them, so an interrupted run resumes where it stopped
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import cv2
import numpy as np
from PIL import Image

from forensic.errors import ForensicError, MediaError
from forensic.faces import FaceDetector, crop_face, to_crop_coordinates
from forensic.media import Frame, load_image, media_kind, sample_video_frames
from trainer.data.datasets import CLASSES, SPLITS
from trainer.data.pairing import PAIR_PREFIX
from trainer.data.sbi import LANDMARKS_FILE, self_blend

PREPARE_FILE = "prepare.json"
DONE_FILE = ".done"
SBI_PREFIX = "sbi-"
# Settings that decide what the crops are: a folder can only be resumed with the same ones.
EXTRACTION_SETTINGS = ("frames", "size", "margin", "split", "seed", "group_pattern")
PAIRS_FILE = "pairs.csv"
FFPP_STEM = re.compile(r"\d+(?:_\d+)*")  # 044, 044_945

T = TypeVar("T")
Progress = Callable[[str, int, int], None]


class PrepareError(Exception):
    """Input that cannot be prepared as asked, described in one line."""


# --------------------------------------------------------------------------------------------
# Finding videos and their identities


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


# --------------------------------------------------------------------------------------------
# Faces


def crop_landmarks(landmarks: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """Landmarks in the pixels of the crop that forensic.faces.crop_face makes."""
    return to_crop_coordinates(landmarks, box, margin, size)


@dataclass
class Crop:
    name: str  # file name
    image: np.ndarray
    landmarks: np.ndarray  # (5, 2) in crop pixels


def _frames(video: SourceVideo, count: int) -> Iterator[Frame]:
    if video.kind == "image":
        yield Frame(index=0, time=None, image=load_image(video.path))
    else:
        yield from sample_video_frames(video.path, count)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def pad_tight_crop(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A tight face crop padded by half its longer side on every side: with a black border (for
    detection: MTCNN boxes a face that fills the whole image too large) and with a mirrored
    one (for cropping: a scan-framed crop wider than the source then shows no black bars)."""
    pad = max(image.shape[:2]) // 2
    black = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    mirrored = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    return black, mirrored, pad


@dataclass
class PairedCrop:
    """The face box (in padded-image pixels) and crop landmarks of a paired real, for its fake."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    shape: tuple[int, ...]


def extract_tight_crop(video: SourceVideo, detector: FaceDetector, margin: float, size: int,
                       partner: PairedCrop | None = None) -> tuple[list[Crop], PairedCrop | None]:
    """The most probable face of a tight face-crop image (a pairs.csv source), cropped by crop_face
    from the mirror-padded image; a paired fake is cut with its real's box (`partner`) when the
    two images have one size."""
    image = load_image(video.path)
    black, mirrored, _ = pad_tight_crop(image)
    if partner is not None and partner.shape == image.shape:
        box, landmarks = partner.box, partner.landmarks
    else:
        faces = detector.detect([black])[0]
        if not faces:
            return [], None
        box = faces[0].box
        landmarks = crop_landmarks(faces[0].landmarks, box, margin, size)
    crop = Crop(name=f"{video.name}_0000_0.png", image=crop_face(mirrored, box, margin, size), landmarks=landmarks)
    return [crop], PairedCrop(box=tuple(float(v) for v in box), landmarks=landmarks, shape=image.shape)


def extract_crops(video: SourceVideo, detector: FaceDetector, frames: int, margin: float, size: int) -> list[Crop]:
    """Every face in `frames` evenly sampled frames, cropped as `forensic scan` crops it.
    Raises MediaError for a file that cannot be decoded."""
    crops: list[Crop] = []
    for chunk in _chunks(_frames(video, frames), detector.batch_size):
        detections = detector.detect([frame.image for frame in chunk])
        for frame, faces in zip(chunk, detections):
            for number, face in enumerate(faces):
                crops.append(Crop(
                    name=f"{video.name}_{frame.index:04d}_{number}.png",
                    image=crop_face(frame.image, face.box, margin, size),
                    landmarks=crop_landmarks(face.landmarks, face.box, margin, size),
                ))
    return crops


# --------------------------------------------------------------------------------------------
# Files


def _write_json(path: Path, data) -> None:
    """Write JSON atomically: an interrupted write never leaves a half file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(partial, path)


def _save_png(path: Path, image: np.ndarray) -> None:
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(np.ascontiguousarray(image)).save(partial, format="PNG")
    os.replace(partial, path)


def read_records(out: Path) -> dict[str, dict]:
    """A prepared folder's records, video name -> {video, path, label, split, status, crops: {name: landmarks}}."""
    return _read_done(Path(out) / DONE_FILE)


def _read_done(path: Path) -> dict[str, dict]:
    """Video name -> its last record; a torn last line (an interrupted append) is ignored."""
    records: dict[str, dict] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
                records[record["video"]] = record
            except (ValueError, KeyError, TypeError):
                continue
    return records


def _append_done(path: Path, record: dict) -> None:
    with open(path, "a") as handle:
        handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def _round_points(points: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in points]


# --------------------------------------------------------------------------------------------
# The whole preparation


@dataclass
class PrepareResult:
    out: Path
    processed: int  # videos decoded and detected in this run
    reused: int  # videos already done by an earlier run
    skipped: list[dict] = field(default_factory=list)  # {"video", "path", "reason"}, this run's and earlier ones
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # per split
    sbi_written: int = 0
    sbi_removed: int = 0


def _check_out(out: Path, src: Path, settings: dict) -> None:
    resolved_out, resolved_src = out.resolve(), src.resolve()
    for label in CLASSES:
        if resolved_out.is_relative_to(resolved_src / label):
            raise PrepareError(f"{out}: the dataset folder must not be inside {src / label}")
    manifest = out / PREPARE_FILE
    if manifest.is_file():
        try:
            previous = json.loads(manifest.read_text())["settings"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise PrepareError(f"{manifest}: unreadable ({exc}); choose another --out") from None
        changed = [f"{key} {previous.get(key)!r} -> {settings[key]!r}" for key in EXTRACTION_SETTINGS
                   if previous.get(key) != settings[key]]
        if changed:
            raise PrepareError(f"{out}: prepared with other settings ({'; '.join(changed)}); "
                               f"use the same ones to resume, or another --out")
    elif out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise PrepareError(f"{out}: exists and is not a `trainer prepare` folder (no {PREPARE_FILE}); "
                           f"choose a new or empty --out")


def prepare_dataset(
    src: Path | Sequence[Path],
    out: Path,
    frames: int = 32,
    size: int = 256,
    margin: float = 1.3,
    split: str | Sequence[float] = (0.7, 0.15, 0.15),
    seed: int = 0,
    sbi: int = 0,
    group_pattern: str | None = None,
    detector: FaceDetector | None = None,
    device: str = "auto",
    on_progress: Progress | None = None,
    log: Callable[[str], None] | None = None,
) -> PrepareResult:
    """Extract face crops from SRC into OUT (see the module docstring); resumable.

    `detector`: a FaceDetector to reuse (default: a new one with forensic scan's settings on
    `device`). `on_progress(phase, done, total)` per video / SBI crop and `log(line)` for the split
    summary, so a CLI can draw progress without this module knowing about terminals.
    `sbi`: self-blended fakes per real training crop, written to train/fake/sbi-*.png; the sbi
    files are made to match this number (0 removes earlier ones).
    """
    sources = [Path(s) for s in ([src] if isinstance(src, (str, Path)) else src)]
    out = Path(out)
    if not sources:
        raise PrepareError("give one or more SRC folders")
    if frames < 1 or size < 8 or margin <= 0 or sbi < 0:
        raise PrepareError("--frames must be >= 1, --size >= 8, --margin > 0 and --sbi >= 0")
    ratios = parse_ratios(split)
    check_group_pattern(group_pattern)
    settings = {"frames": frames, "size": size, "margin": margin, "split": [round(r, 6) for r in ratios],
                "seed": seed, "sbi": sbi, "group_pattern": group_pattern}
    videos = [video for number, source in enumerate(sources) for video in find_videos(source, number)]
    names: dict[str, Path] = {}
    for video in videos:
        if video.name in names:
            raise PrepareError(f"{video.path}: same video name {video.name!r} as {names[video.name]}; rename one")
        names[video.name] = video.path
    for source in sources:
        _check_out(out, source, settings)
    progress = on_progress or (lambda phase, done, total: None)
    log = log or (lambda line: None)

    if group_pattern is not None:
        matched = sum(1 for video in videos if video_ids(video.path.stem, group_pattern)[0].startswith("id:"))
        if matched == 0:
            raise PrepareError(f"--group-pattern '{group_pattern}' matches none of the {len(videos)} names "
                               f"(e.g. {videos[0].path.stem!r}); every file would be its own identity")
        log(f"--group-pattern: {matched} of {len(videos)} names matched; the others are each their own identity")
    groups, group_splits = [], []
    for number in range(len(sources)):  # each source split on its own, so each keeps the ratios
        in_source = [video for video in videos if video.source == number]
        source_groups = group_videos(in_source, group_pattern)
        largest = max(len(group) for group in source_groups)
        if len(in_source) >= 10 and largest > len(in_source) / 2:
            log(f"warning: one identity group holds {largest} of {len(in_source)} videos, so the splits cannot be "
                f"balanced; check the names (--group-pattern)")
        groups.extend(source_groups)
        group_splits.extend(assign_splits(source_groups, ratios, seed))
    assignment = {video.name: split for group, split in zip(groups, group_splits) for video in group}
    for split_name in SPLITS:
        chosen = [group for group, s in zip(groups, group_splits) if s == split_name]
        n_videos = sum(len(g) for g in chosen)
        n_real = sum(1 for g in chosen for v in g if v.label == "real")
        log(f"{split_name}: {len(chosen)} identity groups, {n_videos} videos ({n_real} real, {n_videos - n_real} fake)")

    out.mkdir(parents=True, exist_ok=True)
    for split_name in SPLITS:
        for label in CLASSES:
            (out / split_name / label).mkdir(parents=True, exist_ok=True)
    manifest = {
        "version": 1,
        "source": str(sources[0].resolve()) if len(sources) == 1 else [str(s.resolve()) for s in sources],
        "settings": settings,
        "detector": None,
        "complete": False,
        "assignment": assignment,
    }
    previous_detector = _previous_detector(out)
    _write_json(out / PREPARE_FILE, manifest)  # settings first, so an interrupted run resumes checked

    done_path = out / DONE_FILE
    records = _read_done(done_path)
    processed = reused = 0
    paired: dict[str, PairedCrop] = {}  # a paired real's box, for its fake (which follows it)
    for position, video in enumerate(videos):
        progress(f"faces: {video.name}", position, len(videos))
        split_name = assignment[video.name]
        record = records.get(video.name)
        if record is not None and _still_done(record, out, split_name, video.label):
            reused += 1
            if record.get("box") and record["status"] == "done":
                (name, points), = record["crops"].items()
                paired[video.name] = PairedCrop(tuple(record["box"]), np.asarray(points, dtype=np.float64),
                                                tuple(record["shape"]))
            continue
        if record is not None:  # e.g. its group moved split: no crop of it may stay behind
            _remove_crops(out, record)
        if detector is None:
            detector = _detector(device)
        tight = None
        try:
            if video.padded:
                crops, tight = extract_tight_crop(video, detector, margin, size, paired.get(video.partner or ""))
            else:
                crops = extract_crops(video, detector, frames, margin, size)
        except MediaError as exc:
            reason = str(exc)
            crops = None
        except Exception as exc:  # one broken file must not stop the batch (as in forensic scan)
            reason = f"{video.path}: unexpected {type(exc).__name__}: {exc}"
            crops = None
        if crops is not None and not crops:
            reason = f"{video.path}: no face found in {'the image' if video.kind == 'image' else f'{frames} frames'}"
        folder = out / split_name / video.label
        relative = str(video.path.relative_to(sources[video.source]))
        if crops:
            for crop in crops:
                _save_png(folder / crop.name, crop.image)
            record = {"video": video.name, "path": relative, "source": video.source, "label": video.label,
                      "split": split_name, "status": "done",
                      "crops": {crop.name: _round_points(crop.landmarks) for crop in crops}}
            if tight is not None:
                record.update(box=list(tight.box), shape=list(tight.shape))
                if video.partner is None:
                    paired[video.name] = tight
        else:
            record = {"video": video.name, "path": relative, "source": video.source, "label": video.label,
                      "split": split_name, "status": "skipped", "reason": reason}
        _append_done(done_path, record)
        records[video.name] = record
        processed += 1
    progress("faces", len(videos), len(videos))

    current = {video.name for video in videos}
    vanished = [record for name, record in records.items() if name not in current and record["status"] == "done"]
    for record in vanished:
        _remove_crops(out, record)
        records.pop(record["video"])
        _append_done(done_path, {"video": record["video"], "status": "removed"})
    if vanished:
        log(f"removed the crops of {len(vanished)} videos no longer in {', '.join(map(str, sources))}")
    landmarks: dict[tuple[str, str], dict[str, list]] = {(s, c): {} for s in SPLITS for c in CLASSES}
    for name, record in records.items():
        if name in current and record["status"] == "done":
            landmarks[(record["split"], record["label"])].update(record["crops"])

    sbi_written, sbi_removed, sbi_made = _self_blend_training_reals(out, landmarks, sbi, seed, progress)

    for (split_name, label), entries in landmarks.items():
        _write_json(out / split_name / label / LANDMARKS_FILE, dict(sorted(entries.items())))

    skipped = [{"video": name, "path": record["path"], "reason": record["reason"]}
               for name, record in records.items() if name in current and record["status"] == "skipped"]
    counts: dict[str, dict[str, int]] = {}
    for split_name in SPLITS:
        in_split = [v for v in videos if assignment[v.name] == split_name]
        crops_in = {c: len(landmarks[(split_name, c)]) for c in CLASSES}
        sbi_count = sbi_made if split_name == "train" else 0  # self-blends are made for training only
        counts[split_name] = {
            "groups": sum(1 for s in group_splits if s == split_name),
            "videos": len(in_split),
            "real_videos": sum(1 for v in in_split if v.label == "real"),
            "fake_videos": sum(1 for v in in_split if v.label == "fake"),
            "skipped_videos": sum(1 for v in in_split if records[v.name]["status"] == "skipped"),
            "real": crops_in["real"],
            "fake": crops_in["fake"],
            "sbi": sbi_count,
        }
    manifest["detector"] = _detector_settings(detector) if detector is not None else previous_detector
    manifest.update({"complete": True, "counts": counts, "skipped": skipped})
    _write_json(out / PREPARE_FILE, manifest)
    return PrepareResult(out=out, processed=processed, reused=reused, skipped=skipped, counts=counts,
                         sbi_written=sbi_written, sbi_removed=sbi_removed)


def _detector(device: str) -> FaceDetector:
    """forensic scan's detector (MTCNN in ONNX Runtime): on the GPU for cuda, where one is usable for auto."""
    if device not in ("auto", "cpu", "cuda"):
        raise PrepareError(f"--device must be auto, cpu or cuda, not {device!r}")
    try:
        return FaceDetector(device=device)
    except ForensicError as exc:  # --device cuda where ONNX Runtime cannot load CUDA
        raise PrepareError(str(exc)) from None


def _detector_settings(detector: FaceDetector) -> dict:
    """prepare.json's `detector`: what a scan report's `face_detector` records (name, weights,
    each ONNX file's SHA-256) and the settings. A prepare.json written before said
    {"model": "facenet-pytorch MTCNN", ...}; such a record is only carried forward as read."""
    mtcnn = getattr(detector, "_mtcnn", None)
    return {**detector.identity, "min_face_size": detector.min_face_size, "max_side": detector.max_side,
            "thresholds": [float(t) for t in getattr(mtcnn, "thresholds", [])]}


def _previous_detector(out: Path) -> dict | None:
    try:
        return json.loads((out / PREPARE_FILE).read_text()).get("detector")
    except (OSError, ValueError, AttributeError):
        return None


def _remove_crops(out: Path, record: dict) -> None:
    if record.get("status") != "done":
        return
    folder = out / record["split"] / record["label"]
    for name in record.get("crops", {}):
        (folder / name).unlink(missing_ok=True)


def _still_done(record: dict, out: Path, split_name: str, label: str) -> bool:
    """A recorded video counts as done if it went to the same split and all its crops are there."""
    if record.get("split") != split_name or record.get("label") != label:
        return False
    if record["status"] == "skipped":
        return True
    folder = out / split_name / label
    return all((folder / name).is_file() for name in record.get("crops", {}))


def _self_blend_training_reals(out: Path, landmarks: dict[tuple[str, str], dict[str, list]], per_crop: int,
                               seed: int, progress: Progress) -> tuple[int, int, int]:
    """Make train/fake/sbi-{crop stem}_{k}.png for k < per_crop from every real training crop
    (existing ones are kept: same name, same seed, same image); remove other sbi-* files, except
    crops of fake videos whose names happen to start so (a `fake/sbi/` folder of SBI fakes).
    Returns how many were written, removed and are there now."""
    real_dir, fake_dir = out / "train" / "real", out / "train" / "fake"
    reals = sorted(landmarks[("train", "real")].items())
    fake_landmarks = landmarks[("train", "fake")]
    from_videos = set(fake_landmarks)
    wanted: set[str] = set()
    written = 0
    for position, (name, points) in enumerate(reals):
        progress("self-blending", position, len(reals))
        image = None
        for k in range(per_crop):
            target = f"{SBI_PREFIX}{Path(name).stem}_{k}.png"
            if target in from_videos:
                raise PrepareError(f"{fake_dir / target}: a fake video's crop has the name of a self-blended fake "
                                   f"of {name}; rename that video")
            wanted.add(target)
            fake_landmarks[target] = points  # the blend keeps the face where it was, within a few %
            if (fake_dir / target).is_file():
                continue
            if image is None:
                image = np.asarray(Image.open(real_dir / name).convert("RGB"))
            rng = np.random.default_rng([seed % 2**32, zlib.crc32(name.encode()), k])
            blended, _ = self_blend(image, np.asarray(points, dtype=np.float64), None, rng)
            _save_png(fake_dir / target, blended)
            written += 1
    progress("self-blending", len(reals), len(reals))
    removed = 0
    for path in sorted(fake_dir.glob(f"{SBI_PREFIX}*.png")):
        if path.name not in wanted and path.name not in from_videos:
            path.unlink()
            removed += 1
    return written, removed, len(wanted)


def summary_lines(result: PrepareResult) -> list[str]:
    """What the CLI prints at the end."""
    lines = [f"{result.processed} videos processed, {result.reused} already done (resumed)"]
    for split_name, c in result.counts.items():
        sbi = f" (incl. {c['sbi']} self-blended)" if c["sbi"] else ""
        lines.append(f"{split_name}: {c['real']} real and {c['fake']} fake crops{sbi} "
                     f"from {c['videos'] - c['skipped_videos']} of {c['videos']} videos")
    if result.sbi_written or result.sbi_removed:
        lines.append(f"self-blended fakes: {result.sbi_written} written, {result.sbi_removed} removed")
    if result.skipped:
        lines.append(f"skipped {len(result.skipped)} videos:")
        lines.extend(f"  {entry['reason']}" for entry in result.skipped)
    lines.append(f"dataset in {result.out} ({PREPARE_FILE} lists settings, splits and counts)")
    return lines
