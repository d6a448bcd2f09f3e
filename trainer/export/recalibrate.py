"""`trainer calibrate`: an exported bundle's calibration refitted on a validation split from its
ONNX models alone (no training run is needed, so a bundle whose PyTorch checkpoints are gone
can be recalibrated, on new data or with mirror averaging switched on or off). Given several
bundles that take the same crops, it makes one ensemble of all their models and calibrates that:
members of different exports combined without their checkpoints.

The members' margins come from forensic's own EnsembleRunner, so the fit sees exactly the
scores the scan will compute; the fit itself is `trainer export`'s (calibration.calibrate_logits).
The new bundle copies the ONNX files unchanged, keeps the members' training records and face-crop
geometry (and one whole bundle's weights), and records which bundle or bundles it was made from.
"""

from __future__ import annotations

import json
import math
import tempfile
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


# What the models see: bundles that differ in any of these cannot share one crop and one forward pass.
INPUT_KEYS = ("size", "color_order", "layout", "pixel_range", "mean", "std", "normalize_in_graph")


def _source_record(source) -> dict:
    return {"name": source.name, "sha256": source.sha256, "created": source.manifest.get("created")}


def source_spec(spec: str | Path) -> tuple[Path, str | None]:
    """BUNDLE (all its models) or BUNDLE:MODEL (the model of that manifest name): a path that exists
    as given is a bundle, whatever its name holds."""
    path = Path(spec)
    folder, colon, model = str(spec).rpartition(":")
    if path.exists() or not colon or not folder or not model:
        return path, None
    return Path(folder), model


def _chosen_models(source, model: str | None) -> list[dict]:
    entries = json.loads(json.dumps(source.manifest["models"]))
    if model is None:
        return entries
    chosen = [entry for entry in entries if entry["name"] == model]
    if not chosen:
        raise ExportError(f"{source.path}: no model {model!r} in it (its models: "
                          f"{', '.join(repr(entry['name']) for entry in entries)})")
    return chosen


def combined_manifest(sources: list[tuple], weights: list[float] | None) -> tuple[dict, dict[str, Path]]:
    """One manifest (a copy of the first source's, calibration still to fit) whose models are the
    sources' (bundle, model name or None for all) in the order given, and the files they need by their
    name in it. One whole bundle keeps its files' names and weights; anything else is renamed
    model_{i}_{arch} / {i}-{arch}, records where each model came from, and is weighted equally unless
    `weights` (one per model) says otherwise."""
    first = sources[0][0]
    for source, _ in sources[1:]:
        for what, mine, theirs in (
                ("input " + ", ".join(INPUT_KEYS), [first.manifest["input"].get(k) for k in INPUT_KEYS],
                 [source.manifest["input"].get(k) for k in INPUT_KEYS]),
                ("face crop margin", first.margin, source.margin),
                ("class order", first.manifest["class_order"], source.manifest["class_order"])):
            if mine != theirs:
                raise ExportError(f"{source.path}: its {what} ({theirs}) differ from {first.path}'s ({mine}); "
                                  f"only bundles that take the same face crops can be combined")
    manifest = json.loads(json.dumps(first.manifest))
    entries, files = [], {}
    renamed = len(sources) > 1 or sources[0][1] is not None
    for source, model in sources:
        for entry in _chosen_models(source, model):
            index, arch = len(entries), entry.get("arch", "model")
            wanted = {"file": f"model_{index}_{arch}.onnx", "graph": f"model_{index}_{arch}.grad.onnx"}
            files[wanted["file"] if renamed else entry["file"]] = source.path / entry["file"]
            graph = entry.get("gradient_graph") or {}
            if graph.get("file"):
                files[wanted["graph"] if renamed else graph["file"]] = source.path / graph["file"]
                if renamed:
                    graph["file"] = wanted["graph"]
            if renamed:
                entry.update(name=f"{index}-{arch}", file=wanted["file"],
                             source_bundle={**_source_record(source), "model": entry["name"]})
            entries.append(entry)
    if weights is not None:
        if len(weights) != len(entries):
            raise ExportError(f"{len(weights)} --weight value(s) for {len(entries)} models: give one per model, "
                              f"in the order of the bundles and of their models")
        if not all(math.isfinite(w) and w > 0 for w in weights):
            raise ExportError(f"--weight {weights}: each weight must be a finite number > 0")
        for entry, weight in zip(entries, weights):
            entry["weight"] = float(weight)
    elif renamed:
        for entry in entries:
            entry["weight"] = 1.0
    manifest["models"] = entries
    manifest["face_crop"]["source"] = "; ".join(dict.fromkeys(
        str(source.manifest["face_crop"].get("source", source.path)) for source, _ in sources))
    return manifest, files


