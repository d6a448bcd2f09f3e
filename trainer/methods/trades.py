"""TRADES: Zhang et al., "Theoretically Principled Trade-off between Robustness and Accuracy",
ICML 2019.

    loss = CE(f(x), y) + beta · KL(softmax f(x) ‖ softmax f(x'))

where x' maximises the KL term inside the L∞ ball of radius eps: it starts at
x + 0.001 · N(0, 1) (the paper's start) and takes `steps` projected signed-gradient steps of
step_size (default 2.5 · eps / steps), made in eval mode. The clean and adversarial halves go
through the model in one forward (train mode), so batch-norm sees both. beta trades clean
accuracy for robustness (the paper: 6). The KL term covers the attacked samples only
(adv_fraction), CE every sample. Cost: about 1 + steps · adv_fraction passes, plus the second
half of the training forward.

Options: eps (default 4/255), steps (default 3), step_size, beta (default 6), adv_fraction
(default 1), seed.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from trainer.attacks.white_box import eval_mode
from trainer.distributed import unwrap
from trainer.methods.adversarial import DEFAULT_EPS, SeededAdversarialMethod, checked_eps, checked_steps
from trainer.methods.erm import accuracy
from trainer.methods.registry import register_method


def kl_to_clean(clean_logits: torch.Tensor, adversarial_logits: torch.Tensor) -> torch.Tensor:
    """KL(p_clean ‖ p_adversarial), averaged over the batch."""
    return F.kl_div(F.log_softmax(adversarial_logits, dim=1), F.softmax(clean_logits, dim=1), reduction="batchmean")


@register_method("trades")
class TRADES(SeededAdversarialMethod):
    defaults = {"lr": 1e-4}

    def __init__(self, eps: float = DEFAULT_EPS, steps: int = 3, step_size: float | None = None, beta: float = 6.0,
                 adv_fraction: float = 1.0, seed: int = 0):
        super().__init__(adv_fraction, seed)
        self.eps = checked_eps(self.name, eps)
        self.steps = checked_steps(self.name, steps)
        self.step_size = 2.5 * self.eps / self.steps if step_size is None else checked_eps(self.name, step_size)
        self.beta = float(beta)
        if not math.isfinite(self.beta) or self.beta < 0:
            raise ValueError(f"trades needs beta >= 0, got {beta!r}")

    def perturb(self, model: nn.Module, pixels: torch.Tensor) -> torch.Tensor:
        x = pixels.detach()
        lower, upper = (x - self.eps).clamp(min=0.0), (x + self.eps).clamp(max=1.0)
        noise = torch.randn(x.shape, generator=self.generator, dtype=x.dtype).to(x.device)
        adv = torch.max(torch.min(x + 0.001 * noise, upper), lower)
        with eval_mode(model), torch.enable_grad():
            with torch.no_grad():
                clean = model(x)
            for _ in range(self.steps):
                adv.requires_grad_(True)
                (gradient,) = torch.autograd.grad(kl_to_clean(clean, model(adv)), adv)
                adv = torch.max(torch.min(adv.detach() + self.step_size * gradient.sign(), upper), lower)
        return adv.detach()

    def step(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        chosen = self.attacked(len(labels)).to(pixels.device)
        adversarial = self.perturb(unwrap(model), pixels[chosen])
        optimizer.zero_grad(set_to_none=True)
        logits = model(torch.cat([pixels.detach(), adversarial]))
        clean_logits, adversarial_logits = logits[: len(labels)], logits[len(labels):]
        natural = F.cross_entropy(clean_logits, labels)
        robust = kl_to_clean(clean_logits[chosen], adversarial_logits)
        loss = natural + self.beta * robust
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "accuracy": accuracy(clean_logits, labels),
                "adversarial_accuracy": accuracy(adversarial_logits, labels[chosen]), "kl": robust.item()}
