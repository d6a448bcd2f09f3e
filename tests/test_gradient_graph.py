"""The ONNX gradient graph (trainer.export.gradient_graph): per-sample cross-entropy and its input
gradient, run in ONNX Runtime and compared with PyTorch autograd (no mocks). A small detector
with the layer types of the real ones covers the behaviour in seconds; one EfficientNet-B0
export (about a minute on 2 CPU cores) shows a registered architecture goes through."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from trainer.export.gradient_graph import (GradientGraphError, export_gradient_graph, run_gradient_graph, torch_loss_and_grad,
                                           verify_gradient_graph)
from trainer.export.tracing import _rewrite_strided_views
from trainer.models.registry import Detector

SIZE = 32


def small_detector(seed: int = 0) -> Detector:
    """Conv + BN + ReLU, a strided depthwise conv (odd output padding in its gradient), SiLU,
    a pointwise conv + BN, adaptive average pooling, a linear head; batch-norm running
    statistics set away from (0, 1) so eval-mode batch norm is not the identity."""
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, groups=8), nn.SiLU(),
        nn.Conv2d(8, 16, 1), nn.BatchNorm2d(16), nn.SiLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )
    for module in backbone.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
            nn.init.uniform_(module.weight, 0.5, 1.5)
            nn.init.uniform_(module.bias, -0.2, 0.2)
    return Detector(backbone, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), shallow_layer="2")


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed)), torch.arange(n) % 2


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The small detector, left in train mode with trainable parameters, exported once."""
    model = small_detector().train()
    path = tmp_path_factory.mktemp("gradient-graph") / "small.onnx"
    result = export_gradient_graph(model, SIZE, path)
    return model, path, result


@pytest.fixture(scope="module")
def session(small):
    return ort.InferenceSession(str(small[1]), providers=["CPUExecutionProvider"])


def test_export_writes_one_verified_file(small):
    model, path, result = small
    assert sorted(p.name for p in path.parent.iterdir()) == ["small.onnx"]  # no .data, no scratch
    assert result["single_file"] and result["files"] == [str(path)]
    proto = onnx.load(str(path))
    assert [i.name for i in proto.graph.input] == ["pixels", "labels"]
    assert [o.name for o in proto.graph.output] == ["loss", "grad"]
    verification = result["verification"]
    assert verification["passed"] and verification["reason"] is None
    assert verification["cosine"] >= 0.999 and verification["min_cosine"] >= 0.999
    assert len(verification["cosine_per_sample"]) == verification["batch"] == 4
    assert verification["loss_max_relative_difference"] <= 1e-4
    assert verification["alone_cosine"] >= 0.999
    assert result["tracing"] == "batch-dynamic" and result["attempts"] == []
    # the model's modes and parameters' flags are as they were
    assert model.training and all(m.training for m in model.modules())
    assert all(p.requires_grad and p.grad is None for p in model.parameters())


@pytest.mark.parametrize("n", [3, 1, 5])
def test_graph_matches_autograd_at_other_batch_sizes(small, session, n):
    """Traced at batch 2; any batch runs, and each sample gets its own loss and gradient."""
    model, _, _ = small
    pixels, labels = batch(n, seed=10 + n)
    loss, grad = run_gradient_graph(session, pixels.numpy(), labels.numpy())
    expected_loss, expected_grad = torch_loss_and_grad(model, pixels, labels)
    assert loss.shape == (n,) and grad.shape == (n, 3, SIZE, SIZE)
    np.testing.assert_allclose(loss, expected_loss.numpy(), rtol=1e-4, atol=1e-6)
    for i in range(n):
        assert cosine(grad[i], expected_grad[i]) >= 0.999
    # batch elements are independent: sample 0 alone gives the same loss and gradient
    alone_loss, alone_grad = run_gradient_graph(session, pixels[:1].numpy(), labels[:1].numpy())
    np.testing.assert_allclose(alone_loss, loss[:1], rtol=1e-5, atol=1e-7)
    assert cosine(alone_grad[0], grad[0]) >= 0.9999


