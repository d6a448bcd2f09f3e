"""Class activation maps in ONNX for any head, by Grad-CAM traced into the graph.

For a global-pool + linear head the class activation map (classifier weights · final
features) is exact and `DetectorWithCAM` exports it with the plain exporter. Other heads
(ConvNeXt's pool → LayerNorm → linear, ResNet-SE's MLP, EffNet-ViT's transformer) need the
head's gradient, which neither ONNX exporter can take by itself. `export_cam_onnx` writes

    inputs   pixels  float32 (N, 3, size, size), RGB in [0, 1]
    outputs  logits  float32 (N, 2)
             cam     float32 (N, h, w)   Σ_c (Σ_hw ∂m/∂A_c) · A_c, with A = `Detector.features`
                                          and m = logit_fake − logit_real

i.e. Grad-CAM (Selvaraju et al., ICCV 2017) of the fake-vs-real margin with its weights summed
rather than averaged over positions and without the final ReLU, so that for a linear head it
is exactly the class activation map `DetectorWithCAM` gives (positive = evidence for "fake"),
and heatmaps mean the same thing whatever the head. The head's gradient is traced with
`make_fx` as the input gradient is (trainer.export.tracing, shared with
`trainer.export.gradient_graph`), exported with the dynamo exporter, and checked against
PyTorch autograd before it is kept.
"""

from __future__ import annotations

import shutil
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from trainer.export.gradient_graph import cosine
from trainer.export.tracing import (TRACE_BATCH, Attempt, GradientGraphError, first_working_mode, frozen_eval, recorded_layers,
                                    trace_aten)

OUTPUT_NAMES = ("logits", "cam")
MAX_LOGIT_DIFFERENCE = 1e-4
MIN_CAM_COSINE = 0.999
MAX_CAM_RELATIVE_DIFFERENCE = 1e-3  # of the map's largest magnitude


def _margin_and_logits(model: nn.Module):
    def margin(features):
        logits = model.head(features)
        return (logits[:, 1] - logits[:, 0]).sum(), logits

    return margin


def _cam(features: torch.Tensor, gradient: torch.Tensor) -> torch.Tensor:
    return torch.einsum("nchw,nc->nhw", features, gradient.sum(dim=(2, 3)))


def reference_cam(model: nn.Module, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(logits, cam) by PyTorch autograd, in eval mode with frozen parameters (modes restored)."""
    with frozen_eval(model), torch.enable_grad():
        features = model.features(pixels).detach().requires_grad_(True)
        margin, logits = _margin_and_logits(model)(features)
        (gradient,) = torch.autograd.grad(margin, features)
    return logits.detach(), _cam(features.detach(), gradient)


def _trace(model: nn.Module, size: int, mode: str) -> torch.fx.GraphModule:
    layers = recorded_layers(model, size)

    def logits_and_cam(pixels):
        # Attention in its composite form: the fused CPU kernel's backward has no ONNX translation.
        with sdpa_kernel(SDPBackend.MATH), layers:
            features = model.features(pixels)
            gradient, logits = torch.func.grad(_margin_and_logits(model), has_aux=True)(features)
        return logits, _cam(features, gradient)

    graph, _ = trace_aten(logits_and_cam, {"pixels": torch.rand(TRACE_BATCH, 3, size, size)}, mode)
    return graph


def verify_cam_onnx(model: nn.Module, path, size: int, batch: int = 3, seed: int = 0) -> dict:
    """ONNX Runtime (CPU) against `reference_cam` on a seeded random batch; raises
    GradientGraphError with the numbers when they disagree."""
    import onnxruntime as ort

    pixels = torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))
    expected_logits, expected_cam = (t.numpy() for t in reference_cam(model, pixels))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    logits, cam = session.run(list(OUTPUT_NAMES), {"pixels": pixels.numpy()})
    report = {
        "logits_max_difference": float(np.abs(logits - expected_logits).max()),
        "cam_cosine": cosine(cam, expected_cam),
        "cam_max_relative_difference": float(np.abs(cam - expected_cam).max() / max(float(np.abs(expected_cam).max()), 1e-6)),
        "batch": batch,
        "seed": seed,
    }
    if not (report["logits_max_difference"] <= MAX_LOGIT_DIFFERENCE and report["cam_cosine"] >= MIN_CAM_COSINE
            and report["cam_max_relative_difference"] <= MAX_CAM_RELATIVE_DIFFERENCE):
        raise GradientGraphError(
            f"{path}: the Grad-CAM graph disagrees with PyTorch (logits {report['logits_max_difference']:.2e}, "
            f"CAM cosine {report['cam_cosine']:.6f}, CAM relative difference {report['cam_max_relative_difference']:.2e})")
    return report


def export_cam_onnx(model: nn.Module, size: int, path) -> dict:
    """Write `model` (a CPU `Detector`) as pixels → (logits, cam) to `path`, verified against
    PyTorch; GradientGraphError (one line) when it cannot be, and then nothing is left at `path`.
    Returns the verification numbers and the seconds it took."""
    import onnx
    from torch.export import Dim

    path, started = Path(path), time.perf_counter()

    def trace_export_verify(attempt: Attempt) -> dict:
        with frozen_eval(model):
            graph = _trace(model, size, attempt.mode)
            attempt.stage = "the ONNX export"
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = torch.onnx.export(graph, (torch.rand(TRACE_BATCH, 3, size, size),), dynamo=True,
                                            input_names=["pixels"], output_names=list(OUTPUT_NAMES),
                                            dynamic_shapes=({0: Dim("batch", min=1)},), verbose=False)
            program.save(str(attempt.staged), external_data=False)
        attempt.stage = "the ONNX checker"
        onnx.checker.check_model(str(attempt.staged))
        attempt.stage = "verification"
        return verify_cam_onnx(model, attempt.staged, size)

    scratch = Path(tempfile.mkdtemp(prefix=".cam-graph-", dir=path.parent))
    try:  # the same tracing modes, in the same order, as the input-gradient graph's
        attempt, report, _ = first_working_mode(trace_export_verify, scratch, path.name, "tracing the head's gradient",
                                                f"no Grad-CAM graph for {model.backbone.__class__.__name__}")
        shutil.move(str(attempt.staged), path)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return {**report, "tracing": attempt.mode, "seconds": round(time.perf_counter() - started, 1)}
