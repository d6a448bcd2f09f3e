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
with both, `torch.func.grad` fails under the dynamo exporter):

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
   matmuls, whose gradient keeps the batch dynamic (`_TraceableLayers`); attention is traced in
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

import inspect
import os
import re
import shutil
import tempfile
import time
import warnings
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.overrides import TorchFunctionMode

INPUT_NAMES = ("pixels", "labels")
OUTPUT_NAMES = ("loss", "grad")
MIN_COSINE = 0.999
MAX_LOSS_RELATIVE_DIFFERENCE = 1e-4
LOSS_FLOOR = 1e-3  # relative loss differences are taken against max(|loss|, LOSS_FLOOR)
TRACE_BATCH = 2  # >= 2, so the batch dimension is not specialised to 1 while tracing
SINGLE_FILE_LIMIT = 1_800_000_000  # bytes of weights; protobuf refuses files of 2 GiB and more

aten = torch.ops.aten


class GradientGraphError(Exception):
    """A gradient graph that could not be exported or did not match PyTorch, in one line."""


# --------------------------------------------------------------------------- decompositions

def _convolution_backward(grad_output, input, weight, bias_sizes, stride, padding, dilation, transposed,
                          output_padding, groups, output_mask):
    """aten.convolution_backward, input gradient only, as a (transposed) convolution.

    The gradient of a convolution with respect to its input is the transposed convolution of
    the output gradient with the same weight, stride, padding, dilation and groups; the output
    padding restores the rows and columns the forward stride dropped. (For a transposed forward
    convolution it is the plain convolution.) Weight and bias gradients are not needed with
    frozen parameters and are refused rather than silently returned wrong."""
    if output_mask[1] or output_mask[2]:
        raise GradientGraphError("a convolution's weight or bias gradient was requested; "
                                 "parameters must be frozen (requires_grad=False)")
    if not output_mask[0]:
        return None, None, None
    spatial = len(input.shape) - 2
    stride, padding, dilation = (list(v) * spatial if len(v) == 1 else list(v) for v in (stride, padding, dilation))
    if transposed:
        grad_input = aten.convolution.default(grad_output, weight, None, stride, padding, dilation, False,
                                              [0] * spatial, groups)
    else:
        kernel = weight.shape[2:]
        extra = [input.shape[2 + i] - ((grad_output.shape[2 + i] - 1) * stride[i] - 2 * padding[i]
                                       + dilation[i] * (kernel[i] - 1) + 1) for i in range(spatial)]
        grad_input = aten.convolution.default(grad_output, weight, None, stride, padding, dilation, True,
                                              extra, groups)
    return grad_input, None, None


def _empty_permuted(size, physical_layout, *, dtype=None, layout=None, device=None, pin_memory=None):
    """aten.empty_permuted (uninitialised memory laid out in a permuted order, which some
    backward formulas allocate for their result): a contiguous tensor of zeros. Its contents
    are never read before being written, and only the strides differ, which ONNX tensors do not
    have; ops traced after it see the contiguous strides, so they stay consistent."""
    return torch.zeros(size, dtype=dtype, device=device)


def _decompositions() -> dict:
    from torch._decomp import core_aten_decompositions

    table = dict(core_aten_decompositions())
    table[aten.convolution_backward.default] = _convolution_backward
    table[aten.empty_permuted.default] = _empty_permuted
    return table


# --------------------------------------------------------------------------- graph rewrites

def _value(argument):
    """An FX argument's traced value: a node's (fake tensor or SymInt) or the constant itself."""
    return argument.meta.get("val") if isinstance(argument, torch.fx.Node) else argument


def _known_equal(a, b) -> bool:
    """True only when a == b is certain for every value of the symbolic sizes."""
    from torch.fx.experimental.symbolic_shapes import statically_known_true

    try:
        return bool(statically_known_true(a == b))
    except Exception:
        return False


def _contiguous_strides(sizes) -> list:
    strides, running = [], 1
    for size in reversed(sizes):
        strides.append(running)
        running = running * size
    return strides[::-1]


def _same_layout(sizes, strides, reference_sizes, reference_strides) -> bool:
    """Whether (sizes, strides) address exactly the elements of (reference_sizes,
    reference_strides) in the same logical order: equal sizes, equal strides wherever the size
    is not 1 (a dimension of length 1 is never stepped along, whatever its stride)."""
    if not (len(sizes) == len(strides) == len(reference_sizes) == len(reference_strides)):
        return False
    for size, stride, reference_size, reference_stride in zip(sizes, strides, reference_sizes, reference_strides):
        if not _known_equal(size, reference_size):
            return False
        if not _known_equal(size, 1) and not _known_equal(stride, reference_stride):
            return False
    return True


