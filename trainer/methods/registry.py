"""The training-method registry. A method owns one optimisation step on a batch, so methods
that need several forward/backward passes (gradient regularisation, adversarial training)
fit the same training loop as plain ERM.

Adding a method: subclass `TrainingMethod` in a new module, decorate it with
`@register_method("name")`, and add the module's line to METHODS in
`trainer/methods/__init__.py`.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn


class TrainingMethod:
    """Base class. Options come from `trainer fit --option key=value` (or the config file's
    `options` table) as keyword arguments of `__init__`; unknown ones are an error."""

    name: str = ""
    # FitConfig fields this method changes when the user leaves them unset, e.g.
    # {"optimizer": "sgd", "lr": 1e-3}.
    defaults: dict[str, Any] = {}

    def __init__(self, **options: Any):
        if options:
            raise TypeError(f"method {self.name!r} takes no option(s) {', '.join(sorted(options))}")

    def setup(self, model: nn.Module, device: torch.device) -> None:
        """Called once before training (build auxiliary networks, register hooks...)."""

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        """Called once after setup() (and after a resumed state is loaded) when training runs in
        several processes: `wrap(module)` returns `module` in DistributedDataParallel. A method
        that trains a network beside the detector runs that network's training forward through
        the wrapped module, so its gradients are averaged over processes as the detector's are.

        In several processes `step` gets the detector wrapped in DDP: its training forward and
        backward go through it (the backward all-reduces the gradients); attacks, which take
        input gradients only, go through `trainer.distributed.unwrap(model)`."""

    def step(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> dict[str, float]:
        """Run one optimisation step on (pixels in [0, 1], labels); return scalars to log,
        at least 'loss' and 'accuracy' (of the logits the step trained on)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """State to checkpoint and resume (tensors and plain values only: loaded with weights_only)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def artifacts(self) -> dict[str, dict]:
        """Extra networks to save beside the run's checkpoints: {file stem: state dict}."""
        return {}


_REGISTRY: dict[str, type[TrainingMethod]] = {}


def register_method(name: str):
    def decorator(cls: type[TrainingMethod]) -> type[TrainingMethod]:
        if name in _REGISTRY:
            raise ValueError(f"training method {name!r} is registered twice")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def list_methods() -> list[str]:
    return sorted(_REGISTRY)


def method_class(name: str) -> type[TrainingMethod]:
    if name not in _REGISTRY:
        raise KeyError(f"unknown training method {name!r}; known: {', '.join(list_methods())}")
    return _REGISTRY[name]


def create_method(name: str, **options: Any) -> TrainingMethod:
    return method_class(name)(**options)