def recalibrate_bundle(bundles: list[str | Path], data: Path, out_dir: Path, name: str | None = None,
                       operating_point: str = "eer", mirror_average: bool | None = None, device: str = "auto",
                       force: bool = False, weights: list[float] | None = None):
    """Write one bundle, or one ensemble of the models of several (each entry BUNDLE or BUNDLE:MODEL),
    recalibrated on DATA/validation to `out_dir` (`mirror_average` None: as the bundles do). No source
    bundle is ever written to."""
    specs, out_dir, data = [source_spec(bundle) for bundle in bundles], Path(out_dir), Path(data)
    if device not in DEVICES:
        raise ExportError(f"--device {device!r}: use one of {', '.join(DEVICES)}")
    parse_operating_point(operating_point)  # before any work
    for bundle_dir, _ in specs:
        if out_dir.resolve() == bundle_dir.resolve():
            raise ExportError(f"{out_dir}: the recalibrated bundle must go to another folder than {bundle_dir}")
    if not (data / "validation").is_dir():
        raise ExportError(f"{data}/validation: not found; calibration needs the validation split")
    check_bundle_destination(out_dir, force)  # before minutes of scoring, not after
    loaded = {bundle_dir: load_bundle(bundle_dir) for bundle_dir, _ in specs}
    sources = [(loaded[bundle_dir], model) for bundle_dir, model in specs]
    if mirror_average is None:
        if len({source.mirror_average for source, _ in sources}) > 1:
            raise ExportError("the bundles differ in mirror averaging: say which the ensemble does "
                              "(--mirror-average or --no-mirror-average)")
        mirror_average = sources[0][0].mirror_average
    manifest, files = combined_manifest(sources, weights)
    manifest["input"].pop("mirror_average", None)
    if mirror_average:
        manifest["input"]["mirror_average"] = True
    with tempfile.TemporaryDirectory(prefix="trainer-calibrate-") as scratch:
        # The combined bundle as written (every file checked by forensic's own loader), still with its
        # sources' calibration, scored as the new bundle will score (the runner reads the views from it).
        provisional = write_bundle(Path(scratch) / "bundle", manifest, files)
        logits, labels = bundle_margins(EnsembleRunner(provisional, device=device), data)
    calibration = calibrate_logits(logits, labels, np.asarray([e["weight"] for e in manifest["models"]],
                                                              dtype=np.float64), operating_point, data)
    if len(loaded) == 1:
        calibration["recalibrated_from"] = _source_record(sources[0][0])
    else:
        calibration["combined_from"] = [_source_record(source) for source in loaded.values()]
    members = calibration.get("members") or [{"temperature": 1.0, "bias": 0.0}] * len(logits)
    for entry, member in zip(manifest["models"], members):
        entry.update(temperature=member["temperature"], bias=member["bias"])
    producer = sources[0][0].manifest.get("producer")  # free-form in the format: read with care
    manifest.update(
        name=name or out_dir.name, created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        decision_threshold=calibration["operating_point"]["threshold"], temperature=calibration["temperature"],
        calibration=calibration,
        producer={"tool": "trainer calibrate", "opset": producer.get("opset") if isinstance(producer, dict) else None,
                  **library_versions()})
    return write_bundle(out_dir, manifest, files, force=force)
