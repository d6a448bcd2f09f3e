"""Every registered architecture (iterated from the registry, so new ones are covered): 2-logit
forward, AdamW training, the gradient-regularisation hook on its shallow layer, ONNX export
with dynamic batch, random init; plus the specifics of resnet_se and effnet_vit."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from trainer.export.bundle import MAX_LOGIT_DIFFERENCE, export_onnx, max_logit_difference
from trainer.methods import create_method
from trainer.models import Detector, InitError, create_model, list_models, model_spec

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ARCHITECTURES = list_models()
SIZE = 64  # small enough for 2 CPU cores; every architecture reduces it to a >= 2x2 final grid
# (channels, side) of the shallow feature map at SIZE: stride 4 for the timm nets, 2 for resnet_se.
SHALLOW_SHAPES = {"convnext_tiny": (96, SIZE // 4), "effnet_vit": (24, SIZE // 4), "efficientnet_b0": (24, SIZE // 4),
                  "efficientnet_lite0": (24, SIZE // 4), "efficientnet_lite0_mid": (24, SIZE // 4),
                  "efficientnet_lite0_stats": (24, SIZE // 4),
                  "resnet_se": (128, SIZE // 2)}


def _build(name: str, seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    return create_model(name, init="random")


def _batch(n: int = 2, size: int = SIZE) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    pixels = torch.rand(n, 3, size, size, generator=generator)
    labels = torch.arange(n) % 2
    return pixels, labels


def _loss(model: Detector, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    """Training-mode loss (batch statistics) with the same dropout masks every time."""
    torch.manual_seed(123)
    with torch.no_grad():
        return F.cross_entropy(model(pixels), labels).item()


def test_the_new_architectures_are_registered():
    assert {"convnext_tiny", "resnet_se", "effnet_vit", "efficientnet_b0", "efficientnet_lite0"} <= set(ARCHITECTURES)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_forward_gives_two_logits_per_image(name):
    model = _build(name).eval()
    with torch.no_grad():
        logits = model(_batch(3)[0])
    assert logits.shape == (3, 2)
    assert torch.isfinite(logits).all()
    assert not torch.allclose(logits[0], logits[1])  # the output depends on the image


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_create_model_random(name):
    spec = model_spec(name)
    model = _build(name, seed=0)
    assert isinstance(model, Detector)
    assert torch.allclose(model.mean.flatten(), torch.tensor(spec.mean))
    assert torch.allclose(model.std.flatten(), torch.tensor(spec.std))
    assert model.shallow_layer == spec.shallow_layer
    # Random means random: another seed gives other weights.
    other = _build(name, seed=1)
    first = next(iter(model.backbone.state_dict()))
    assert not torch.equal(model.backbone.state_dict()[first], other.backbone.state_dict()[first])


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_adamw_trains_every_parameter_and_lowers_the_loss(name):
    model = _build(name).train()
    pixels, labels = _batch()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    initial = _loss(model, pixels, labels)
    for step in range(3):
        optimizer.zero_grad(set_to_none=True)
        F.cross_entropy(model(pixels), labels).backward()
        if step == 0:
            dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
            assert not dead, f"parameters without gradient: {dead[:5]}"
        optimizer.step()
        if step == 0:
            unchanged = [n for n, p in model.named_parameters() if torch.equal(p, before[n])]
            assert not unchanged, f"parameters one AdamW step left unchanged: {unchanged[:5]}"
    final = _loss(model, pixels, labels)
    assert np.isfinite(initial) and final < initial, (initial, final)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_gradreg_step_on_the_shallow_layer(name):
    model = _build(name).train()
    pixels, labels = _batch()
    shallow = model.shallow_module()
    captured = []
    handle = shallow.register_forward_hook(lambda module, inputs, output: captured.append(output.shape))
    with torch.no_grad():
        model(pixels)
    handle.remove()
    assert len(captured) == 1 and len(captured[0]) == 4 and captured[0][0] == len(pixels), captured
    if name in SHALLOW_SHAPES:  # an early, high-resolution map: where gradient regularisation belongs
        channels, side = SHALLOW_SHAPES[name]
        assert tuple(captured[0][1:]) == (channels, side, side)

    method = create_method("gradreg")
    assert method.r == 0.05
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2)
    metrics = method.step(model, pixels, labels, optimizer)
    assert method.last_delta_norm == pytest.approx(0.05, abs=1e-4)
    assert method.last_statistics_gradient_norm > 0
    assert np.isfinite(metrics["loss"]) and np.isfinite(metrics["perturbed_loss"])
    assert not shallow._forward_hooks  # the hook exists only during the step
    assert any(not torch.equal(p, before[n]) for n, p in model.named_parameters())


# Our models must trace without TracerWarnings (a shape turned into a Python constant would
# break the exported graph); torch's own MultiheadAttention shape checks raise harmless ones.
@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning:torch.nn.functional")
@pytest.mark.filterwarnings("error::torch.jit.TracerWarning")
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_onnx_export_matches_pytorch_with_dynamic_batch(name, tmp_path):
    model = _build(name).eval()
    path = tmp_path / f"{name}.onnx"
    export_onnx(model, SIZE, path)
    assert max_logit_difference(model, path, SIZE) <= MAX_LOGIT_DIFFERENCE == 1e-4

    # Exported with batch 2; a batch of 3 must run and agree too.
    pixels = _batch(3)[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(None, {session.get_inputs()[0].name: pixels.numpy()})[0]
    with torch.no_grad():
        expected = model(pixels).numpy()
    assert actual.shape == (3, 2)
    assert np.abs(actual - expected).max() <= 1e-4


# --------------------------------------------------------------------------------------------
# Architecture specifics


def test_resnet_se_has_no_imagenet_weights():
    assert model_spec("resnet_se").imagenet is False
    with pytest.raises(InitError, match="resnet_se"):
        create_model("resnet_se", init="imagenet")


def test_resnet_se_structure_and_parameter_count():
    model = _build("resnet_se")
    backbone = model.backbone
    assert sum(p.numel() for p in model.parameters()) == 11_240_626  # the count its docstring states
    for stage, width in (("stage1", 128), ("stage2", 256), ("stage3", 512)):
        blocks = backbone.get_submodule(stage)
        assert len(blocks) == 2
        assert blocks[0].conv1.stride == (2, 2) and blocks[1].conv1.stride == (1, 1)
        assert isinstance(blocks[0].shortcut[0], torch.nn.Conv2d) and blocks[0].shortcut[0].kernel_size == (1, 1)
        assert isinstance(blocks[1].shortcut, torch.nn.Identity)
        for block in blocks:
            assert block.se.reduce.out_channels == width // 16
    dropouts = [m.p for m in backbone.head if isinstance(m, torch.nn.Dropout)]
    assert dropouts == [0.4, 0.3]
    assert model.shallow_module() is backbone.stage1


@pytest.mark.parametrize("size", [32, 45, 96])
def test_resnet_se_any_input_size_from_32(size):
    model = _build("resnet_se").eval()
    with torch.no_grad():
        assert model(torch.rand(2, 3, size, size)).shape == (2, 2)


def test_effnet_vit_position_embedding_resizes_to_the_grid():
    model = _build("effnet_vit").eval()
    vit = model.backbone
    # At 224 px the grid is the stored 7x7 one, used exactly.
    assert torch.equal(vit.position_embedding((7, 7)), vit.pos_embed)
    resized = vit.position_embedding((2, 3))
    assert resized.shape == (1, 6, vit.pos_embed.shape[-1])
    with torch.no_grad():
        for size in (224, 96):
            assert model(torch.rand(1, 3, size, size)).shape == (1, 2)


def test_effnet_vit_classifies_from_the_cls_token():
    """Changing only the CLS token changes the logits: the head reads it."""
    model = _build("effnet_vit").eval()
    pixels = _batch(2)[0]
    with torch.no_grad():
        before = model(pixels)
        model.backbone.cls_token.add_(1.0)
        after = model(pixels)
    assert not torch.allclose(before, after)
