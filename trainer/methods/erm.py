"""ERM: plain empirical risk minimisation, the baseline every robust method is compared to."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from trainer.methods.registry import TrainingMethod, register_method


def accuracy(logits: torch.Tensor, labels: torch.Tensor) -> float:
    return (logits.argmax(1) == labels).float().mean().item()


@register_method("erm")
class ERM(TrainingMethod):
    def step(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> dict[str, float]:
        optimizer.zero_grad(set_to_none=True)
        logits = model(pixels)
        loss = F.cross_entropy(logits, labels)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "accuracy": accuracy(logits, labels)}
