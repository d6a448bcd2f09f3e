"""`trainer export`: a run's checkpoint → an ONNX bundle that forensic can load.

The ONNX model takes RGB pixels in [0, 1] (N, 3, size, size) and returns logits [real, fake];
normalisation is inside the graph. Before anything is written, ONNX Runtime's output is
checked against PyTorch's on a random batch.
"""

from __future__ import annotations

import json
import tempfile
import warnings
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

from forensic.bundle import CLASS_ORDER, Bundle, write_bundle
from trainer.data import CLASSES
from trainer.models import create_model
from trainer.versions import library_versions

OPSET = 17
MAX_LOGIT_DIFFERENCE = 1e-4
DEFAULT_MARGIN = 1.3  # DeepfakeBench's face-crop margin


class ExportError(Exception):
    """An export that was refused, described in one line."""


def load_run_model(run_dir: Path, checkpoint: str = "best") -> tuple[torch.nn.Module, dict, dict]:
    """The trained model (eval mode, CPU), the run's config and the checkpoint's metadata."""
    path = Path(run_dir) / f"{checkpoint}.pt"
    if not path.is_file():
        raise ExportError(f"{path}: no such checkpoint (is {run_dir} a `trainer fit` run directory?)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    config = {**state["config"], **state["config"]["fit"]}
    model = create_model(config["arch"], init="random")
    model.load_state_dict(state["model"])
    return model.eval(), config, {"epoch": state["epoch"]}


def export_onnx(model: torch.nn.Module, size: int, destination: Path) -> None:
    example = torch.rand(2, 3, size, size)
    # The legacy TorchScript exporter: one self-contained file in about 1 s, checked against
    # PyTorch below (the dynamo exporter takes 12-14 s and splits weights into a .data file).
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(
            model, (example,), str(destination), dynamo=False, opset_version=OPSET,
            input_names=["pixels"], output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
        )
    onnx.checker.check_model(str(destination))


def max_logit_difference(model: torch.nn.Module, onnx_path: Path, size: int, batch: int = 4, seed: int = 0) -> float:
    pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        expected = model(pixels).numpy()
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})[0]
    return float(np.abs(actual - expected).max())


def export_run(run_dir: Path, out_dir: Path, name: str | None = None, checkpoint: str = "best",
               threshold: float = 0.5, margin: float = DEFAULT_MARGIN, force: bool = False) -> Bundle:
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    model, config, meta = load_run_model(run_dir, checkpoint)
    size = int(config["size"])
    history = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (run_dir / "metrics.jsonl").exists() else []
    epoch_metrics = next((m for m in history if m["epoch"] == meta["epoch"]), None)
    assert tuple(CLASSES) == CLASS_ORDER, "trainer labels and the bundle's class order must agree"

    with tempfile.TemporaryDirectory() as scratch:
        onnx_path = Path(scratch) / "model.onnx"
        export_onnx(model, size, onnx_path)
        difference = max_logit_difference(model, onnx_path, size)
        if not difference <= MAX_LOGIT_DIFFERENCE:
            raise ExportError(
                f"{run_dir}: ONNX Runtime disagrees with PyTorch by {difference:.2e} in the logits "
                f"(allowed {MAX_LOGIT_DIFFERENCE:.0e}); refusing to write a bundle"
            )
        manifest = {
            "name": name or out_dir.name,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "models": [{"name": config["arch"], "file": "model.onnx", "arch": config["arch"], "weight": 1.0}],
            "input": {"size": size, "color_order": "RGB", "layout": "NCHW", "pixel_range": [0, 1],
                      "mean": config["mean"], "std": config["std"], "normalize_in_graph": True},
            "face_crop": {"margin": margin},
            "class_order": list(CLASS_ORDER),
            "decision_threshold": threshold,
            "temperature": 1.0,
            "producer": {"tool": "trainer export", "opset": OPSET, "onnx_max_logit_difference": difference,
                         **library_versions()},
            "training": {"run": str(run_dir), "checkpoint": checkpoint, "epoch": meta["epoch"],
                         "arch": config["arch"], "method": config["method"], "init": config["init"], "options": config.get("options", {}), "sbi": config.get("sbi", False),
                         "data": config["data"], "counts": config["counts"], "validation": epoch_metrics},
        }
        return write_bundle(out_dir, manifest, {"model.onnx": onnx_path}, force=force)
