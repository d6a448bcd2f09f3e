"""The JSON report: stable from schema version 1 on (later versions only add fields)."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, replace
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path

from forensic import __version__
from forensic.outputs import atomic_write_text
from forensic.versions import library_versions
from forensic.scan import FaceResult, FileResult, FrameResult, IdentityResult, Scanner

REPORT_SCHEMA_VERSION = 1


def report_schema() -> dict:
    """The JSON Schema that every report validates against."""
    text = resources.files("forensic").joinpath("schemas/report.schema.json").read_text("utf-8")
    return json.loads(text)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def file_entry(result: FileResult) -> dict:
    entry = asdict(replace(result, crops={}))
    del entry["crops"]
    entry["score"] = _round(result.score)
    for item in [face for frame in entry["frames"] for face in frame["faces"]] + entry["identities"]:
        item["score"] = _round(item["score"])
        item["model_scores"] = {k: _round(v) for k, v in item["model_scores"].items()}
    return entry


def result_from_entry(entry: dict) -> FileResult:
    """The inverse of `file_entry` (crops aside)."""
    frames = [
        FrameResult(index=frame["index"], time=frame["time"], detected=frame["detected"], faces=[
            FaceResult(**{**face, "box": tuple(face["box"])}) for face in frame["faces"]])
        for frame in entry["frames"]
    ]
    identities = [IdentityResult(**{**identity, "first_box": tuple(identity["first_box"])})
                  for identity in entry["identities"]]
    fields = {key: entry[key] for key in ("path", "kind", "sha256", "verdict", "score", "threshold",
                                          "frames_analyzed", "faces", "error", "timings", "self_test")}
    return FileResult(**fields, identities=identities, frames=frames)


def timestamp() -> str:
    """Now, as a report's `created`."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def build_report(results: list[FileResult], scanner: Scanner, not_scanned: list[Path] | None = None,
                 shard: dict | None = None) -> dict:
    """The report of `results`; `not_scanned`: the inputs an interrupted scan did not reach (the
    report is then marked incomplete and lists them, so every input is accounted for); `shard`:
    which part of the inputs this scan took (`forensic.shards.ShardSelection.record`)."""
    bundle = scanner.bundle
    return {
        "schema_version": REPORT_SCHEMA_VERSION,
        "tool_version": __version__,
        "created": timestamp(),
        "bundle": {
            "name": bundle.name,
            "sha256": bundle.sha256,
            "path": str(bundle.path),
            "models": [{"name": m.name, "sha256": m.sha256, "weight": m.weight} for m in bundle.models],
            "decision_threshold": bundle.threshold,  # settings.threshold differs when --threshold overrides it
            "uncertain_band": bundle.uncertain_band,
            "mirror_average": bundle.mirror_average,  # each crop scored as the mean of it and its mirror image
        },
        "face_detector": scanner.detector.identity,  # the SHA-256 of each of its ONNX files loaded
        "provider": "+".join(scanner.runner.providers),
        "settings": {
            "frames_per_video": scanner.frames,
            "fps": scanner.fps,
            "threshold": scanner.threshold,
            "uncertain_band": scanner.uncertain_band,
            "aggregation": scanner.aggregation,
            "min_face": scanner.detector.min_face_size,
            "face_margin": bundle.margin,
            "input_size": bundle.input_size,
            "face_detector_device": scanner.detector.device,
            "detect_every": scanner.detect_every,
        },
        "versions": library_versions(),
        "complete": not_scanned is None,
        "not_scanned": [str(path) for path in not_scanned or []],
        "shard": shard,
        "merged_from": None,  # the shard reports `forensic merge` joined
        "files": [file_entry(result) for result in results],
    }


CSV_COLUMNS = ("path", "sha256", "kind", "verdict", "score", "threshold", "frames_analyzed", "faces", "error")


def write_csv(report: dict, destination: Path) -> Path:
    """One row per file: the report's summary fields. A path that is not valid UTF-8 (Linux
    allows any bytes in a name) is written as the file system's own bytes, so it still names
    the file; the JSON report escapes it instead (`\\udcff`, which json.loads + os.fsencode
    turn back into those bytes)."""
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=CSV_COLUMNS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(report["files"])
    return atomic_write_text(destination, text.getvalue(), errors="surrogateescape")


def write_report(report: dict, destination: Path) -> Path:
    return atomic_write_text(destination, json.dumps(report, indent=2) + "\n")
