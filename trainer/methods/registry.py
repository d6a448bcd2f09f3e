"""The training-method registry. A method owns one optimisation step on a batch, so methods
that need several forward/backward passes (gradient regularisation, adversarial training)
fit the same training loop as plain ERM."""

from __future__ import annotations

from typing import Protocol

import torch
from torch import nn


class TrainingMethod(Protocol):
    name: str

    def step(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Run one optimisation step; return scalars to log (at least 'loss')."""
        ...


_REGISTRY: dict[str, type] = {}


def register_method(name: str):
    def decorator(cls: type) -> type:
        if name in _REGISTRY:
            raise ValueError(f"training method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def create_method(name: str, **options) -> TrainingMethod:
    if name not in _REGISTRY:
        raise KeyError(f"unknown training method {name!r}; known: {', '.join(list_methods())}")
    return _REGISTRY[name](**options)