def _strided_arguments(node: torch.fx.Node):
    """(source, sizes, strides) of an as_strided node with storage offset 0, else None."""
    source, sizes, strides = node.args[:3]
    offset = node.args[3] if len(node.args) > 3 else node.kwargs.get("storage_offset")
    if offset not in (None, 0) or not isinstance(source, torch.fx.Node):
        return None
    return source, [_value(s) for s in sizes], [_value(s) for s in strides]


def _numel(sizes):
    total = 1
    for size in sizes:
        total = total * size
    return total


_STRIDED = (aten.as_strided.default, aten.as_strided_.default)
_FRESH_BUFFERS = (aten.full.default, aten.zeros.default, aten.empty.memory_format)


def _rewrite_strided_views(graph_module: torch.fx.GraphModule) -> int:
    """Remove the `as_strided` patterns the ONNX exporter cannot translate (ONNX tensors have
    no strides), where they provably mean a plain reshape. Returns how many were rewritten.

    1. `as_strided(x, x.shape, strides)` (or `as_strided_`) whose strides equal x's own on
       every dimension longer than 1 — a re-striding of singleton dimensions, e.g. after the
       global average pool of ConvNeXt's head — is x itself.
    2. A fresh 1-D buffer of n zeros, one contiguous `as_strided` view of all n elements into
       which `copy_` writes `src`, then contiguous `as_strided` views of all n elements read
       after that write — how the backward of a view through ConvNeXt's head materialises — is
       `src.reshape(shape)` for each read view.

    Anything else is left alone (and then fails in the ONNX export, with a clear error)."""
    graph = graph_module.graph
    rewritten = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in _STRIDED:
            continue
        parts = _strided_arguments(node)
        source = parts and _value(parts[0])
        if not isinstance(source, torch.Tensor) or not _known_equal(source.storage_offset(), 0):
            continue
        if _same_layout(parts[1], parts[2], list(source.shape), list(source.stride())):
            node.replace_all_uses_with(parts[0])
            graph.erase_node(node)
            rewritten += 1

    order = {node: index for index, node in enumerate(graph.nodes)}
    for copy in list(graph.nodes):
        if copy.op != "call_function" or copy.target is not aten.copy_.default or copy.users:
            continue
        view, src = copy.args[:2]
        if not (isinstance(view, torch.fx.Node) and view.target is aten.as_strided.default
                and isinstance(src, torch.fx.Node) and len(view.users) == 1):
            continue
        buffer = view.args[0]
        buffer_value, src_value = _value(buffer), _value(src)
        if not (isinstance(buffer, torch.fx.Node) and buffer.target in _FRESH_BUFFERS
                and isinstance(buffer_value, torch.Tensor) and buffer_value.dim() == 1
                and isinstance(src_value, torch.Tensor) and src_value.dtype == buffer_value.dtype):
            continue
        if buffer.target is aten.full.default and buffer.args[1] != 0:
            continue
        total = buffer_value.shape[0]

        def covers_all(strided: torch.fx.Node) -> bool:
            parts = _strided_arguments(strided) if strided.target is aten.as_strided.default else None
            return bool(parts) and _same_layout(parts[1], parts[2], parts[1], _contiguous_strides(parts[1])) \
                and _known_equal(_numel(parts[1]), total)

        if not covers_all(view) or not _same_layout(list(src_value.shape), [1] * src_value.dim(),
                                                    _strided_arguments(view)[1], [1] * src_value.dim()):
            continue
        readers = [user for user in buffer.users if user is not view]
        if not readers or not all(covers_all(r) and order[r] > order[copy] for r in readers):
            continue
        for reader in readers:
            with graph.inserting_before(reader):
                reshaped = graph.call_function(aten.reshape.default, (src, list(reader.args[1])))
            reshaped.meta.update(reader.meta)
            reader.replace_all_uses_with(reshaped)
            graph.erase_node(reader)
        graph.erase_node(copy)
        graph.erase_node(view)
        graph.erase_node(buffer)
        rewritten += 1
    if rewritten:
        graph.eliminate_dead_code()
        graph.lint()
        graph_module.recompile()
    return rewritten


# --------------------------------------------------------------------------- the traced function

@contextmanager
def _frozen_eval(model: nn.Module):
    """Eval mode (running batch-norm statistics, no dropout) and parameters that do not require
    gradients inside the block; every module's mode and every parameter's flag restored after."""
    modes = [(module, module.training) for module in model.modules()]
    flags = [(parameter, parameter.requires_grad) for parameter in model.parameters()]
    model.eval()
    for parameter, _ in flags:
        parameter.requires_grad_(False)
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
        for parameter, flag in flags:
            parameter.requires_grad_(flag)


_BATCH_NORM_SIGNATURE = inspect.signature(F.batch_norm)


