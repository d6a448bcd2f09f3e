"""The folder `trainer prepare` writes: DATASET_DIR/{split}/{class}/{video}_{frame:04d}_{face}.png
(self-blended fakes as train/fake/sbi-*.png) and beside the crops:

    {split}/{class}/landmarks.json  crop file name -> MTCNN's five landmarks in crop pixels
    prepare.json                    settings, the face detector that cut the crops (one per folder),
                                    the video -> split assignment, counts, skipped videos
    .done                           one JSON line per finished (or skipped) video: a re-run skips
                                    them, so an interrupted run resumes where it stopped
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
from PIL import Image

from forensic.errors import differences
from forensic.mtcnn import detector_fields
from trainer.data.datasets import CLASSES
from trainer.data.sources import PrepareError

PREPARE_FILE = "prepare.json"
DONE_FILE = ".done"
SBI_PREFIX = "sbi-"
# Settings that decide what the crops are: a folder can only be resumed with the same ones.
EXTRACTION_SETTINGS = ("frames", "size", "margin", "split", "seed", "group_pattern")


def check_out_folder(out: Path, src: Path, settings: dict) -> None:
    """PrepareError unless OUT may take this preparation: outside SRC's class folders, and new,
    empty, or prepared before with the same extraction settings (a resume)."""
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


def previous_detector(out: Path) -> dict | None:
    """The detector an earlier run recorded (None where it recorded none), kept when this run
    detects nothing."""
    try:
        detector = json.loads((out / PREPARE_FILE).read_text()).get("detector")
    except (OSError, ValueError, AttributeError):
        return None
    return detector if isinstance(detector, dict) else None


def check_same_detector(out: Path, earlier: dict | None, current: dict) -> None:
    """PrepareError if the crops already in OUT were cut by another face detector (name, weights,
    a network's SHA-256 or a setting) than the one this run would cut more with: a folder's
    provenance names one detector. A folder whose earlier run recorded none passes."""
    if earlier is None:
        return
    changed = differences(detector_fields(earlier), detector_fields(current))
    if changed:
        raise PrepareError(f"{out}: its crops were cut by another face detector ({changed}: earlier vs this run); "
                           f"resume with the same one, or use a new --out")


def write_json(path: Path, data) -> None:
    """Write JSON atomically: an interrupted write never leaves a half file."""
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1) + "\n")
    os.replace(partial, path)


def save_png(path: Path, image: np.ndarray) -> None:
    """Write a PNG atomically, as write_json."""
    partial = path.with_name(path.name + ".partial")
    Image.fromarray(np.ascontiguousarray(image)).save(partial, format="PNG")
    os.replace(partial, path)


def read_records(out: Path) -> dict[str, dict]:
    """A prepared folder's records, video name -> {video, path, label, split, status, crops: {name: landmarks}}."""
    return read_done(Path(out) / DONE_FILE)


def read_done(path: Path) -> dict[str, dict]:
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


def append_done(path: Path, record: dict) -> None:
    """Append one record to .done, on disk before the next video starts."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record, separators=(",", ":")) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def round_points(points: np.ndarray) -> list[list[float]]:
    return [[round(float(x), 2), round(float(y), 2)] for x, y in points]


def still_done(record: dict, out: Path, split_name: str, label: str) -> bool:
    """A recorded video counts as done if it went to the same split and all its crops are there."""
    if record.get("split") != split_name or record.get("label") != label:
        return False
    if record["status"] == "skipped":
        return True
    folder = out / split_name / label
    return all((folder / name).is_file() for name in record.get("crops", {}))


def remove_crops(out: Path, record: dict) -> None:
    """Delete the crop files a done record lists."""
    if record.get("status") != "done":
        return
    folder = out / record["split"] / record["label"]
    for name in record.get("crops", {}):
        (folder / name).unlink(missing_ok=True)
