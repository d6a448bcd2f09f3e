"""Tracing a gradient into an ATen graph that the ONNX exporter can take, for the graphs that
carry a gradient inside: the input-gradient graph (trainer.export.gradient_graph) and the
Grad-CAM graph (trainer.export.cam_graph). Neither exporter can differentiate by itself, so the
gradient (`torch.func.grad`) is traced with `make_fx` (core ATen decompositions, plus ours for
what has no ONNX translation), the `as_strided` patterns that are plain reshapes are rewritten,
and eval-mode batch norm and token-sequence linear layers are traced in forms whose gradient
traces well (`TraceableLayers`). Two tracing modes exist (TRACING_MODES); `first_working_mode`
tries them in turn until one gives a graph that exports and verifies, and says why the others
failed.
"""

from __future__ import annotations

import inspect
import re
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, TypeVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

TRACE_BATCH = 2  # >= 2, so the batch dimension is not specialised to 1 while tracing

aten = torch.ops.aten
T = TypeVar("T")

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
def frozen_eval(model: nn.Module):
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


class TraceableLayers(TorchFunctionMode):
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


# Tracing modes, tried in this order: fake tensors with only the batch dimension dynamic (an
# unbacked size: the fewest symbolic expressions, so the ONNX export's re-tracing is fastest),
# then every dimension symbolic (backed sizes: the older, more permissive route).
TRACING_MODES = ("batch-dynamic", "symbolic")


def recorded_layers(model: nn.Module, size: int) -> TraceableLayers:
    """`TraceableLayers` whose batch-norm constants one eager pass of `model` has computed."""
    layers = TraceableLayers()
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


# --------------------------------------------------------------------------- trying each mode

def one_line(exc: BaseException) -> str:
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


@dataclass
class Attempt:
    """One tracing mode's try: where it stages its file(s), and the step it has reached (named in
    the reason it failed)."""
    mode: str
    staged: Path
    stage: str


def first_working_mode(run: Callable[[Attempt], T], scratch: Path, file_name: str, first_stage: str,
                       failure: str) -> tuple[Attempt, T, list[str]]:
    """`run(attempt)` for each mode of TRACING_MODES in turn, each staging its file at
    scratch/<mode>/file_name (a fresh folder), until one returns. Returns that attempt, its
    result, and why the earlier modes failed ("mode: reason", the reason a GradientGraphError's
    message, else the stage the attempt had reached and the exception's first line). When every
    mode fails, raises GradientGraphError("{failure}: " + the reasons joined by " | "), its
    `.attempts` those reasons and its `.reports` the verification numbers of the attempts whose
    exception carried them (`.report`)."""
    attempts: list[str] = []
    reports: dict[str, dict] = {}
    for mode in TRACING_MODES:
        attempt = Attempt(mode, scratch / mode / file_name, first_stage)
        attempt.staged.parent.mkdir()
        try:
            return attempt, run(attempt), attempts
        except Exception as exc:
            text = str(exc) if isinstance(exc, GradientGraphError) else f"{attempt.stage} failed ({one_line(exc)})"
            attempts.append(f"{mode}: {text}")
            if getattr(exc, "report", None) is not None:
                reports[mode] = exc.report
    error = GradientGraphError(f"{failure}: " + " | ".join(attempts))
    error.attempts = attempts
    error.reports = reports
    raise error
