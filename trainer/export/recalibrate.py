"""`trainer calibrate`: an exported bundle's calibration refitted on a validation split from its
ONNX models alone (no training run is needed, so a bundle whose PyTorch checkpoints are gone
can be recalibrated, on new data or with mirror averaging switched on or off).

The members' margins come from forensic's own EnsembleRunner, so the fit sees exactly the
scores the scan will compute; the fit itself is `trainer export`'s (calibration.calibrate_logits).
The new bundle copies the ONNX files unchanged, keeps the members' weights, training records
and face-crop geometry, and records which bundle it was recalibrated from.
"""

from __future__ import annotations

import dataclasses
import json
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from forensic.bundle import check_bundle_destination, load_bundle, write_bundle
from forensic.inference import EnsembleRunner
from forensic.versions import library_versions
from trainer.export.calibration import calibrate_logits, parse_operating_point, validation_loader
from trainer.export.errors import ExportError

DEVICES = ("auto", "cpu", "cuda")


def bundle_margins(runner: EnsembleRunner, data_dir: Path) -> tuple[list[np.ndarray], np.ndarray]:
    """Each member's (N, 2) logits as the calibration takes them ([0, margin]: only the fake − real
    margin enters it) on DATA/validation, and the labels."""
    margins: dict[str, list[np.ndarray]] = {name: [] for name in runner.sessions}
    labels = []
    for pixels, y in validation_loader(data_dir, runner.bundle.input_size):
        for name, margin in runner.margins(pixels.numpy()).items():
            margins[name].append(margin)
        labels.append(y.numpy())
    logits = []
    for entry in runner.bundle.models:
        margin = np.concatenate(margins[entry.name])
        logits.append(np.stack([np.zeros_like(margin), margin], axis=1))
    return logits, np.concatenate(labels)


def recalibrate_bundle(bundle_dir: Path, data: Path, out_dir: Path, name: str | None = None,
                       operating_point: str = "eer", mirror_average: bool | None = None, device: str = "auto",
                       force: bool = False):
    """Write `bundle_dir` recalibrated on DATA/validation to `out_dir` (`mirror_average` None: as
    the bundle does). The source bundle is never written to."""
    bundle_dir, out_dir, data = Path(bundle_dir), Path(out_dir), Path(data)
    if device not in DEVICES:
        raise ExportError(f"--device {device!r}: use one of {', '.join(DEVICES)}")
    parse_operating_point(operating_point)  # before any work
    if out_dir.resolve() == bundle_dir.resolve():
        raise ExportError(f"{out_dir}: the recalibrated bundle must go to another folder than {bundle_dir}")
    if not (data / "validation").is_dir():
        raise ExportError(f"{data}/validation: not found; calibration needs the validation split")
    check_bundle_destination(out_dir, force)  # before minutes of scoring, not after
    source = load_bundle(bundle_dir)
    manifest = json.loads(json.dumps(source.manifest))
    manifest["input"].pop("mirror_average", None)
    if source.mirror_average if mirror_average is None else mirror_average:
        manifest["input"]["mirror_average"] = True
    # The runner reads the views from the manifest: score as the new bundle will.
    runner = EnsembleRunner(dataclasses.replace(source, manifest=manifest), device=device)
    logits, labels = bundle_margins(runner, data)
    weights = np.asarray([entry.weight for entry in source.models], dtype=np.float64)
    calibration = calibrate_logits(logits, labels, weights, operating_point, data)
    calibration["recalibrated_from"] = {"name": source.name, "sha256": source.sha256,
                                        "created": source.manifest.get("created")}
    members = calibration.get("members") or [{"temperature": 1.0, "bias": 0.0}] * len(logits)
    files = {}
    for entry, member in zip(manifest["models"], members):
        entry.update(temperature=member["temperature"], bias=member["bias"])
        files[entry["file"]] = bundle_dir / entry["file"]
        graph = entry.get("gradient_graph") or {}
        if graph.get("file"):
            files[graph["file"]] = bundle_dir / graph["file"]
    producer = source.manifest.get("producer")  # free-form in the format: read with care
    manifest.update(
        name=name or out_dir.name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        decision_threshold=calibration["operating_point"]["threshold"], temperature=calibration["temperature"],
        calibration=calibration,
        producer={"tool": "trainer calibrate", "opset": producer.get("opset") if isinstance(producer, dict) else None,
                  **library_versions()})
    return write_bundle(out_dir, manifest, files, force=force)
