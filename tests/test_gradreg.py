"""Gradient regularisation (Guan et al., TIFS 2024) does what the paper says, not ERM in disguise."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.methods import create_method
from trainer.methods.gradreg import StatisticsPerturbation
from trainer.models import Detector


def tiny_detector(seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    backbone = nn.Sequential()
    backbone.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()))
    backbone.add_module("shallow", nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))
    backbone.add_module("deep", nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2)))
    return Detector(backbone, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), shallow_layer="shallow")


@pytest.fixture()
def batch():
    generator = torch.Generator().manual_seed(1)
    return torch.rand(6, 3, 16, 16, generator=generator), torch.tensor([0, 1, 0, 1, 1, 0])


def grads(model: nn.Module) -> list[torch.Tensor]:
    return [p.grad.detach().clone() for p in model.parameters()]


def test_perturbation_has_norm_r_and_statistics_gradient_is_not_zero(batch):
    model = tiny_detector()
    method = create_method("gradreg", r=0.05)
    method.step(model, *batch, torch.optim.SGD(model.parameters(), lr=0.01))
    assert method.last_delta_norm == pytest.approx(0.05, rel=1e-4)
    # The re-implementation bug (μ, σ detached after the forward) makes this exactly zero.
    assert method.last_statistics_gradient_norm > 1e-6


def test_first_pass_is_exactly_the_plain_forward(batch):
    model = tiny_detector()
    plain = model(batch[0])
    hook = StatisticsPerturbation()
    handle = model.shallow_module().register_forward_hook(hook)
    hooked = model(batch[0])
    handle.remove()
    assert torch.allclose(plain, hooked, atol=1e-5)
    # ... and its parameter gradient is ERM's.
    erm_model, hooked_model = tiny_detector(), tiny_detector()
    F.cross_entropy(erm_model(batch[0]), batch[1]).backward()
    handle = hooked_model.shallow_module().register_forward_hook(StatisticsPerturbation())
    F.cross_entropy(hooked_model(batch[0]), batch[1]).backward()
    handle.remove()
    for a, b in zip(grads(erm_model), grads(hooked_model)):
        assert torch.allclose(a, b, atol=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_final_gradient_mixes_the_two_passes(batch, alpha):
    pixels, labels = batch
    model = tiny_detector()
    reference = copy.deepcopy(model)

    # g1 and the statistics gradient from a pass with the hook, by hand.
    hook = StatisticsPerturbation()
    handle = reference.shallow_module().register_forward_hook(hook)
    F.cross_entropy(reference(pixels), labels).backward()
    g1 = grads(reference)
    gm, gs = hook.delta_mu.grad, hook.delta_sigma.grad
    norm = torch.sqrt(gm.pow(2).sum() + gs.pow(2).sum())
    reference.zero_grad()
    hook.injected = (0.05 * gm / norm, 0.05 * gs / norm)
    F.cross_entropy(reference(pixels), labels).backward()
    handle.remove()
    g2 = grads(reference)
    expected = [(1 - alpha) * a + alpha * b for a, b in zip(g1, g2)]

    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves .grad to inspect
    create_method("gradreg", r=0.05, alpha=alpha).step(model, pixels, labels, optimizer)
    for got, want in zip(grads(model), expected):
        assert torch.allclose(got, want, atol=1e-6)
    if 0 < alpha:
        assert any(not torch.allclose(a, b, atol=1e-6) for a, b in zip(g1, g2)), "the perturbation changed nothing"


def test_alpha_zero_takes_erm_step(batch):
    erm_model, gradreg_model = tiny_detector(), tiny_detector()
    create_method("erm").step(erm_model, *batch, torch.optim.SGD(erm_model.parameters(), lr=0.1))
    create_method("gradreg", alpha=0.0).step(gradreg_model, *batch, torch.optim.SGD(gradreg_model.parameters(), lr=0.1))
    for a, b in zip(erm_model.parameters(), gradreg_model.parameters()):
        assert torch.allclose(a, b, atol=1e-6)


def test_no_hook_is_left_behind(batch):
    model = tiny_detector()
    create_method("gradreg").step(model, *batch, torch.optim.SGD(model.parameters(), lr=0.1))
    assert not model.shallow_module()._forward_hooks


def test_options_are_checked():
    with pytest.raises(ValueError):
        create_method("gradreg", alpha=1.5)
    with pytest.raises(TypeError):
        create_method("gradreg", radius=0.1)


def test_perturbed_pass_leaves_batch_norm_running_statistics_alone(batch):
    # The tiny detector with a batch norm after the shallow layer, where the perturbation acts.
    def with_norm() -> Detector:
        model = tiny_detector()
        model.backbone.deep.insert(1, nn.BatchNorm2d(16))
        return model

    stepped, once = with_norm(), with_norm()
    create_method("gradreg", r=0.5).step(stepped.train(), *batch, torch.optim.SGD(stepped.parameters(), lr=0.0))
    once.train()(batch[0])  # one clean forward: what the statistics should have seen
    norm, expected = stepped.backbone.deep[1], once.backbone.deep[1]
    assert torch.equal(norm.running_mean, expected.running_mean) and torch.equal(norm.running_var, expected.running_var)
    assert int(norm.num_batches_tracked) == 1 and norm.momentum == expected.momentum
