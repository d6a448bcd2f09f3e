"""FGSM adversarial fine-tuning (the ensemble seed's regime).

For each batch, with probability p the whole batch is replaced by FGSM examples
(`trainer.attacks.white_box.fgsm`, generated with the model in eval mode) at an eps drawn
uniformly from `eps_choices`; the step is then an ERM step on the batch it kept. Meant to fine-tune a trained
detector: `trainer fit --method fgsm-at --init RUN/best.pt`, hence the learning rate 10x below
ERM's AdamW 3e-4.

Options: p (default 0.3), eps_choices (default 0.02,0.03,0.05,0.08: a comma-separated string
or a single number), seed (default 0) of the method's own torch.Generator. Both draws (adversarial
or not, which eps) are made at every step, so the sequence of choices does not depend on p, and
the generator's state is checkpointed: a resumed run continues the same draws.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from trainer.attacks.white_box import fgsm
from trainer.distributed import unwrap
from trainer.methods.erm import accuracy
from trainer.methods.registry import TrainingMethod, register_method

EPS_CHOICES = (0.02, 0.03, 0.05, 0.08)


def parse_eps_choices(value: Any) -> tuple[float, ...]:
    if isinstance(value, str):
        items = [item for item in value.replace(";", ",").split(",") if item.strip()]
    elif isinstance(value, (int, float)):
        items = [value]
    else:
        items = list(value)
    choices = tuple(float(item) for item in items)
    if not choices or any(eps < 0 for eps in choices):
        raise ValueError(f"fgsm-at needs one or more eps_choices >= 0, got {value!r}")
    return choices


@register_method("fgsm-at")
class FGSMAdversarialTraining(TrainingMethod):
    defaults = {"lr": 3e-5, "epochs": 15}

    def __init__(self, p: float = 0.3, eps_choices: str | float | Sequence[float] = EPS_CHOICES, seed: int = 0):
        if not 0.0 <= float(p) <= 1.0:
            raise ValueError(f"fgsm-at needs 0 <= p <= 1, got {p}")
        self.p = float(p)
        self.eps_choices = parse_eps_choices(eps_choices)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)

    def draw(self) -> tuple[bool, float]:
        """Whether the next batch is adversarial, and its eps (two draws from the method's generator)."""
        adversarial = torch.rand((), generator=self.generator).item() < self.p
        index = int(torch.randint(len(self.eps_choices), (), generator=self.generator))
        return adversarial, self.eps_choices[index]

    def step(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> dict[str, float]:
        adversarial, eps = self.draw()
        if adversarial:
            pixels = fgsm(unwrap(model), pixels, labels, eps)  # eval mode inside, mode restored after
        optimizer.zero_grad(set_to_none=True)
        logits = model(pixels)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "accuracy": accuracy(logits, labels),
                "adversarial_fraction": float(adversarial), "eps": eps if adversarial else 0.0}

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state(), "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generator.set_state(state["generator"].cpu())
