"""ConvNeXt-Tiny (timm `convnext_tiny`, 27.8 M parameters with the 2-class head). Shallow part:
the stem and the first stage (`stages.0`, stride 4, 96 channels), the low-level texture
features that gradient regularisation perturbs. timm's LayerNorm2d, GELU and layer scale
export with the legacy TorchScript ONNX exporter (opset 17) as they are."""

from __future__ import annotations

import timm
from torch import nn

from trainer.models.registry import register_model


@register_model("convnext_tiny", shallow_layer="stages.0")
def convnext_tiny(imagenet: bool = False) -> nn.Module:
    return timm.create_model("convnext_tiny", pretrained=imagenet, num_classes=2)
