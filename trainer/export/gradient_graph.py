"""A white-box gradient graph in ONNX: per-sample cross-entropy and its input gradient.

`forensic` runs on ONNX Runtime and must not import torch models, yet PGD needs ∇ₓ of the
loss. `export_gradient_graph(model, size, path)` writes one ONNX file with

    inputs   pixels  float32 (N, 3, size, size), RGB in [0, 1] (the `Detector` normalises inside)
             labels  int64   (N,)                 0 = real, 1 = fake
    outputs  loss    float32 (N,)                 per-sample cross-entropy (batch elements are
                                                  independent: eval-mode batch norm, no dropout)
             grad    float32 (N, 3, size, size)   d sum(loss) / d pixels, i.e. each sample's
                                                  own input gradient

with a dynamic batch N. Parameters are frozen: only the input gradient is in the graph.

How (neither exporter can differentiate by itself: `torch.autograd.grad` inside forward fails
with both, `torch.func.grad` fails under the dynamo exporter; steps 1 and 2 are
trainer.export.tracing's, shared with the Grad-CAM graph):

1. `torch.func.grad` of the summed per-sample loss with respect to the pixels is traced into an
   ATen graph with `make_fx` (core ATen decompositions) — the backward pass becomes ordinary
   forward ops. Two tracing modes are tried in turn (TRACING_MODES): fake tensors with only the
   batch dimension dynamic, whose graph exports fastest, then every dimension symbolic, which
   some models need (at 224 px ConvNeXt's head and EffNet-ViT's attention guard on the batch
   size, which an unbacked size cannot answer);
2. what has no ONNX translation is removed on the way: `convolution_backward` (its input
   gradient is a transposed convolution; weight and bias gradients are never requested since
   parameters are frozen), `empty_permuted` (zeros serve) and `as_strided` patterns that are
   plain reshapes (`_rewrite_strided_views`); eval-mode batch norm is traced as the affine map
   it is, which shortens the graph and its export, and linear layers on token sequences as
   matmuls, whose gradient keeps the batch dynamic (`TraceableLayers`); attention is traced in
   its composite form (matmul, softmax);
3. that graph module is exported with the dynamo exporter, batch dimension dynamic, into one
   self-contained file (weights inside) when the weights fit protobuf's 2 GB limit, else with
   the weights in `<file>.data` beside it.

This leans on private PyTorch APIs (`make_fx`, the decomposition tables), so every export is
checked before it is kept: `verify_gradient_graph` runs ONNX Runtime (CPU) and PyTorch
autograd on the same random batch, and the file is only written when the gradients agree
(cosine similarity >= 0.999 per sample and overall) and so do the losses (relative difference
<= 1e-4). Any failure, in the export or in the check, raises `GradientGraphError` with a
one-line reason, so a caller can fall back to a gradient-free attack and record why.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from contextlib import nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from trainer.export.tracing import (TRACE_BATCH, Attempt, GradientGraphError, TraceableLayers, first_working_mode,
                                    frozen_eval, one_line, recorded_layers, trace_aten)

INPUT_NAMES = ("pixels", "labels")
OUTPUT_NAMES = ("loss", "grad")
MIN_COSINE = 0.999
MAX_LOSS_RELATIVE_DIFFERENCE = 1e-4
LOSS_FLOOR = 1e-3  # relative loss differences are taken against max(|loss|, LOSS_FLOOR)
SINGLE_FILE_LIMIT = 1_800_000_000  # bytes of weights; protobuf refuses files of 2 GiB and more


# --------------------------------------------------------------------------- the traced function

def _loss_and_grad_function(model: nn.Module, layers: TraceableLayers | None = None):
    def summed_loss(pixels, labels):
        loss = F.cross_entropy(model(pixels), labels, reduction="none")
        return loss.sum(), loss

    def loss_and_grad(pixels, labels):
        # Attention in its composite "math" form (matmul, softmax): the fused CPU kernel's
        # backward (_scaled_dot_product_flash_attention_for_cpu_backward) has no ONNX translation.
        with sdpa_kernel(SDPBackend.MATH), layers if layers is not None else nullcontext():
            grad, loss = torch.func.grad(summed_loss, has_aux=True)(pixels, labels)
        return loss, grad

    return loss_and_grad


def _example(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(TRACE_BATCH, 3, size, size), torch.arange(TRACE_BATCH) % 2


def _trace(model: nn.Module, size: int, mode: str) -> tuple[torch.fx.GraphModule, int]:
    """The ATen graph of (pixels, labels) → (loss, grad), and its `as_strided` rewrites."""
    pixels, labels = _example(size)
    function = _loss_and_grad_function(model, recorded_layers(model, size))
    return trace_aten(function, {"pixels": pixels, "labels": labels}, mode)


def _export(graph: torch.fx.GraphModule, size: int, path: Path, single_file: bool) -> None:
    from torch.export import Dim

    batch = Dim("batch", min=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            graph, _example(size), dynamo=True, input_names=list(INPUT_NAMES), output_names=list(OUTPUT_NAMES),
            dynamic_shapes=({0: batch}, {0: batch}), verbose=False,
        )
    program.save(str(path), external_data=not single_file)


# --------------------------------------------------------------------------- verification

def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    na, nb = np.linalg.norm(a), np.linalg.norm(b)
    if na == 0 and nb == 0:
        return 1.0
    if na == 0 or nb == 0:
        return 0.0
    return float(np.dot(a, b) / (na * nb))


def torch_loss_and_grad(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor):
    """PyTorch's reference: per-sample cross-entropy (N,) and d sum(loss) / d pixels, in eval
    mode with frozen parameters (the model's modes and flags are restored)."""
    with frozen_eval(model), torch.enable_grad():
        x = pixels.detach().clone().requires_grad_(True)
        loss = F.cross_entropy(model(x), labels, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return loss.detach(), grad


def run_gradient_graph(session, pixels: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(loss, grad) from an onnxruntime InferenceSession of a gradient graph."""
    loss, grad = session.run(list(OUTPUT_NAMES), {"pixels": np.ascontiguousarray(pixels, dtype=np.float32),
                                                  "labels": np.ascontiguousarray(labels, dtype=np.int64)})
    return loss, grad


def verify_gradient_graph(model: nn.Module, path, size: int, batch: int = 4, seed: int = 0,
                          strict: bool = True) -> dict:
    """Compare the gradient graph at `path` (ONNX Runtime, CPUExecutionProvider) with PyTorch
    autograd on `model` for a random batch (pixels uniform in [0, 1] from `seed`, labels
    alternating 0, 1, ...). Returns the measured numbers:

        cosine               gradient cosine similarity over the whole batch, flattened
        cosine_per_sample    the same per sample; min_cosine is their minimum
        loss_max_relative_difference   max |loss_onnx - loss_torch| / max(|loss_torch|, 1e-3)
        alone_cosine, alone_loss_relative_difference   the first sample run alone (batch 1)
                             in ONNX Runtime against its own result inside the batch
        grad_max_abs_difference, grad_max_abs, batch, seed, passed, reason

    `passed` needs both cosines >= 0.999 (MIN_COSINE), the loss difference <= 1e-4
    (MAX_LOSS_RELATIVE_DIFFERENCE), and the lone sample to agree to the same bounds. With
    `strict` (the default) a failed check raises GradientGraphError (its `.report` holds these
    numbers) instead of returning."""
    import onnxruntime as ort

    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(batch, 3, size, size, generator=generator)
    labels = torch.arange(batch) % 2
    expected_loss, expected_grad = torch_loss_and_grad(model, pixels, labels)
    expected_loss, expected_grad = expected_loss.numpy(), expected_grad.numpy()
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        loss, grad = run_gradient_graph(session, pixels.numpy(), labels.numpy())
        alone_loss, alone_grad = run_gradient_graph(session, pixels[:1].numpy(), labels[:1].numpy())
    except Exception as exc:  # onnxruntime raises its own several types
        message = " ".join(line.strip() for line in str(exc).splitlines() if line.strip())[:400]
        raise GradientGraphError(f"{path}: ONNX Runtime could not run the gradient graph "
                                 f"({type(exc).__name__}: {message})") from None
    if loss.shape != expected_loss.shape or grad.shape != expected_grad.shape:
        raise GradientGraphError(f"{path}: output shapes loss {loss.shape}, grad {grad.shape}; expected "
                                 f"{expected_loss.shape} and {expected_grad.shape}")
    per_sample = [cosine(grad[i], expected_grad[i]) for i in range(batch)]
    loss_difference = float(np.max(np.abs(loss.astype(np.float64) - expected_loss)
                                   / np.maximum(np.abs(expected_loss.astype(np.float64)), LOSS_FLOOR)))
    report = {
        "cosine": cosine(grad, expected_grad),
        "cosine_per_sample": per_sample,
        "min_cosine": min(per_sample),
        "loss_max_relative_difference": loss_difference,
        "grad_max_abs_difference": float(np.abs(grad - expected_grad).max()),
        "grad_max_abs": float(np.abs(expected_grad).max()),
        # the first sample run alone (batch 1) against its result inside the batch
        "alone_cosine": cosine(alone_grad[0], grad[0]),
        "alone_loss_relative_difference": float(abs(float(alone_loss[0]) - float(loss[0]))
                                                / max(abs(float(loss[0])), LOSS_FLOOR)),
        "batch": batch,
        "seed": seed,
    }
    problems = []
    if not (report["cosine"] >= MIN_COSINE and report["min_cosine"] >= MIN_COSINE):
        problems.append(f"gradient cosine similarity {report['min_cosine']:.6f} (per sample, min) / "
                        f"{report['cosine']:.6f} (overall) < {MIN_COSINE}")
    if not loss_difference <= MAX_LOSS_RELATIVE_DIFFERENCE:
        problems.append(f"loss relative difference {loss_difference:.2e} > {MAX_LOSS_RELATIVE_DIFFERENCE:.0e}")
    if not (report["alone_cosine"] >= MIN_COSINE
            and report["alone_loss_relative_difference"] <= MAX_LOSS_RELATIVE_DIFFERENCE):
        problems.append(f"a sample run alone differs from the same sample in the batch (gradient cosine "
                        f"{report['alone_cosine']:.6f}, loss relative difference "
                        f"{report['alone_loss_relative_difference']:.2e})")
    report["passed"] = not problems
    report["reason"] = "; ".join(problems) or None
    if problems and strict:
        error = GradientGraphError(f"{path}: the ONNX gradient graph disagrees with PyTorch autograd: "
                                   + report["reason"])
        error.report = report
        raise error
    return report


# --------------------------------------------------------------------------- export

def export_gradient_graph(model: nn.Module, size: int, path, *, verify_batch: int = 4, seed: int = 0) -> dict:
    """Write the gradient graph of `model` (a `Detector` on the CPU: pixels in [0, 1] → (N, 2)
    logits) for square inputs of `size` to `path`, verify it against PyTorch (see `verify_gradient_graph`)
    and return what happened:

        path, files (path, plus `<path>.data` when the weights do not fit one file), single_file,
        bytes, size, inputs, outputs, tracing (the tracing mode that worked), attempts (why
        earlier modes failed, if any), strided_rewrites (see tracing._rewrite_strided_views), trace_seconds, export_seconds (tracing + ONNX export, the
        successful attempt), verify_seconds, total_seconds, opset, torch, verification
        (verify_gradient_graph's numbers)

    Each tracing mode in TRACING_MODES is tried in turn until one gives a graph that exports,
    is valid ONNX and matches PyTorch. When none does, GradientGraphError says why for each
    (its `.attempts` lists the reasons, `.reports` the verification numbers of the attempts
    that were verified) and nothing is left at `path`. The model's train/eval modes
    and its parameters' requires_grad flags are restored afterwards."""
    import onnx

    path = Path(path)
    size = int(size)
    if size < 1:
        raise GradientGraphError(f"size must be a positive number of pixels, got {size}")
    devices = {t.device.type for t in (*model.parameters(), *model.buffers())}
    if devices - {"cpu"}:
        raise GradientGraphError(f"the model must be on the CPU to export its gradient graph (found "
                                 f"{', '.join(sorted(devices))}): call model.cpu() first")
    parameter_bytes = sum(t.numel() * t.element_size() for t in (*model.parameters(), *model.buffers()))
    single_file = parameter_bytes < SINGLE_FILE_LIMIT
    name = type(model).__name__
    started = time.perf_counter()

    def trace_export_verify(attempt: Attempt) -> dict:
        begun = time.perf_counter()
        with frozen_eval(model):
            graph, rewritten = _trace(model, size, attempt.mode)
            traced = time.perf_counter()
            attempt.stage = "the ONNX export"
            _export(graph, size, attempt.staged, single_file)
        exported = time.perf_counter()
        attempt.stage = "the ONNX checker"
        onnx.checker.check_model(str(attempt.staged))
        proto = onnx.load(str(attempt.staged), load_external_data=False)
        names = ([i.name for i in proto.graph.input], [o.name for o in proto.graph.output])
        if names != (list(INPUT_NAMES), list(OUTPUT_NAMES)):
            raise GradientGraphError(f"inputs/outputs are {names}, expected "
                                     f"{list(INPUT_NAMES)} → {list(OUTPUT_NAMES)}")
        attempt.stage = "verification"
        verification = verify_gradient_graph(model, attempt.staged, size, batch=verify_batch, seed=seed)
        return {"proto": proto, "rewritten": rewritten, "verification": verification, "begun": begun,
                "traced": traced, "exported": exported, "verified": time.perf_counter()}

    try:  # staged beside the destination, moved there only once verified
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".gradient-graph-", dir=path.parent))
    except OSError as exc:
        raise GradientGraphError(f"cannot write the gradient graph to {path} ({one_line(exc)})") from exc
    try:
        attempt, done, attempts = first_working_mode(trace_export_verify, scratch, path.name, "tracing the input gradient",
                                                     f"no gradient graph for {name} at size {size}")
        files = sorted(attempt.staged.parent.iterdir())
        try:
            for file in files:
                os.replace(file, path.parent / file.name)
        except OSError as exc:
            raise GradientGraphError(f"cannot write the gradient graph to {path} ({one_line(exc)})") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    opset = next((o.version for o in done["proto"].opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "path": str(path),
        "files": [str(path.parent / f.name) for f in files],
        "single_file": single_file,
        "bytes": sum((path.parent / f.name).stat().st_size for f in files),
        "size": size,
        "inputs": {"pixels": ["N", 3, size, size], "labels": ["N"]},
        "outputs": {"loss": ["N"], "grad": ["N", 3, size, size]},
        "tracing": attempt.mode,
        "strided_rewrites": done["rewritten"],
        "attempts": attempts,
        "trace_seconds": round(done["traced"] - done["begun"], 2),
        "export_seconds": round(done["exported"] - done["begun"], 2),
        "verify_seconds": round(done["verified"] - done["exported"], 2),
        "total_seconds": round(done["verified"] - started, 2),
        "opset": opset,
        "torch": torch.__version__,
        "verification": done["verification"],
    }
