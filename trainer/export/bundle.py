"""`trainer export`: one or more runs' checkpoints → an ONNX bundle that forensic can load.

Each ONNX model takes RGB pixels in [0, 1] (N, 3, size, size) and returns logits [real, fake]
(normalisation is inside the graph) and a second output `cam`, the class activation map of
the fake-vs-real margin: exact for a global-pool + linear head, Grad-CAM traced into the graph
for other heads (trainer.export.cam_graph; the manifest's `cam` entry says which, or why there is
none). Before anything is written, ONNX Runtime's outputs are checked against PyTorch's on a
random batch.

Several runs make an ensemble, weighted by validation accuracy (the ensemble seed's rule),
calibrated on the validation split (trainer.export.calibration).
"""

from __future__ import annotations

import json
import math
import tempfile
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from forensic.bundle import CLASS_ORDER, Bundle, write_bundle
from trainer.checkpoints import CheckpointError, read_run_checkpoint
from trainer.data.datasets import CLASSES
from trainer.data.prepared_folder import PREPARE_FILE
from trainer.export.calibration import fit_calibration, parse_operating_point
from trainer.export.errors import ExportError
from trainer.models import DetectorWithCAM, create_model, model_spec
from forensic.versions import library_versions

OPSET = 17
MAX_LOGIT_DIFFERENCE = 1e-4
DEFAULT_MARGIN = 1.3  # DeepfakeBench's face-crop margin
DEFAULT_UNCERTAIN_BAND = 0.05


@dataclass
class RunModel:
    run_dir: Path
    model: torch.nn.Module
    config: dict  # the run's "fit" settings plus mean, std and counts
    epoch: int
    validation: dict | None  # the chosen epoch's metrics line

    @property
    def arch(self) -> str:
        return self.config["arch"]


def load_run_model(run_dir: Path, checkpoint: str = "best") -> RunModel:
    """The trained model (eval mode, CPU), its run config and the chosen epoch's metrics."""
    run_dir = Path(run_dir)
    try:
        state = read_run_checkpoint(run_dir, checkpoint)
    except CheckpointError as exc:
        raise ExportError(str(exc)) from None
    config = {**state["config"], **state["config"]["fit"]}
    try:
        model = create_model(config["arch"], init="random")
        model.load_state_dict(state["model"])
    except Exception as exc:  # an unknown architecture, or weights of another one
        first = (str(exc).splitlines() or [""])[0]
        raise ExportError(f"{run_dir / f'{checkpoint}.pt'}: its weights do not load into {config['arch']} "
                          f"({type(exc).__name__}: {first})") from None
    metrics_path = run_dir / "metrics.jsonl"
    history = [json.loads(line) for line in metrics_path.read_text().splitlines() if line.strip()] \
        if metrics_path.exists() else []
    validation = next((m for m in history if m["epoch"] == state["epoch"]), None)
    return RunModel(run_dir, model.eval(), config, state["epoch"], validation)


def export_onnx(model: torch.nn.Module, size: int, destination: Path, with_cam: bool = False) -> None:
    example = torch.rand(2, 3, size, size)
    # A new wrapper is in training mode, and the exporter restores that mode recursively
    # afterwards: put it in eval mode so the model stays in eval mode too.
    module = (DetectorWithCAM(model) if with_cam else model).eval()
    outputs = ["logits", "cam"] if with_cam else ["logits"]
    # The legacy TorchScript exporter: one self-contained file in about 1 s, checked against
    # PyTorch below (the dynamo exporter takes 12-14 s and splits weights into a .data file).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            module, (example,), str(destination), dynamo=False, opset_version=OPSET,
            input_names=["pixels"], output_names=outputs,
            dynamic_axes={name: {0: "batch"} for name in ["pixels", *outputs]},
        )
    onnx.checker.check_model(str(destination))


def max_logit_difference(model: torch.nn.Module, onnx_path: Path, size: int, batch: int = 4, seed: int = 0) -> float:
    """Largest |ONNX Runtime − PyTorch| over the logits; when a CAM is exported too, its
    difference counts relative to its own scale (its values are sums over 1280 channels, so
    their float32 rounding is larger in absolute terms than the logits')."""
    pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})
    if len(actual) == 2:
        from trainer.export.cam_graph import reference_cam  # the CAM for linear heads, Grad-CAM for others

        expected = reference_cam(model, pixels)
    else:
        with torch.no_grad():
            expected = (model.eval()(pixels),)
    differences = [float(np.abs(actual[0] - expected[0].numpy()).max())]
    if len(actual) == 2:
        cam = expected[1].numpy()
        differences.append(float(np.abs(actual[1] - cam).max()) / max(1.0, float(np.abs(cam).max())))
    return max(differences)


