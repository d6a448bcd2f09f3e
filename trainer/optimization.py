"""What training updates and how: frozen backbone modules, the optimizer and the learning-rate
schedule (a linear warm-up, then cosine or constant)."""

from __future__ import annotations

import math
import types

import torch
from torch import nn

from trainer.config import FitConfig, RunError
from trainer.models import Detector


def _eval_mode_only(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def freeze_modules(model: Detector, paths: list[str]) -> int:
    """Fix the parameters of these backbone modules and keep them in eval mode (batch norm uses
    its running statistics, drop-path is off) whatever `model.train()` asks; return how many
    parameters stay trainable."""
    for path in paths:
        try:
            module = model.backbone.get_submodule(path)
        except AttributeError:
            raise RunError(f"--freeze {path}: the backbone has no module {path!r}") from None
        module.requires_grad_(False)
        # An instance attribute wins over nn.Module.train, which calls child.train(mode) recursively.
        module.train = types.MethodType(_eval_mode_only, module)
        module.eval()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def create_optimizer(config: FitConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    raise RunError(f"unknown optimizer {config.optimizer!r}: use adamw or sgd")


def create_schedule(config: FitConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Per step: a linear warm-up over warmup_epochs (at most a fifth of the run), then cosine
    decay to 0 or constant."""
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total // 5)
    if config.schedule not in ("cosine", "constant"):
        raise RunError(f"unknown schedule {config.schedule!r}: use cosine or constant")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
