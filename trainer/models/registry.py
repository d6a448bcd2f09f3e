"""The architecture registry and its one factory, in the manner of timm.

An architecture is a function `build(imagenet: bool) -> nn.Module` returning a binary
classifier (2 logits) on normalised images, decorated with `@register_model(...)`, which says
its normalisation, input size, extra initialisations and which layer ends its "shallow" part
(where gradient regularisation perturbs feature statistics). `create_model(name, init=...)`
wraps it in a `Detector` that takes pixels in [0, 1] (attacks and exports work in pixel space).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class ModelSpec:
    name: str
    build: Callable[..., nn.Module]  # build(imagenet: bool) -> nn.Module with 2 output logits
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    input_size: int
    shallow_layer: str  # module path inside the backbone whose output is the shallow feature map
    default_init: str = "random"
    inits: dict[str, Callable[[nn.Module], str]] = field(default_factory=dict)  # extra named inits
    imagenet: bool = True  # whether build(imagenet=True) is possible (timm hub weights)
    # True when the backbone is a timm model whose head is global average pooling + one Linear:
    # then a class activation map (classifier weights · final features) is exact.
    cam: bool = False


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, *, shallow_layer: str, mean=IMAGENET_MEAN, std=IMAGENET_STD, input_size: int = 224,
                   default_init: str = "random", inits: dict | None = None, imagenet: bool = True,
                   cam: bool = False):
    def decorator(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"architecture {name!r} is registered twice")
        _REGISTRY[name] = ModelSpec(name, build, tuple(mean), tuple(std), input_size, shallow_layer,
                                    default_init, dict(inits or {}), imagenet, cam)
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

    def __init__(self, backbone: nn.Module, mean, std, shallow_layer: str):
        super().__init__()
        self.backbone = backbone
        self.shallow_layer = shallow_layer
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.backbone((pixels - self.mean) / self.std)

    def shallow_module(self) -> nn.Module:
        return self.backbone.get_submodule(self.shallow_layer)

    def features(self, pixels: torch.Tensor) -> torch.Tensor:
        """The backbone's final spatial feature map (N, C, h, w), where class activation maps live."""
        return self.backbone.forward_features((pixels - self.mean) / self.std)

    def head(self, features: torch.Tensor) -> torch.Tensor:
        """Logits from `features(pixels)`: `head(features(x))` is `forward(x)`."""
        return self.backbone.forward_head(features)


class DetectorWithCAM(nn.Module):
    """Logits plus the class activation map of the fake-vs-real margin, (N, h, w): the final
    feature map weighted by (w_fake − w_real). Its spatial mean plus (b_fake − b_real) is exactly
    logit_fake − logit_real, so positive regions are evidence for "fake"."""

    def __init__(self, detector: Detector):
        super().__init__()
        self.detector = detector
        get_classifier = getattr(detector.backbone, "get_classifier", None)
        if get_classifier is None or not isinstance(get_classifier(), nn.Linear):
            raise TypeError("class activation maps need a single Linear classifier")

    def forward(self, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        backbone = self.detector.backbone
        features = backbone.forward_features((pixels - self.detector.mean) / self.detector.std)
        logits = backbone.forward_head(features)
        weight = backbone.get_classifier().weight
        cam = torch.einsum("nchw,c->nhw", features, weight[1] - weight[0])
        return logits, cam


class InitError(Exception):
    """An initialisation that cannot be done, described in one line."""


def checkpoint_problem(exc: Exception) -> str:
    """A checkpoint's load error in a few words. torch's own message for a refused pickle advises
    loading with weights_only=False, which would run whatever code an untrusted file carries."""
    import pickle

    if isinstance(exc, pickle.UnpicklingError):
        return "UnpicklingError: it holds Python objects besides tensors; refused unread, since loading them could run code"
    return f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:200]}"


def _load_state_dict_file(model: Detector, path: Path) -> str:
    """A .pth/.pt (loaded with weights_only=True, never unpickled) or .safetensors state dict:
    of a whole Detector, of its backbone, or a `trainer fit` checkpoint (its 'model' entry)."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            # weights_only: a malicious pickle runs no code; it (or junk) fails here instead
            state = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(state, dict) and isinstance(state.get("model"), dict):
                state = state["model"]
    except Exception as exc:
        first = checkpoint_problem(exc)
        raise InitError(f"{path}: not a loadable state dict ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise InitError(f"{path}: not a state dict (a mapping of names to tensors)")
    target = model if any(k.startswith("backbone.") for k in state) else model.backbone
    try:
        target.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise InitError(f"{path}: does not fit this architecture ({first})") from None
    return f"file {path}"


def _small_linear_head(backbone: nn.Module) -> None:
    """timm initialises classifiers uniformly in ±1/sqrt(fan_out): ±0.71 for 2 classes, which on
    1280 pooled features gives initial logits in the tens and a loss of several nats. A new
    2-class head starts near zero instead (as torchvision and DeepfakeBench do)."""
    get_classifier = getattr(backbone, "get_classifier", None)
    classifier = get_classifier() if get_classifier else None
    if isinstance(classifier, nn.Linear):
        nn.init.normal_(classifier.weight, std=0.01)
        nn.init.zeros_(classifier.bias)


def create_model(name: str, init: str | None = None) -> Detector:
    """Build architecture `name` initialised by `init`: 'random'; 'imagenet' (timm's hub
    weights: fails fast when the hub is unreachable); a name the architecture registers
    (e.g. 'lite0-pypi'); or a path to a state dict. None: the architecture's default."""
    spec = model_spec(name)
    init = init or spec.default_init
    if init == "imagenet":
        if not spec.imagenet:
            raise InitError(f"{name} has no ImageNet weights (it is trained from scratch)")
        # Offline: fail in seconds, not after a minute of retries.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        try:
            backbone = spec.build(imagenet=True)
        except Exception as exc:  # huggingface_hub raises several types when offline
            raise InitError(f"--init imagenet: timm could not fetch {name}'s weights ({type(exc).__name__}); "
                            f"the hub is unreachable from here: use --init random, a registered init "
                            f"({', '.join(spec.inits) or 'none'}) or a state-dict file") from None
        _small_linear_head(backbone)
        return Detector(backbone, spec.mean, spec.std, spec.shallow_layer)
    backbone = spec.build(imagenet=False)
    _small_linear_head(backbone)
    model = Detector(backbone, spec.mean, spec.std, spec.shallow_layer)
    if init == "random":
        return model
    if init in spec.inits:
        spec.inits[init](model.backbone)
        return model
    path = Path(init)
    if path.is_file():
        _load_state_dict_file(model, path)
        return model
    raise InitError(f"unknown --init {init!r} for {name}: use random, imagenet, "
                    f"{', '.join(list(spec.inits) + ['a state-dict file'])}")