def _as_published(path: str) -> str:
    """A training path for the manifest: relative to the folder export runs in when it lies inside it
    (fit stores absolute paths so that --resume works from anywhere; a published bundle should not
    carry the build machine's layout), else as stored."""
    resolved = Path(path)
    if resolved.is_absolute() and resolved.is_relative_to(Path.cwd()):
        return str(resolved.relative_to(Path.cwd())) or "."
    return path


def _training_record(run: RunModel, checkpoint: str) -> dict:
    config = run.config
    record = {"run": str(run.run_dir), "checkpoint": checkpoint, "epoch": run.epoch,
              "method": config["method"], "init": config["init"], "options": config.get("options", {}),
              "sbi": config.get("sbi", False), "data": _as_published(config["data"]),
              "validation_data": _as_published(config.get("val_data") or config["data"]),
              "counts": config["counts"], "validation": run.validation}
    if "averaged" in config:
        record["averaged"] = {**config["averaged"], "data": [_as_published(d) for d in config["averaged"]["data"]]}
    return record


def _gradient_graph(run: RunModel, size: int, scratch: Path, model_file: str, files: dict[str, Path]) -> dict:
    """Export and verify the model's white-box gradient graph for forensic's PGD self-test;
    when that fails, say why in the manifest (forensic then falls back to SPSA)."""
    from trainer.export.gradient_graph import GradientGraphError, export_gradient_graph

    file = model_file.replace(".onnx", ".grad.onnx")
    try:
        info = export_gradient_graph(run.model, size, scratch / file)
    except GradientGraphError as exc:
        return {"unavailable": str(exc)}
    if not info.get("single_file", True):
        return {"unavailable": "the gradient graph's weights do not fit one ONNX file"}
    files[file] = scratch / file
    verification = info["verification"]
    return {"file": file, "cosine": verification["min_cosine"],
            "loss_max_relative_difference": verification["loss_max_relative_difference"]}


def _export_model(run: RunModel, size: int, path: Path) -> tuple[bool, dict]:
    """Write the run's model to `path` with a CAM output when one can be had: exact for a
    global-pool + linear head (plain exporter, about a second), else Grad-CAM traced into the
    graph (trainer.export.cam_graph, minutes); when that fails, logits only and the reason."""
    from trainer.export.cam_graph import export_cam_onnx
    from trainer.export.gradient_graph import GradientGraphError

    if model_spec(run.arch).cam:
        export_onnx(run.model, size, path, with_cam=True)
        return True, {"method": "class activation map (linear head)"}
    try:
        info = export_cam_onnx(run.model, size, path)
    except GradientGraphError as exc:
        export_onnx(run.model, size, path, with_cam=False)
        return False, {"unavailable": str(exc)}
    return True, {"method": "Grad-CAM of the logit margin (traced head gradient)", "cosine": info["cam_cosine"]}


def _training_face_crop(runs: list[RunModel], margin: float | None) -> dict:
    """The face-crop margin the runs' training crops were made with, from `trainer prepare`'s
    record beside them: `forensic scan` must crop faces as training did."""
    found = {}
    for run in runs:
        record = Path(_as_published(run.config["data"])) / PREPARE_FILE
        try:
            found[str(record)] = float(json.loads(record.read_text(encoding="utf-8"))["settings"]["margin"])
        except FileNotFoundError:
            continue  # crops not made by trainer prepare (trainer synth, or moved since)
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ExportError(f"{record}: cannot read the crops' margin ({type(exc).__name__}: {exc})") from None
    if len(set(found.values())) > 1:
        raise ExportError("the runs were trained on face crops of different margins ("
                          + ", ".join(f"{m:g} in {record}" for record, m in found.items())
                          + "); forensic crops every face one way, so they cannot form one bundle")
    if found:
        recorded = next(iter(found.values()))
        if margin is not None and not math.isclose(margin, recorded):
            raise ExportError(f"margin {margin:g} was asked for, but the runs' crops were made at {recorded:g} "
                              f"({next(iter(found))})")
        return {"margin": recorded, "source": "; ".join(sorted(found))}
    chosen = DEFAULT_MARGIN if margin is None else margin
    return {"margin": chosen, "source": ("the default" if margin is None else "as given")
            + ": the runs' training data has no prepare.json"}


