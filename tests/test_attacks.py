"""White-box attacks (trainer.attacks), the fgsm-at and dual-attacker training methods and the
U-Net attacker, on a tiny conv detector at 32x32 (no mocks; a few seconds on 2 CPU cores)."""

from __future__ import annotations

import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from trainer.attacks.white_box import fgsm, pgd
from trainer.methods import create_method, method_class
from trainer.models.registry import Detector
from trainer.attacks.unet import UNetAttacker, high_frequency_energy, total_variation

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32


def tiny_detector(seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    backbone = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2),
    )
    return Detector(backbone, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), shallow_layer="2")


def make_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth 'real' images and 'fake' ones carrying a high-frequency pattern; values span
    the whole [0, 1] range so clamping at both ends is exercised."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=SIZE, mode="bilinear", align_corners=False)
    base = (base * 1.4 - 0.2).clamp(0, 1)
    labels = torch.arange(n) % 2
    pattern = (torch.rand(n, 1, SIZE, SIZE, generator=g) > 0.5).float() * 2 - 1
    pixels = (base + 0.05 * pattern * labels.view(-1, 1, 1, 1)).clamp(0, 1)
    return pixels, labels


def loss_of(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> float:
    was = model.training
    model.eval()
    with torch.no_grad():
        value = F.cross_entropy(model(pixels), labels).item()
    model.train(was)
    return value


@pytest.fixture(scope="module")
def trained() -> Detector:
    """The tiny detector after a brief ERM training on the synthetic task (mostly right)."""
    model = tiny_detector()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    erm = create_method("erm")
    model.train()
    for i in range(80):
        erm.step(model, *make_batch(32, seed=i), optimizer)
    model.eval()
    pixels, labels = make_batch(64, seed=1000)
    with torch.no_grad():
        assert (model(pixels).argmax(1) == labels).float().mean() >= 0.8
    return model


@pytest.fixture()
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    return make_batch(32, seed=1000)


@pytest.fixture()
def small_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """For the U-Net tests (the attacker is the costly part on CPU)."""
    return make_batch(8, seed=1000)


# ---------------------------------------------------------------------------------- attacks

@pytest.mark.parametrize("eps", [0.01, 0.03, 0.08])
def test_attacks_stay_in_eps_ball_and_image_range(trained, batch, eps):
    pixels, labels = batch
    for adv in (fgsm(trained, pixels, labels, eps), pgd(trained, pixels, labels, eps, steps=5),
                pgd(trained, pixels, labels, eps, steps=3, step_size=eps, random_start=False)):
        assert adv.shape == pixels.shape and adv.dtype == pixels.dtype
        assert (adv - pixels).abs().max().item() <= eps + 1e-6
        assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
        assert not adv.requires_grad and adv.grad_fn is None


def test_attacks_raise_the_loss_and_pgd_is_at_least_as_strong_as_fgsm(trained, batch):
    pixels, labels = batch
    clean = loss_of(trained, pixels, labels)
    for eps in (0.01, 0.03):
        fgsm_loss = loss_of(trained, fgsm(trained, pixels, labels, eps), labels)
        pgd_loss = loss_of(trained, pgd(trained, pixels, labels, eps, steps=10), labels)
        assert fgsm_loss > clean
        assert pgd_loss > clean
        assert pgd_loss >= fgsm_loss


def test_eps_zero_returns_the_input(trained, batch):
    pixels, labels = batch
    assert torch.equal(fgsm(trained, pixels, labels, 0.0), pixels)
    assert torch.equal(pgd(trained, pixels, labels, 0.0, steps=5), pixels)
    with pytest.raises(ValueError):
        fgsm(trained, pixels, labels, -0.1)


def test_pgd_random_start_is_seeded(trained, batch):
    pixels, labels = batch
    a = pgd(trained, pixels, labels, 0.03, steps=2)
    b = pgd(trained, pixels, labels, 0.03, steps=2)
    assert torch.equal(a, b)  # default: a fixed seed
    c = pgd(trained, pixels, labels, 0.03, steps=2, generator=torch.Generator().manual_seed(7))
    d = pgd(trained, pixels, labels, 0.03, steps=2, generator=torch.Generator().manual_seed(7))
    assert torch.equal(c, d) and not torch.equal(a, c)


def test_attacks_leave_gradients_modes_and_statistics_alone(batch):
    model = tiny_detector(seed=1)
    pixels, labels = batch
    params = list(model.parameters())
    marker = torch.full_like(params[0], 0.25)
    params[0].grad = marker.clone()  # an existing gradient must stay as it is; the others stay None
    batch_norm = model.backbone[1]
    running = (batch_norm.running_mean.clone(), batch_norm.running_var.clone(), batch_norm.num_batches_tracked.clone())

    for mode in ("train", "eval", "mixed"):
        model.train(mode != "eval")
        if mode == "mixed":
            batch_norm.eval()  # e.g. frozen batch-norm inside a training model
        before = {name: module.training for name, module in model.named_modules()}
        fgsm(model, pixels, labels, 0.03)
        pgd(model, pixels, labels, 0.03, steps=3)
        assert {name: module.training for name, module in model.named_modules()} == before

    assert torch.equal(params[0].grad, marker)
    assert all(p.grad is None for p in params[1:])
    # Generated in eval mode: batch-norm's running statistics did not move.
    assert torch.equal(batch_norm.running_mean, running[0]) and torch.equal(batch_norm.running_var, running[1])
    assert torch.equal(batch_norm.num_batches_tracked, running[2])


# ----------------------------------------------------------------------------------- fgsm-at

def roundtrip(state: dict) -> dict:
    """Through torch.save / torch.load(weights_only=True), as a checkpoint would go."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_fgsm_at_defaults_and_options():
    cls = method_class("fgsm-at")
    assert cls.defaults == {"lr": 3e-5, "epochs": 15}
    assert create_method("fgsm-at").eps_choices == (0.02, 0.03, 0.05, 0.08)
    assert create_method("fgsm-at", eps_choices="0.01,0.04").eps_choices == (0.01, 0.04)
    assert create_method("fgsm-at", eps_choices=0.05).eps_choices == (0.05,)
    with pytest.raises(ValueError):
        create_method("fgsm-at", p=1.5)
    with pytest.raises(TypeError):
        create_method("fgsm-at", nonsense=1)


def test_fgsm_at_with_p_1_makes_every_batch_adversarial(batch):
    model = tiny_detector()
    method = create_method("fgsm-at", p=1.0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(4):
        logs = method.step(model, *batch, optimizer)
        assert logs["adversarial_fraction"] == 1.0
        assert logs["eps"] in (0.02, 0.03, 0.05, 0.08)
        assert {"loss", "accuracy"} <= set(logs)
        assert model.training


def test_fgsm_at_adversarial_step_trains_on_the_fgsm_batch(batch):
    """One p=1 step equals an ERM step on fgsm(model, x, y, eps) for the eps it drew."""
    model = tiny_detector()
    reference = copy.deepcopy(model)
    method = create_method("fgsm-at", p=1.0, eps_choices="0.05")
    opt_a = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt_b = torch.optim.AdamW(reference.parameters(), lr=1e-3)
    model.train(), reference.train()
    method.step(model, *batch, opt_a)
    create_method("erm").step(reference, fgsm(reference, *batch, 0.05), batch[1], opt_b)
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


def test_fgsm_at_with_p_0_is_exactly_an_erm_step(batch):
    model = tiny_detector()
    reference = copy.deepcopy(model)
    opt_a = torch.optim.AdamW(model.parameters(), lr=1e-3)
    opt_b = torch.optim.AdamW(reference.parameters(), lr=1e-3)
    model.train(), reference.train()
    logs = create_method("fgsm-at", p=0.0).step(model, *batch, opt_a)
    erm_logs = create_method("erm").step(reference, *batch, opt_b)
    assert logs["adversarial_fraction"] == 0.0
    assert logs["loss"] == erm_logs["loss"] and logs["accuracy"] == erm_logs["accuracy"]
    for (name, a), b in zip(model.state_dict().items(), reference.state_dict().values()):
        assert torch.equal(a, b), name


def test_fgsm_at_state_dict_resumes_the_same_draws():
    method = create_method("fgsm-at", p=0.5, seed=3)
    for _ in range(5):
        method.draw()
    state = roundtrip(method.state_dict())
    expected = [method.draw() for _ in range(20)]
    assert len({eps for adversarial, eps in expected}) > 1 and len({adversarial for adversarial, _ in expected}) == 2

    resumed = create_method("fgsm-at", p=0.5, seed=99)
    resumed.load_state_dict(state)
    assert [resumed.draw() for _ in range(20)] == expected
    fresh = create_method("fgsm-at", p=0.5, seed=3)
    assert [fresh.draw() for _ in range(20)] != expected  # the state, not the seed, carried them on


# ----------------------------------------------------------------------------- dual-attacker

def test_unet_perturbation_is_bounded():
    torch.manual_seed(0)
    eps = 4 / 255
    unet = UNetAttacker(eps=eps)
    with torch.no_grad():
        unet.out.weight.mul_(1000.0)  # saturate tanh: the bound must still hold
        for size in (32, 30):  # odd sizes go through the up path too
            pixels = torch.rand(4, 3, size, size)
            delta = unet.perturbation(pixels)
            assert delta.shape == pixels.shape
            assert delta.abs().max().item() <= eps + 1e-7
            assert delta.abs().max().item() > 0.9 * eps
            adv = unet(pixels)
            assert adv.min().item() >= 0.0 and adv.max().item() <= 1.0
            assert (adv - pixels).abs().max().item() <= eps + 1e-6


def test_perturbation_penalties():
    constant = torch.full((2, 3, 16, 16), 0.01)
    assert total_variation(constant).item() == 0.0
    assert high_frequency_energy(constant).item() == pytest.approx(0.0, abs=1e-6)
    checkerboard = (torch.arange(16).view(-1, 1) + torch.arange(16).view(1, -1)) % 2 * 2.0 - 1.0
    checkerboard = checkerboard.expand(2, 3, 16, 16) * 0.01
    assert high_frequency_energy(checkerboard).item() == pytest.approx(1.0, abs=1e-6)
    assert total_variation(checkerboard).item() == pytest.approx(0.04)


def dual(model: nn.Module, **options):
    method = create_method("dual-attacker", **options)
    method.setup(model, torch.device("cpu"))
    return method


def test_dual_attacker_step_trains_detector_and_attacker(small_batch):
    model = tiny_detector()
    method = dual(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    detector_before = copy.deepcopy(model.state_dict())
    unet_before = copy.deepcopy(method.unet.state_dict())
    model.train()
    logs = method.step(model, *small_batch, optimizer)
    assert {"loss", "accuracy", "pgd_loss", "unet_loss", "attacker_objective"} <= set(logs)
    assert all(torch.isfinite(torch.tensor(value)) for value in logs.values())
    assert model.training
    assert any(not torch.equal(detector_before[k], v) for k, v in model.state_dict().items())
    assert any(not torch.equal(unet_before[k], v) for k, v in method.unet.state_dict().items())


def test_dual_attacker_objective_rises_against_a_frozen_detector(trained, small_batch):
    model = copy.deepcopy(trained)
    for p in model.parameters():
        p.requires_grad_(False)
    frozen = copy.deepcopy(model.state_dict())
    method = dual(model, unet_lr=1e-3)
    pixels, labels = small_batch

    def objective():
        with torch.no_grad():
            model.eval()
            value, cross_entropy = method.attacker_objective(model, pixels, labels)
        return value.item(), cross_entropy.item()

    start = objective()
    for _ in range(8):
        method.attacker_step(model, pixels, labels)
    end = objective()
    assert end[0] > start[0]
    assert end[1] > start[1]
    assert all(torch.equal(frozen[k], v) for k, v in model.state_dict().items())


def test_dual_attacker_state_dict_round_trip_and_resume(small_batch):
    pixels, labels = small_batch
    model = tiny_detector()
    method = dual(model, seed=5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    for _ in range(2):
        method.step(model, pixels, labels, optimizer)
    state = roundtrip(method.state_dict())
    assert set(state) >= {"unet", "unet_optimizer", "generator"}

    resumed_model = copy.deepcopy(model)
    resumed_optimizer = torch.optim.AdamW(resumed_model.parameters(), lr=1e-3)
    resumed_optimizer.load_state_dict(roundtrip(optimizer.state_dict()))  # a copy, not shared moments
    resumed = create_method("dual-attacker", seed=123)
    resumed.load_state_dict(state)  # before setup, as a loop may do; applied by setup
    resumed.setup(resumed_model, torch.device("cpu"))
    probe = make_batch(4, seed=77)[0]
    with torch.no_grad():
        assert torch.equal(method.unet(probe), resumed.unet(probe))

    # One more step on each goes on identically (U-Net, its Adam moments, the PGD draws).
    method.step(model, pixels, labels, optimizer)
    resumed.step(resumed_model, pixels, labels, resumed_optimizer)
    with torch.no_grad():
        assert torch.equal(method.unet(probe), resumed.unet(probe))
    for a, b in zip(model.state_dict().values(), resumed_model.state_dict().values()):
        assert torch.equal(a, b)

    again = dual(tiny_detector(), seed=123)  # load after setup works too
    again.load_state_dict(state)
    assert all(torch.equal(state["unet"][k], v) for k, v in again.unet.state_dict().items())


def test_dual_attacker_artifacts_and_options(small_batch):
    model = tiny_detector()
    method = dual(model)
    artifacts = method.artifacts()
    assert set(artifacts) == {"unet_attacker"}
    assert artifacts["unet_attacker"].keys() == method.unet.state_dict().keys()
    assert method.unet.eps == pytest.approx(4 / 255)
    assert (method.mix_clean, method.mix_pgd, method.mix_unet) == pytest.approx((0.4, 0.3, 0.3))
    with pytest.raises(ValueError):
        create_method("dual-attacker", mix_clean=-1)

    # mix_pgd = 0 skips the PGD examples; the loss is then the clean/U-Net mix only.
    no_pgd = dual(model, mix_pgd=0.0)
    logs = no_pgd.step(model, *small_batch, torch.optim.SGD(model.parameters(), lr=0.0))
    assert logs["pgd_loss"] != logs["pgd_loss"]  # NaN
    assert logs["loss"] == pytest.approx((0.4 * logs["clean_loss"] + 0.3 * logs["unet_loss"]) / 0.7, rel=1e-5)


def test_bisect_schedule_finds_the_smallest_flipping_epsilon_in_few_trials():
    from forensic.selftest import bisect_schedule

    for length in range(1, 9):
        schedule = [k / 255 for k in range(1, length + 1)]
        for first_flip in range(length + 1):  # the index of the first flip; length: none flips
            tried: list[float] = []

            def flips(epsilon: float) -> bool:
                tried.append(epsilon)
                return schedule.index(epsilon) >= first_flip

            found = bisect_schedule(schedule, flips)
            assert found == (schedule[first_flip] if first_flip < length else None)
            assert len(tried) == len(set(tried)) <= math.ceil(math.log2(length + 1))