def test_labels_steer_the_gradient(small, session):
    """With two classes, CE(label 0) and CE(label 1) have opposite input gradients
    (∇CE₀ = p₁ (∇z₁ − ∇z₀), ∇CE₁ = p₀ (∇z₀ − ∇z₁)); the loss of the two labels differs."""
    pixels, _ = batch(2, seed=3)
    pixels = torch.cat([pixels, pixels])
    labels = torch.tensor([0, 0, 1, 1])
    loss, grad = run_gradient_graph(session, pixels.numpy(), labels.numpy())
    for i in range(2):
        assert cosine(grad[i], grad[i + 2]) < -0.999
        assert abs(loss[i] - loss[i + 2]) > 1e-4
        # softmax probabilities from the two losses: p_true = exp(-loss), they sum to 1
        assert np.exp(-loss[i]) + np.exp(-loss[i + 2]) == pytest.approx(1.0, abs=1e-5)
    # a PGD step along sign(grad) raises the loss of the label it was taken for
    stepped = np.clip(pixels.numpy() + 2 / 255 * np.sign(grad), 0, 1).astype(np.float32)
    stepped_loss, _ = run_gradient_graph(session, stepped, labels.numpy())
    assert (stepped_loss > loss).all()


def test_verification_against_another_model_fails(small):
    _, path, _ = small
    other = small_detector(seed=1)
    with pytest.raises(GradientGraphError, match="disagrees with PyTorch") as caught:
        verify_gradient_graph(other, path, SIZE)
    assert caught.value.report["passed"] is False
    report = verify_gradient_graph(other, path, SIZE, strict=False)
    assert not report["passed"] and report["min_cosine"] < 0.999
    assert "cosine" in report["reason"] or "loss" in report["reason"]


def scatter_through_buffer(x):
    """The pattern ConvNeXt's head leaves in its gradient at 224 px: a zero buffer written
    through one contiguous strided view and read through another, then a re-striding of
    singleton dimensions."""
    n = x.shape[0]
    buffer = torch.zeros(n * 8)
    torch.as_strided(buffer, (n, 8), (8, 1)).copy_(x)
    y = torch.as_strided(buffer, (n, 8, 1, 1), (8, 1, 1, 1)) * 2
    return torch.as_strided(y, (n, 8, 1, 1), (8, 1, 8, 8)) + 1


def partial_view(x):
    """Not a reshape (the read covers half the buffer): must be left alone."""
    n = x.shape[0]
    buffer = torch.zeros(n * 8)
    torch.as_strided(buffer, (n, 8), (8, 1)).copy_(x)
    return torch.as_strided(buffer, (n, 4), (4, 1)) + 1


def strided_ops(graph) -> list[str]:
    return [str(node.target) for node in graph.graph.nodes if "as_strided" in str(node.target)
            or "copy_" in str(node.target)]


def test_strided_views_become_reshapes():
    from torch.fx.experimental.proxy_tensor import make_fx

    graph = make_fx(scatter_through_buffer, tracing_mode="symbolic")(torch.rand(2, 8))
    assert len(strided_ops(graph)) == 4
    assert _rewrite_strided_views(graph) == 2
    assert strided_ops(graph) == []
    x = torch.rand(5, 8)  # another batch size than traced
    assert torch.equal(graph(x), scatter_through_buffer(x))

    untouched = make_fx(partial_view, tracing_mode="symbolic")(torch.rand(2, 8))
    assert _rewrite_strided_views(untouched) == 0
    assert len(strided_ops(untouched)) == 3


class DataDependent(nn.Module):
    """A forward whose control flow depends on pixel values: not traceable into one graph."""

    def __init__(self):
        super().__init__()
        self.head = nn.Linear(3, 2)

    def forward(self, pixels):
        features = pixels.mean(dim=(2, 3))
        return self.head(features if features.mean() > 0.5 else -features)


def test_export_failure_raises_and_leaves_nothing(tmp_path):
    path = tmp_path / "broken.onnx"
    with pytest.raises(GradientGraphError, match="no gradient graph for DataDependent") as caught:
        export_gradient_graph(DataDependent(), SIZE, path)
    assert len(caught.value.attempts) == 2  # both tracing modes were tried
    assert list(tmp_path.iterdir()) == []