def export_bundle(run_dirs: list[Path], out_dir: Path, name: str | None = None, checkpoint: str | list[str] = "best",
                  calibrate: bool = True, data: Path | None = None, operating_point: str = "eer",
                  uncertain_band: float = DEFAULT_UNCERTAIN_BAND, margin: float | None = None,
                  weights: list[float] | None = None, gradient_graphs: bool = True, force: bool = False,
                  mirror_average: bool = False) -> Bundle:
    """Export runs as one bundle (several runs make a weighted ensemble). `checkpoint`: one name
    for every run, or one per run in run order. The face-crop margin is the one the runs'
    training crops were made with (their prepare.json); `margin` may only confirm it. With
    `mirror_average`, forensic scores every crop as the mean of each model's logits on it and
    on its mirror image, and the calibration is fitted on that mean."""
    out_dir = Path(out_dir)
    checkpoints = [checkpoint] * len(run_dirs) if isinstance(checkpoint, str) else list(checkpoint)
    if len(checkpoints) != len(run_dirs):
        raise ExportError(f"give one checkpoint for all runs or one per run ({len(run_dirs)}), not {len(checkpoints)}")
    runs = [load_run_model(run_dir, chosen) for run_dir, chosen in zip(run_dirs, checkpoints)]
    sizes = {int(run.config["size"]) for run in runs}
    if len(sizes) != 1:
        raise ExportError(f"the runs use different input sizes {sorted(sizes)}; an ensemble needs one")
    size = sizes.pop()
    if weights is None:
        # Validation-accuracy weighting, as the ensemble seed does.
        weights = [max(1e-3, (run.validation or {}).get("val_accuracy", 1.0)) for run in runs]
    if len(weights) != len(runs) or not all(math.isfinite(w) and w > 0 for w in weights):
        raise ExportError("give one positive, finite weight per run")
    face_crop = _training_face_crop(runs, margin)
    weight_array = np.asarray(weights, dtype=np.float64)
    assert tuple(CLASSES) == CLASS_ORDER, "trainer labels and the bundle's class order must agree"
    kind, fixed_threshold = parse_operating_point(operating_point)  # before any work

    if calibrate:
        data_dir = Path(data) if data else Path(runs[0].config.get("val_data") or runs[0].config["data"])
        if not (data_dir / "validation").is_dir():
            raise ExportError(f"{data_dir}/validation: not found; calibration needs the validation split "
                              f"(give --data DIR, or --no-calibrate to keep temperature 1 and --operating-point fixed:T)")
        calibration = fit_calibration([run.model for run in runs], weight_array, data_dir, size, operating_point,
                                      mirror_average)
    else:
        if kind != "fixed":
            raise ExportError("without calibration data the threshold must be given: --operating-point fixed:T")
        calibration = {"temperature": 1.0, "operating_point": {"criterion": operating_point, "threshold": fixed_threshold}}

    members = calibration.get("members") or [{"temperature": 1.0, "bias": 0.0}] * len(runs)
    with tempfile.TemporaryDirectory() as scratch:
        entries, files, differences = [], {}, {}
        for index, run in enumerate(runs):
            file = "model.onnx" if len(runs) == 1 else f"model_{index}_{run.arch}.onnx"
            path = Path(scratch) / file
            with_cam, cam = _export_model(run, size, path)
            difference = max_logit_difference(run.model, path, size)
            if not difference <= MAX_LOGIT_DIFFERENCE:
                raise ExportError(
                    f"{run.run_dir}: ONNX Runtime disagrees with PyTorch by {difference:.2e} "
                    f"(allowed {MAX_LOGIT_DIFFERENCE:.0e}); refusing to write a bundle")
            model_name = run.arch if len(runs) == 1 else f"{index}-{run.arch}"
            graph = _gradient_graph(run, size, Path(scratch), file, files) if gradient_graphs \
                else {"unavailable": "not exported (--no-gradient-graph)"}
            entries.append({"name": model_name, "file": file, "arch": run.arch, "weight": float(weight_array[index]),
                            "temperature": members[index]["temperature"], "bias": members[index]["bias"],
                            "outputs": ["logits", "cam"] if with_cam else ["logits"],
                            "cam": cam,
                            "onnx_max_difference": difference, "gradient_graph": graph,
                            "training": _training_record(run, checkpoints[index])})
            files[file] = path
            differences[model_name] = difference
        first = runs[0].config
        manifest = {
            "name": name or out_dir.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "models": entries,
            "input": {"size": size, "color_order": "RGB", "layout": "NCHW", "pixel_range": [0, 1],
                      "mean": first["mean"], "std": first["std"], "normalize_in_graph": True,
                      **({"mirror_average": True} if mirror_average else {})},
            "face_crop": face_crop,
            "class_order": list(CLASS_ORDER),
            "decision_threshold": calibration["operating_point"]["threshold"],
            "temperature": calibration["temperature"],
            "uncertain_band": uncertain_band,
            "calibration": calibration,
            "producer": {"tool": "trainer export", "opset": OPSET, **library_versions()},
        }
        return write_bundle(out_dir, manifest, files, force=force)