class _TraceableLayers(TorchFunctionMode):
    """Two layers rewritten, while tracing, into ops whose gradient traces well:

    * eval-mode `F.batch_norm` (running statistics) as the per-channel affine map it is,
      x * scale + shift, with scale and shift computed once, before tracing, as constants. Its
      gradient is then one multiplication, where batch norm's own backward decomposes into a few
      dozen ops per layer (about a third of EfficientNet-B0's gradient graph, and of its export
      time). The first, eager pass (`recording`) computes the constants; the traced pass looks
      them up (a call it has not seen is computed inline: correct, but recorded in the graph).
      Batch norm that uses batch statistics (training, or no running statistics) is left alone;
    * `F.linear` on inputs of 3 or more dimensions (transformer tokens) as `x @ weight.T + bias`:
      under `torch.func.grad` it goes through functorch's linear_hack, which reads the concrete
      sizes and so fixes the batch size of the graph to the traced one."""

    def __init__(self):
        super().__init__()
        self.constants: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}
        self.recording = True

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is F.linear:
            return self._linear(func, *args, **kwargs)
        if func is F.batch_norm:
            return self._batch_norm(func, args, kwargs)
        return func(*args, **kwargs)

    @staticmethod
    def _linear(func, input, weight, bias=None):
        if input.dim() <= 2:
            return func(input, weight, bias)
        output = torch.matmul(input, weight.t())
        return output if bias is None else output + bias

    def _batch_norm(self, func, args, kwargs):
        bound = _BATCH_NORM_SIGNATURE.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        mean, var, weight, bias = a["running_mean"], a["running_var"], a["weight"], a["bias"]
        if a["training"] or mean is None or var is None:
            return func(*args, **kwargs)
        key = (id(mean), id(var), id(weight), id(bias), float(a["eps"]))
        if key not in self.constants:
            with torch.no_grad():
                scale = torch.rsqrt(var + a["eps"])
                if weight is not None:
                    scale = scale * weight
                shift = -mean * scale
                if bias is not None:
                    shift = shift + bias
            if not self.recording:
                return self._affine(a["input"], scale, shift)
            self.constants[key] = (scale.detach().clone(), shift.detach().clone())
        scale, shift = self.constants[key]
        return self._affine(a["input"], scale, shift)

    @staticmethod
    def _affine(x, scale, shift):
        shape = (1, -1) + (1,) * (x.dim() - 2)
        return x * scale.reshape(shape) + shift.reshape(shape)


def _loss_and_grad_function(model: nn.Module, layers: _TraceableLayers | None = None):
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


# Tracing modes, tried in this order: fake tensors with only the batch dimension dynamic (an
# unbacked size: the fewest symbolic expressions, so the ONNX export's re-tracing is fastest),
# then every dimension symbolic (backed sizes: the older, more permissive route).
TRACING_MODES = ("batch-dynamic", "symbolic")


def recorded_layers(model: nn.Module, size: int) -> _TraceableLayers:
    """`_TraceableLayers` whose batch-norm constants one eager pass of `model` has computed."""
    layers = _TraceableLayers()
    with torch.no_grad(), layers:
        model(torch.rand(1, 3, size, size))
    layers.recording = False
    return layers


def trace_aten(function, example: dict[str, torch.Tensor], mode: str) -> tuple[torch.fx.GraphModule, int]:
    """The ATen graph of `function` (its parameters named as `example`'s keys, every input's
    first dimension the batch), traced in `mode` (see TRACING_MODES) with our decompositions,
    parameters as constants; and how many `as_strided` patterns were rewritten in it."""
    from torch.fx.experimental.proxy_tensor import make_fx

    if mode == "batch-dynamic":
        from torch.fx.experimental.dynamic_spec import ShapesSpec, ShapeVar, TensorSpec

        batch = ShapeVar("batch", min=1)  # make_fx binds the spec to the function's parameter names
        spec = ShapesSpec({name: TensorSpec([batch] + [None] * (tensor.dim() - 1)) for name, tensor in example.items()})
        graph = make_fx(function, decomposition_table=_decompositions(), tracing_mode="fake",
                        _allow_non_fake_inputs=True, dynamic_shapes=spec)(*example.values())
    elif mode == "symbolic":
        graph = make_fx(function, decomposition_table=_decompositions(), tracing_mode="symbolic",
                        _allow_non_fake_inputs=True)(*example.values())
    else:
        raise ValueError(f"unknown tracing mode {mode!r}; known: {', '.join(TRACING_MODES)}")
    return graph, _rewrite_strided_views(graph)


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

