"""PGD adversarial training: Madry et al., "Towards Deep Learning Models Resistant to
Adversarial Attacks", ICLR 2018.

For the attacked samples, `steps` projected signed-gradient steps
(`trainer.attacks.white_box.pgd`, step size 2.5 · eps / steps, uniform random start drawn from
the method's generator), made in eval mode; then an ERM step (train mode) on the batch with
those samples replaced. Cost: about 1 + steps · adv_fraction forward/backward passes, so few
steps on a CPU.

Options: eps (default 4/255), steps (default 3), step_size (default 2.5 · eps / steps),
adv_fraction (default 1), seed.
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.attacks.white_box import pgd
from trainer.methods.adversarial import DEFAULT_EPS, AdversarialExamplesTraining, checked_eps, checked_steps
from trainer.methods.registry import register_method


@register_method("pgd-at")
class PGDAdversarialTraining(AdversarialExamplesTraining):
    defaults = {"lr": 1e-4}

    def __init__(self, eps: float = DEFAULT_EPS, steps: int = 3, step_size: float | None = None,
                 adv_fraction: float = 1.0, seed: int = 0):
        super().__init__(adv_fraction, seed)
        self.eps = checked_eps(self.name, eps)
        self.steps = checked_steps(self.name, steps)
        self.step_size = 2.5 * self.eps / self.steps if step_size is None else checked_eps(self.name, step_size)

    def perturb(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return pgd(model, pixels, labels, self.eps, self.steps, step_size=self.step_size, random_start=True,
                   generator=self.generator)
