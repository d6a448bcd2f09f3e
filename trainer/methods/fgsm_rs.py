"""FGSM from a random start ("fast adversarial training"): Wong, Rice and Kolter, "Fast is
better than free: revisiting adversarial training", ICLR 2020.

For the attacked samples: δ ~ U(−ε, ε), one signed-gradient step of size alpha (default
1.25 ε, the paper's choice) from x + δ, then projection onto the L∞ ball of radius ε and onto
[0, 1]. The random start is what keeps single-step training from the "catastrophic
overfitting" of plain FGSM training (fgsm-at), where the model learns to mask the one gradient
it is attacked along. Examples are made with the model in eval mode (batch-norm statistics of
clean data, as the other methods' attacks); the update is an ERM step (train mode) on the
batch with the attacked samples replaced. Cost: about 1 + adv_fraction forward/backward passes.

Options: eps (default 4/255), alpha (default 1.25 · eps), adv_fraction (default 1: every
sample), seed (of the method's generator: random starts and subsets).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.attacks.white_box import eval_mode, input_gradient
from trainer.methods.adversarial import DEFAULT_EPS, AdversarialExamplesTraining, checked_eps
from trainer.methods.registry import register_method


@register_method("fgsm-rs")
class FGSMRandomStart(AdversarialExamplesTraining):
    defaults = {"lr": 1e-4}

    def __init__(self, eps: float = DEFAULT_EPS, alpha: float | None = None, adv_fraction: float = 1.0, seed: int = 0):
        super().__init__(adv_fraction, seed)
        self.eps = checked_eps(self.name, eps)
        self.alpha = 1.25 * self.eps if alpha is None else checked_eps(self.name, alpha)

    def perturb(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach()
        lower, upper = (x - self.eps).clamp(min=0.0), (x + self.eps).clamp(max=1.0)
        start = torch.max(torch.min(x + self.eps * self.uniform(x), upper), lower)
        with eval_mode(model):
            gradient = input_gradient(model, start, labels)
        return torch.max(torch.min(start + self.alpha * gradient.sign(), upper), lower).detach()
