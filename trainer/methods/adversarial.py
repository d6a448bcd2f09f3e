"""What the adversarial-training methods (fgsm-rs, pgd-at, trades) share: option checks, the
subset of a batch that is attacked, and the method's own seeded generator, checkpointed so a
resumed run draws the same random starts and subsets."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.distributed import unwrap
from trainer.methods.erm import accuracy
from trainer.methods.registry import TrainingMethod

DEFAULT_EPS = 4 / 255


def checked_eps(method: str, eps: Any) -> float:
    value = float(eps)
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{method} needs 0 < eps <= 1 (pixels in [0, 1]), got {eps!r}")
    return value


def checked_fraction(method: str, fraction: Any) -> float:
    value = float(fraction)
    if not math.isfinite(value) or not 0.0 < value <= 1.0:
        raise ValueError(f"{method} needs 0 < adv_fraction <= 1, got {fraction!r}")
    return value


def checked_steps(method: str, steps: Any) -> int:
    if isinstance(steps, bool) or int(steps) != float(steps) or int(steps) < 1:
        raise ValueError(f"{method} needs an integer steps >= 1, got {steps!r}")
    return int(steps)


class SeededAdversarialMethod(TrainingMethod):
    """Base of the methods that draw random starts and attacked subsets from their own generator."""

    def __init__(self, adv_fraction: float = 1.0, seed: int = 0):
        self.adv_fraction = checked_fraction(self.name, adv_fraction)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def attacked(self, n: int) -> torch.Tensor:
        """Indices of the ceil(adv_fraction · n) samples to attack, drawn at random (all when 1):
        a fraction below 1 trains on a mixed clean/adversarial batch and costs that fraction of
        the attack's passes."""
        count = max(1, math.ceil(self.adv_fraction * n))
        if count >= n:
            return torch.arange(n)
        return torch.randperm(n, generator=self.generator)[:count].sort().values

    def uniform(self, like: torch.Tensor) -> torch.Tensor:
        """U(-1, 1) noise shaped like `like`, from the method's generator (CPU, then moved)."""
        return (2.0 * torch.rand(like.shape, generator=self.generator, dtype=like.dtype) - 1.0).to(like.device)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())


class AdversarialExamplesTraining(SeededAdversarialMethod):
    """Training on adversarial examples (fgsm-rs, pgd-at): the attacked samples of the batch are
    replaced by `perturb`'s examples, then one ERM step (train mode) on that batch."""

    def perturb(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def step(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        chosen = self.attacked(len(labels)).to(pixels.device)
        batch = pixels.detach().clone()
        batch[chosen] = self.perturb(unwrap(model), pixels[chosen], labels[chosen])  # this rank's own share
        optimizer.zero_grad(set_to_none=True)
        logits = model(batch)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "accuracy": accuracy(logits, labels),
                "adversarial_accuracy": accuracy(logits[chosen], labels[chosen])}
