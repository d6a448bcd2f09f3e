"""A bundle made of small PyTorch detectors, each with its own weight and calibration and its
verified gradient graph, for tests that check forensic's scores and gradients against autograd."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from forensic.bundle import Bundle, write_bundle
from trainer.export.bundle import export_onnx
from trainer.export.gradient_graph import export_gradient_graph

BUNDLE_TEMPERATURE = 0.8


def write_calibrated_ensemble(folder: Path, members: dict[str, tuple[nn.Module, float, float, float]], size: int,
                              **input_options) -> Bundle:
    """`members`: name → (model, weight, temperature, bias); the bundle (temperature
    BUNDLE_TEMPERATURE, mean 0.5, std 0.25, normalised in the graph, plus `input_options`) is
    written to FOLDER/bundle."""
    folder.mkdir(parents=True, exist_ok=True)
    files, entries = {}, []
    for name, (model, weight, temperature, bias) in members.items():
        export_onnx(model, size, folder / f"{name}.onnx")
        export_gradient_graph(model, size, folder / f"{name}.grad.onnx")
        files |= {f"{name}.onnx": folder / f"{name}.onnx", f"{name}.grad.onnx": folder / f"{name}.grad.onnx"}
        entries.append({"name": name, "file": f"{name}.onnx", "arch": "toy", "weight": weight,
                        "temperature": temperature, "bias": bias, "gradient_graph": {"file": f"{name}.grad.onnx"}})
    manifest = {"name": "pair", "models": entries, "temperature": BUNDLE_TEMPERATURE, "decision_threshold": 0.5,
                "input": {"size": size, "mean": [0.5] * 3, "std": [0.25] * 3, "normalize_in_graph": True,
                          **input_options},
                "face_crop": {"margin": 1.3}, "class_order": ["real", "fake"]}
    return write_bundle(folder / "bundle", manifest, files)
