"""Gradient regularisation: Guan et al., "Improving Generalization of Deepfake Detectors by
Imposing Gradient Regularization", IEEE TIFS 19 (2024) 5345-5356.

The backbone's shallow feature map f (per sample, per channel) is written as
f = f_norm * (σ + δσ) + (μ + δμ) with δμ = δσ = 0 on the first pass: the value and the
parameter gradient are exactly ERM's, and ∂L/∂δμ, ∂L/∂δσ are the gradients with respect to
the feature statistics holding f_norm fixed (Eq. 6). (Taking μ, σ detached after the forward,
as some public re-implementations do, gives zero gradient and silently turns this into ERM.)
The perturbation Δ = r · ∇_(μ,σ) L / ‖∇_(μ,σ) L‖₂ (Eq. 9) is injected on a second pass (the
Perturbation Injection Module), and the step uses g = (1 − α)·g1 + α·g2 (Eq. 12). As in SAM
(whose ascent step this is, in feature-statistics space), ‖·‖ is taken over the whole batch, so
the per-sample perturbation shrinks as the batch grows: keep r and --batch-size together. The
perturbed pass leaves batch-norm running statistics alone (as SAM implementations do): they
must describe clean features. The hook exists only during training steps: inference and
export never see it.

In several processes (DDP, trainer/distributed.py) a step gives the same update as one process
on the global batch: the statistics gradient's norm is summed over processes (one scalar
all-reduce), and the two passes' parameter gradients are combined locally and all-reduced once
(see `step`).
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from trainer import distributed
from trainer.methods.erm import accuracy
from trainer.methods.registry import TrainingMethod, register_method

EPSILON = 1e-6


class StatisticsPerturbation:
    """Forward hook on the shallow layer: re-expresses its output through its channel statistics."""

    def __init__(self):
        self.delta_mu: torch.Tensor | None = None  # leaf tensors whose .grad is ∇ w.r.t. μ, σ
        self.delta_sigma: torch.Tensor | None = None
        self.injected: tuple[torch.Tensor, torch.Tensor] | None = None  # Δμ, Δσ for pass 2

    def __call__(self, module: nn.Module, inputs, feature: torch.Tensor) -> torch.Tensor:
        mu = feature.mean(dim=(2, 3), keepdim=True)
        sigma = (feature.var(dim=(2, 3), keepdim=True, unbiased=False) + EPSILON).sqrt()
        normalised = (feature - mu) / sigma
        if self.injected is not None:
            delta_mu, delta_sigma = self.injected
            return normalised * (sigma + delta_sigma) + (mu + delta_mu)
        self.delta_mu = torch.zeros_like(mu, requires_grad=True)
        self.delta_sigma = torch.zeros_like(sigma, requires_grad=True)
        return normalised * (sigma + self.delta_sigma) + (mu + self.delta_mu)


@contextmanager
def running_statistics_frozen(model: nn.Module):
    """Batch norm still normalises with the batch's statistics, but its running estimates are not updated."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    momenta = [m.momentum for m in norms]
    counts = [None if m.num_batches_tracked is None else m.num_batches_tracked.clone() for m in norms]
    for m in norms:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, momentum, count in zip(norms, momenta, counts):
            m.momentum = momentum
            if count is not None:
                m.num_batches_tracked.copy_(count)


@register_method("gradreg")
class GradientRegularization(TrainingMethod):
    defaults = {"optimizer": "sgd", "lr": 1e-3, "epochs": 10, "checkpoint_every": 2}

    def __init__(self, r: float = 0.05, alpha: float = 1.0):
        if r < 0 or not 0.0 <= alpha <= 1.0:
            raise ValueError("gradreg needs r >= 0 and 0 <= alpha <= 1")
        self.r, self.alpha = float(r), float(alpha)
        self.last_delta_norm = 0.0
        self.last_statistics_gradient_norm = 0.0

    @contextmanager
    def _hooked(self, model: nn.Module):
        perturbation = StatisticsPerturbation()
        handle = distributed.unwrap(model).shallow_module().register_forward_hook(perturbation)
        try:
            yield perturbation
        finally:
            handle.remove()

    def perturbation(self, grad_mu: torch.Tensor, grad_sigma: torch.Tensor,
                     model: nn.Module | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Δ = r · ∇ / ‖∇‖₂ over the whole batch's (μ, σ) gradient (Eq. 9). With `model` in DDP
        the batch is the global one: this process holds its share's rows of ∇."""
        world = distributed.world_size_of(model)
        if world == 1:
            norm = torch.sqrt(grad_mu.pow(2).sum() + grad_sigma.pow(2).sum())
        else:
            # This process's gradient is of its share's mean loss, W times the global mean's: scaled
            # to the global batch's, then the squared norm summed over processes.
            grad_mu, grad_sigma = grad_mu / world, grad_sigma / world
            norm = distributed.all_reduce_sum(grad_mu.pow(2).sum() + grad_sigma.pow(2).sum(), model).sqrt()
        self.last_statistics_gradient_norm = norm.item()
        scale = self.r / (norm + 1e-12)
        return grad_mu * scale, grad_sigma * scale

    def step(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> dict[str, float]:
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer.zero_grad(set_to_none=True)
        with self._hooked(model) as hook:
            # With DDP the first pass runs under no_sync: its parameter gradient g1 stays local in
            # .grad, the second backward adds α·g2 to (1 − α)·g1 and DDP all-reduces that sum
            # once. Averaging is linear, so the result is (1 − α)·ḡ1 + α·ḡ2, what all-reducing
            # each pass would give, for one all-reduce per step instead of two. (The statistics
            # gradient is per sample: only its norm is summed over processes, in perturbation().)
            # no_sync must cover the forward too, as DDP requires. A no-op for a plain module.
            with distributed.no_sync(model):
                logits = model(pixels)
                loss = F.cross_entropy(logits, labels)
                loss.backward()
            delta = self.perturbation(hook.delta_mu.grad, hook.delta_sigma.grad, model)
            self.last_delta_norm = torch.sqrt(delta[0].pow(2).sum() + delta[1].pow(2).sum()).item()

            for p in params:  # .grad = (1 − α)·g1, then the second backward adds α·g2
                if p.grad is not None:
                    p.grad.mul_(1.0 - self.alpha)
            hook.injected = delta
            with running_statistics_frozen(model):
                perturbed_loss = F.cross_entropy(model(pixels), labels)
            (self.alpha * perturbed_loss).backward()  # with DDP: all-reduces (1 − α)·g1 + α·g2
        optimizer.step()
        return {"loss": loss.item(), "perturbed_loss": perturbed_loss.item(), "accuracy": accuracy(logits, labels)}
