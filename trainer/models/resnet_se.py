"""ResNet-SE: the ensemble seed's small residual network with squeeze-and-excitation, trained
from scratch (there are no ImageNet weights for it).

    stem    conv3x3(3→64, stride 1) + BN + ReLU
    stage1  2 SE basic blocks, 128 ch, the first one stride 2 with a 1x1 conv + BN shortcut
    stage2  2 SE basic blocks, 256 ch, idem
    stage3  2 SE basic blocks, 512 ch, idem
    head    global average pooling → dropout 0.4 → Linear(512, 256) → ReLU → dropout 0.3
            → Linear(256, 2)

SE blocks use reduction 16. Parameter count: 11,240,626 (BN running statistics excluded;
stem 1,856, stage1 529,936, stage2 2,116,640, stage3 8,460,352, head 131,842), not the
"about 2 M" the seed's description suggested: the two 3x3 convolutions per block at widths
128/256/512 alone hold 10.8 M (stage3's 512-wide blocks 8.3 M). Built as described anyway.

Shallow part: `stage1` (stride 2, 128 channels). Adaptive pooling makes any input size >= 32
work (the feature map after stage3 is ceil(size / 8) pixels wide).
"""

from __future__ import annotations

import torch
from torch import nn

from trainer.models.registry import register_model

SE_REDUCTION = 16


class SqueezeExcitation(nn.Module):
    """Channel gating: global average → FC(C, C/r) → ReLU → FC(C/r, C) → sigmoid → x * gate."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, channels // reduction, kernel_size=1)
        self.act = nn.ReLU(inplace=True)
        self.expand = nn.Conv2d(channels // reduction, channels, kernel_size=1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(self.expand(self.act(self.reduce(self.pool(x)))))


class SEBasicBlock(nn.Module):
    """conv3x3 + BN + ReLU → conv3x3 + BN → SE, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SqueezeExcitation(out_channels)
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


def _stage(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(SEBasicBlock(in_channels, out_channels, stride=2),
                         SEBasicBlock(out_channels, out_channels))


class ResNetSE(nn.Module):
    def __init__(self, num_classes: int = 2):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 64, 3, padding=1, bias=False), nn.BatchNorm2d(64),
                                  nn.ReLU(inplace=True))
        self.stage1 = _stage(64, 128)
        self.stage2 = _stage(128, 256)
        self.stage3 = _stage(256, 512)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Sequential(nn.Dropout(0.4), nn.Linear(512, 256), nn.ReLU(inplace=True),
                                  nn.Dropout(0.3), nn.Linear(256, num_classes))
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.stage3(self.stage2(self.stage1(self.stem(x))))

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        return self.head(torch.flatten(self.pool(features), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


@register_model("resnet_se", shallow_layer="stage1", imagenet=False)
def resnet_se(imagenet: bool = False) -> nn.Module:
    if imagenet:
        raise ValueError("resnet_se has no ImageNet weights (it is trained from scratch)")
    return ResNetSE(num_classes=2)
