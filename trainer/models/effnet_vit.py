"""EfficientNet-ViT hybrid: timm efficientnet_b0 (the seed's backbone) as a convolutional
tokeniser, a small transformer encoder on its feature map, and a 2-class head on the CLS token.

    efficientnet_b0 forward_features   (N, 1280, H/32, W/32): the final feature map, after
                                        conv_head + BN + SiLU
    1x1 conv projection                 (N, 192, h, w)
    tokens + positional embedding       (N, h*w, 192); a learned 7x7 grid (224 / 32),
                                        bilinearly resized to (h, w)
    CLS token prepended                 (N, 1 + h*w, 192)
    TransformerEncoder                  2 pre-norm layers, 4 heads, MLP 768, GELU, dropout 0.1,
                                        batch_first
    LayerNorm → Linear(192, 2) on CLS

Why the final 1280-channel map (`forward_features`) rather than `features_only=True`: the
features_only wrapper stops at the last block (320 channels) and drops conv_head, so ImageNet
weights would not cover the whole CNN, and it returns a list of every stage's map; the
plain model with `num_classes=0` is one ordinary module path that exports to ONNX as it is.
The stride-32 grid keeps the token count small (49 at 224 px), so the transformer costs
little next to the CNN. Any input size works (the grid is ceil(size / 32)); sizes divisible
by 32 give whole patches.

Shallow part: `effnet.blocks.1` (stride 4, 24 channels), the same layer as efficientnet_b0.
No offline init: the EfficientNet part is b0, not lite0, so `lite0-pypi` does not apply;
`--init imagenet` loads timm's b0 weights into the CNN part when the hub is reachable.

Parameter count with the 2-class head: 5,153,790 (efficientnet_b0 without classifier
4,007,548; projection 245,952; CLS token + positional embeddings 9,792; encoder 889,728;
LayerNorm 384; head 386).
"""

from __future__ import annotations

import timm
import torch
import torch.nn.functional as F
from torch import nn

from trainer.models.registry import register_model

TOKEN_DIM = 192
GRID = 7  # positional-embedding grid: the 224 px input size / EfficientNet's stride 32
FEATURE_CHANNELS = 1280


class EffNetViT(nn.Module):
    def __init__(self, imagenet: bool = False, num_classes: int = 2, dim: int = TOKEN_DIM, depth: int = 2,
                 heads: int = 4, dropout: float = 0.1):
        super().__init__()
        self.effnet = timm.create_model("efficientnet_b0", pretrained=imagenet, num_classes=0)
        self.proj = nn.Conv2d(FEATURE_CHANNELS, dim, kernel_size=1)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, GRID * GRID, dim))
        layer = nn.TransformerEncoderLayer(dim, heads, dim_feedforward=4 * dim, dropout=dropout,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)
        for parameter in (self.cls_token, self.cls_pos_embed, self.pos_embed):
            nn.init.trunc_normal_(parameter, std=0.02)

    def position_embedding(self, size) -> torch.Tensor:
        """(1, h * w, dim): the learned 7x7 grid bilinearly resized to size = (h, w). Always
        resized, without a Python branch on the size: resizing 7x7 to 7x7 is exactly the identity
        (half-pixel sampling lands on the grid points), and the traced size exports as an ONNX
        Resize fed by Shape, with no tensor-to-int conversion in the trace."""
        grid = self.pos_embed.reshape(1, GRID, GRID, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=size, mode="bilinear", align_corners=False)
        return grid.flatten(2).transpose(1, 2)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """EfficientNet's final feature map (N, 1280, h, w): where Grad-CAM looks."""
        return self.effnet.forward_features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_head(self, feature_map: torch.Tensor) -> torch.Tensor:
        features = self.proj(feature_map)  # (N, dim, h, w)
        tokens = features.flatten(2).transpose(1, 2) + self.position_embedding(features.shape[-2:])
        cls = (self.cls_token + self.cls_pos_embed).expand(tokens.shape[0], -1, -1)
        tokens = self.encoder(torch.cat([cls, tokens], dim=1))
        return self.head(self.norm(tokens[:, 0]))


@register_model("effnet_vit", shallow_layer="effnet.blocks.1")
def effnet_vit(imagenet: bool = False) -> nn.Module:
    return EffNetViT(imagenet=imagenet)