def _cosine(a: np.ndarray, b: np.ndarray) -> float:
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
    with _frozen_eval(model), torch.enable_grad():
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
    per_sample = [_cosine(grad[i], expected_grad[i]) for i in range(batch)]
    loss_difference = float(np.max(np.abs(loss.astype(np.float64) - expected_loss)
                                   / np.maximum(np.abs(expected_loss.astype(np.float64)), LOSS_FLOOR)))
    report = {
        "cosine": _cosine(grad, expected_grad),
        "cosine_per_sample": per_sample,
        "min_cosine": min(per_sample),
        "loss_max_relative_difference": loss_difference,
        "grad_max_abs_difference": float(np.abs(grad - expected_grad).max()),
        "grad_max_abs": float(np.abs(expected_grad).max()),
        # the first sample run alone (batch 1) against its result inside the batch
        "alone_cosine": _cosine(alone_grad[0], grad[0]),
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

def _one_line(exc: BaseException) -> str:
    """The exception's first line, and its root cause's (the exporter wraps the real error)."""
    def first(e: BaseException) -> str:
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))  # the exporter colours its messages
        lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
        return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__

    root, seen = exc, {id(exc)}
    while (root.__cause__ or root.__context__) is not None and id(root.__cause__ or root.__context__) not in seen:
        root = root.__cause__ or root.__context__
        seen.add(id(root))
    return first(exc) if root is exc else f"{first(exc)} ← {first(root)}"


def export_gradient_graph(model: nn.Module, size: int, path, *, verify_batch: int = 4, seed: int = 0) -> dict:
    """Write the gradient graph of `model` (a `Detector` on the CPU: pixels in [0, 1] → (N, 2)
    logits) for square inputs of `size` to `path`, verify it against PyTorch (see `verify_gradient_graph`)
    and return what happened:

        path, files (path, plus `<path>.data` when the weights do not fit one file), single_file,
        bytes, size, inputs, outputs, tracing (the tracing mode that worked), attempts (why
        earlier modes failed, if any), strided_rewrites (see _rewrite_strided_views), trace_seconds, export_seconds (tracing + ONNX export, the
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
    attempts: list[str] = []
    reports: dict[str, dict] = {}  # verification numbers of the attempts that got that far
    try:  # staged beside the destination, moved there only once verified
        path.parent.mkdir(parents=True, exist_ok=True)
        scratch = Path(tempfile.mkdtemp(prefix=".gradient-graph-", dir=path.parent))
    except OSError as exc:
        raise GradientGraphError(f"cannot write the gradient graph to {path} ({_one_line(exc)})") from exc
    try:
        for mode in TRACING_MODES:
            staged = scratch / mode / path.name
            staged.parent.mkdir()
            stage = "tracing the input gradient"
            try:
                begun = time.perf_counter()
                with _frozen_eval(model):
                    graph, rewritten = _trace(model, size, mode)
                    traced = time.perf_counter()
                    stage = "the ONNX export"
                    _export(graph, size, staged, single_file)
                exported = time.perf_counter()
                stage = "the ONNX checker"
                onnx.checker.check_model(str(staged))
                proto = onnx.load(str(staged), load_external_data=False)
                names = ([i.name for i in proto.graph.input], [o.name for o in proto.graph.output])
                if names != (list(INPUT_NAMES), list(OUTPUT_NAMES)):
                    raise GradientGraphError(f"inputs/outputs are {names}, expected "
                                             f"{list(INPUT_NAMES)} → {list(OUTPUT_NAMES)}")
                stage = "verification"
                verification = verify_gradient_graph(model, staged, size, batch=verify_batch, seed=seed)
                verified = time.perf_counter()
                break
            except Exception as exc:
                text = str(exc) if isinstance(exc, GradientGraphError) else f"{stage} failed ({_one_line(exc)})"
                attempts.append(f"{mode}: {text}")
                if getattr(exc, "report", None) is not None:
                    reports[mode] = exc.report
        else:
            error = GradientGraphError(f"no gradient graph for {name} at size {size}: " + " | ".join(attempts))
            error.attempts = attempts
            error.reports = reports
            raise error
        files = sorted(staged.parent.iterdir())
        try:
            for file in files:
                os.replace(file, path.parent / file.name)
        except OSError as exc:
            raise GradientGraphError(f"cannot write the gradient graph to {path} ({_one_line(exc)})") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "path": str(path),
        "files": [str(path.parent / f.name) for f in files],
        "single_file": single_file,
        "bytes": sum((path.parent / f.name).stat().st_size for f in files),
        "size": size,
        "inputs": {"pixels": ["N", 3, size, size], "labels": ["N"]},
        "outputs": {"loss": ["N"], "grad": ["N", 3, size, size]},
        "tracing": mode,
        "strided_rewrites": rewritten,
        "attempts": attempts,
        "trace_seconds": round(traced - begun, 2),
        "export_seconds": round(exported - begun, 2),
        "verify_seconds": round(verified - exported, 2),
        "total_seconds": round(verified - started, 2),
        "opset": opset,
        "torch": torch.__version__,
        "verification": verification,
    }
