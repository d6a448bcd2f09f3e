"""A bundle's video AUC before and after the videos themselves are re-encoded with H.264, as an upload
platform re-encodes a video (the whole file through libx264, at its own resolution, with its own motion),
where `trainer eval`'s h264 corruption re-encodes the 224-px face crops as the frames of a clip:

    python scripts/video_compression.py --bundle exports/default --crf 35 --out build/crf35 VIDEO...

A video is real when a folder on its path is named 'real', else fake. Each video is re-encoded into
OUT/<its parent folder>/<its name> (an MP4: '.mp4' is added to another suffix) beside a record of its source's
SHA-256 and the CRF; a later run reuses the copy only when both match, and never writes over a file it did not
make (the sources included). Both versions are scanned as `forensic scan` scans them (same frames, faces, aggregation and threshold), and
per video the two scores print, then each version's AUC and accuracy at the bundle's threshold, how far
the scores moved, and the drop.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from sklearn.metrics import roc_auc_score

from forensic.bundle import load_bundle, sha256_file
from forensic.errors import ForensicError
from forensic.scan import Scanner
from trainer.data.corruptions import reencode_video


def is_real(path: Path) -> bool:
    return "real" in path.parent.parts


def reencoded_path(video: Path, out: Path) -> Path:
    name = video.name if video.suffix.lower() == ".mp4" else video.name + ".mp4"
    return out / video.parent.name / name


def record_path(copy: Path) -> Path:
    return copy.with_name(copy.name + ".json")


def reencoded_copy(video: Path, out: Path, crf: int) -> Path:
    """The copy of `video` at `crf` under `out`: reused when its record names the same source bytes and CRF,
    else (re-)made; a file there without a record is not this script's and is refused."""
    target = reencoded_path(video, out)
    if target.resolve() == video.resolve():
        raise ValueError("the re-encoded copy would replace it; choose another --out")
    made_by = {"source_sha256": sha256_file(video), "crf": crf}
    record = record_path(target)
    if target.exists():
        if not record.exists():
            raise ValueError(f"{target} exists and is not a copy this script made; choose another --out")
        if json.loads(record.read_text()) == made_by:
            return target
        target.unlink()  # this script's copy of other bytes or at another CRF
    target.parent.mkdir(parents=True, exist_ok=True)
    record.unlink(missing_ok=True)
    reencode_video(video, target, crf)
    record.write_text(json.dumps(made_by))
    return target


def summary(name: str, labels: list[int], scores: list[float], threshold: float) -> tuple[float | None, str]:
    right = sum((score >= threshold) == bool(label) for label, score in zip(labels, scores))
    auc = roc_auc_score(labels, scores) if len(set(labels)) == 2 else None
    shown = "n/a (one class)" if auc is None else f"{auc:.3f}"
    return auc, f"{name}: video AUC {shown}, {right} / {len(labels)} right at {threshold:.4f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+", type=Path)
    parser.add_argument("--bundle", type=Path, default=Path("exports/default"))
    parser.add_argument("--crf", type=int, default=35)
    parser.add_argument("--out", type=Path, required=True, help="folder for the re-encoded copies")
    args = parser.parse_args(argv)
    try:
        scanner = Scanner(load_bundle(args.bundle))
    except ForensicError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    labels, clean, compressed = [], [], []
    for video in args.videos:
        try:
            target = reencoded_copy(video, args.out, args.crf)
        except Exception as error:  # one bad video is reported and skipped; the rest go on
            print(f"error: {video}: cannot re-encode it ({error})", file=sys.stderr)
            continue
        before, after = scanner.scan_file(video), scanner.scan_file(target)
        failed = [result for result in (before, after) if result.score is None]
        if failed:
            print(f"error: {failed[0].path}: {failed[0].error or 'no face found'}; skipped", file=sys.stderr)
            continue
        labels.append(0 if is_real(video) else 1)
        clean.append(before.score)
        compressed.append(after.score)
        print(f"{'fake' if labels[-1] else 'real'} {video}: {before.score:.3f} -> CRF {args.crf} {after.score:.3f}")
    if not labels:
        print("error: no video could be scored in both versions", file=sys.stderr)
        return 1
    auc_clean, line = summary("as given", labels, clean, scanner.threshold)
    print(line)
    auc_compressed, line = summary(f"CRF {args.crf}", labels, compressed, scanner.threshold)
    print(line)
    changes = [after - before for before, after in zip(clean, compressed)]
    flipped = sum((before >= scanner.threshold) != (after >= scanner.threshold) for before, after in zip(clean, compressed))
    print(f"score change: mean {sum(changes) / len(changes):+.3f}, mean absolute {sum(map(abs, changes)) / len(changes):.3f}, "
          f"{flipped} verdict(s) crossed the threshold")
    if auc_clean is not None and auc_compressed is not None:
        print(f"AUC drop {auc_clean - auc_compressed:+.3f} over {len(labels)} videos ({len(labels) - sum(labels)} real)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
