"""`trainer prepare`: a face-crop dataset from videos in FaceForensics++ layout, or from face-crop
pairs listed in pairs.csv.

    SRC/real/044.mp4                  real videos (or images: one-frame "videos")
    SRC/fake/<method>/044_945.mp4     fakes: target 044, source 945

becomes DATASET_DIR/{train,validation,test}/{real,fake}/{video}_{frame:04d}_{face}.png, where
`video` is the stem, prefixed by the method for fakes (`Deepfakes-044_945`), so crops can be
regrouped by video. The steps, one module each: `sources` finds the videos and splits them by
identity, `extraction` cuts the faces as `forensic scan` does, and `prepared_folder` keeps the
folder's records (prepare.json, .done), so an interrupted run resumes where it stopped. Here: the
run itself, and `--sbi`'s self-blended training fakes.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from forensic.errors import ForensicError, MediaError
from forensic.faces import FaceDetector
from trainer.data.datasets import CLASSES, SPLITS
from trainer.data.extraction import PairedCrop, extract_crops, extract_tight_crop
from trainer.data.prepared_folder import (DONE_FILE, PREPARE_FILE, SBI_PREFIX, append_done, check_out_folder,
                                          check_same_detector, previous_detector, read_done, remove_crops,
                                          round_points, save_png, still_done, write_json)
from trainer.data.sbi import LANDMARKS_FILE, self_blend
from trainer.data.sources import PrepareError, check_group_pattern, find_all_videos, parse_ratios, split_by_identity

Progress = Callable[[str, int, int], None]


@dataclass
class PrepareResult:
    out: Path
    processed: int  # videos decoded and detected in this run
    reused: int  # videos already done by an earlier run
    skipped: list[dict] = field(default_factory=list)  # {"video", "path", "reason"}, this run's and earlier ones
    counts: dict[str, dict[str, int]] = field(default_factory=dict)  # per split
    sbi_written: int = 0
    sbi_removed: int = 0


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
    `device`), made only where there are faces to detect; a PrepareError where OUT's crops were cut
    by another (its name, weights, networks' SHA-256 or settings differ).
    `on_progress(phase, done, total)` per video / SBI crop and `log(line)` for the split summary,
    so a CLI can draw progress without this module knowing about terminals.
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
    videos = find_all_videos(sources)
    for source in sources:
        check_out_folder(out, source, settings)
    progress = on_progress or (lambda phase, done, total: None)
    log = log or (lambda line: None)

    split_summary: list[str] = []  # logged once the folder is known to take this run (else its error is all)
    groups, group_splits = split_by_identity(videos, len(sources), ratios, seed, group_pattern, split_summary.append)
    assignment = {video.name: split for group, split in zip(groups, group_splits) for video in group}

    out.mkdir(parents=True, exist_ok=True)
    for split_name in SPLITS:
        for label in CLASSES:
            (out / split_name / label).mkdir(parents=True, exist_ok=True)
    manifest = {
        "version": 1,
        "source": str(sources[0].resolve()) if len(sources) == 1 else [str(s.resolve()) for s in sources],
        "settings": settings,
        "detector": previous_detector(out),
        "complete": False,
        "assignment": assignment,
    }
    done_path = out / DONE_FILE
    records = read_done(done_path)
    to_detect = {video.name for video in videos if video.name not in records
                 or not still_done(records[video.name], out, assignment[video.name], video.label)}
    if to_detect:  # with the detector that cut the crops already there, if any
        if detector is None:
            detector = _detector(device)
        current = _detector_settings(detector)
        check_same_detector(out, manifest["detector"], current)
        manifest["detector"] = current
    for line in split_summary:
        log(line)
    # settings and detector first, so an interrupted run resumes checked
    write_json(out / PREPARE_FILE, manifest)
    processed = reused = 0
    paired: dict[str, PairedCrop] = {}  # a paired real's box, for its fake (which follows it)
    for position, video in enumerate(videos):
        progress(f"faces: {video.name}", position, len(videos))
        split_name = assignment[video.name]
        record = records.get(video.name)
        if video.name not in to_detect:
            reused += 1
            if record.get("box") and record["status"] == "done":
                (name, points), = record["crops"].items()
                paired[video.name] = PairedCrop(tuple(record["box"]), np.asarray(points, dtype=np.float64),
                                                tuple(record["shape"]))
            continue
        if record is not None:  # e.g. its group moved split: no crop of it may stay behind
            remove_crops(out, record)
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
                save_png(folder / crop.name, crop.image)
            record = {"video": video.name, "path": relative, "source": video.source, "label": video.label,
                      "split": split_name, "status": "done",
                      "crops": {crop.name: round_points(crop.landmarks) for crop in crops}}
            if tight is not None:
                record.update(box=list(tight.box), shape=list(tight.shape))
                if video.partner is None:
                    paired[video.name] = tight
        else:
            record = {"video": video.name, "path": relative, "source": video.source, "label": video.label,
                      "split": split_name, "status": "skipped", "reason": reason}
        append_done(done_path, record)
        records[video.name] = record
        processed += 1
    progress("faces", len(videos), len(videos))

    current = {video.name for video in videos}
    vanished = [record for name, record in records.items() if name not in current and record["status"] == "done"]
    for record in vanished:
        remove_crops(out, record)
        records.pop(record["video"])
        append_done(done_path, {"video": record["video"], "status": "removed"})
    if vanished:
        log(f"removed the crops of {len(vanished)} videos no longer in {', '.join(map(str, sources))}")
    landmarks: dict[tuple[str, str], dict[str, list]] = {(s, c): {} for s in SPLITS for c in CLASSES}
    for name, record in records.items():
        if name in current and record["status"] == "done":
            landmarks[(record["split"], record["label"])].update(record["crops"])

    sbi_written, sbi_removed, sbi_made = _self_blend_training_reals(out, landmarks, sbi, seed, progress)

    for (split_name, label), entries in landmarks.items():
        write_json(out / split_name / label / LANDMARKS_FILE, dict(sorted(entries.items())))

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
    manifest.update({"complete": True, "counts": counts, "skipped": skipped})
    write_json(out / PREPARE_FILE, manifest)
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
            save_png(fake_dir / target, blended)
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
