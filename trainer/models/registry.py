"""The architecture registry and its one factory, in the manner of timm.

An architecture is a function that builds a binary classifier taking normalised images,
decorated with `@register_model(name, mean=..., std=...)`; `create_model(name)` wraps it in a
`Detector` that takes pixels in [0, 1] (attacks and exports work in pixel space).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]  # build(pretrained: bool) -> nn.Module with 2 output logits
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    pretrained_source: str | None  # where offline ImageNet weights come from, or None


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(
    name: str,
    mean=IMAGENET_MEAN,
    std=IMAGENET_STD,
    input_size: int = 224,
    pretrained_source: str | None = None,
):
    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, build, tuple(mean), tuple(std), input_size, pretrained_source)
        return build

    return decorator


def list_models() -> list[str]:
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    if name not in _REGISTRY:
        raise KeyError(f"unknown architecture {name!r}; known: {', '.join(list_models())}")
    return _REGISTRY[name]


class Detector(nn.Module):
    """Normalisation + backbone: takes RGB pixels in [0, 1], returns (N, 2) logits [real, fake]."""

    def __init__(self, backbone: nn.Module, mean, std):
        super().__init__()
        self.backbone = backbone
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone((pixels - self.mean) / self.std)


def create_model(name: str, pretrained: bool | None = None) -> Detector:
    """Build architecture `name`. `pretrained=None` uses offline ImageNet weights when the
    architecture has some; `True` demands them; `False` starts from random weights."""
    spec = model_spec(name)
    if pretrained and spec.pretrained_source is None:
        raise ValueError(f"no offline pretrained weights are available for {name!r}")
    use_pretrained = spec.pretrained_source is not None if pretrained is None else pretrained
    return Detector(spec.build(pretrained=use_pretrained), spec.mean, spec.std)
