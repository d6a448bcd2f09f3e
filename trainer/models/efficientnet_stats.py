"""EfficientNet-Lite0 cut after its fourth block (`blocks.3`: stride 16, 80 channels), with a
head on the spatial mean and standard deviation of that feature map: mean ‖ std (160) →
BatchNorm (no affine) → one linear layer.

Why: the channel statistics of middle layers carry the texture and colour mismatches that
face swapping leaves, and the standard deviation keeps how uneven they are across the face,
which a mean alone averages away. On FaceForensics++ a logistic-regression probe on these
frozen ImageNet features, paired with the SBI member, scored frame AUC 0.735 out-of-fold over
72 videos against 0.705 for `efficientnet_lite0_mid`'s features (docs/model_selection.py; the
model card of that day, `git show 62bf13c:exports/default/MODEL_CARD.md`). Trained as a member it
did not keep that edge on the validation videos (0.750 against 0.835 paired; the card's table), so
it is a candidate, not in the default bundle. The BatchNorm standardises the 160 statistics as the probe's
StandardScaler did; its running statistics make it a fixed affine map at inference.
"""

from __future__ import annotations

import timm
import torch
from torch import nn

from trainer.models.efficientnet import LITE0_PYPI
from trainer.models.efficientnet_mid import cut_lite0, load_lite0_pypi_truncated
from trainer.models.registry import register_model

KEPT_BLOCKS = 4
CHANNELS = 80  # blocks.3's output channels in efficientnet_lite0


class MeanStdPool(nn.Module):
    """(N, C, h, w) → (N, 2C): per-channel spatial mean, then standard deviation."""

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        flat = features.flatten(2)
        mean = flat.mean(2)
        # sqrt of a clamped variance: std's gradient is infinite where a channel is constant.
        variance = (flat - mean.unsqueeze(2)).square().mean(2)
        return torch.cat([mean, variance.clamp_min(1e-6).sqrt()], 1)


class Standardize(nn.BatchNorm1d):
    """BatchNorm1d without affine parameters whose inference is written as plain arithmetic: the
    TorchScript ONNX exporter cannot export batch_norm after the concatenation above (it loses
    the channel count)."""

    def __init__(self, features: int):
        super().__init__(features, affine=False)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        if self.training:
            return super().forward(pooled)
        return (pooled - self.running_mean) / torch.sqrt(self.running_var + self.eps)


@register_model("efficientnet_lite0_stats", shallow_layer="blocks.1", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                default_init=LITE0_PYPI, inits={LITE0_PYPI: load_lite0_pypi_truncated})
def efficientnet_lite0_stats(imagenet: bool = False) -> nn.Module:
    model = cut_lite0(timm.create_model("efficientnet_lite0", pretrained=imagenet, num_classes=2), KEPT_BLOCKS, CHANNELS)
    model.head_hidden_size = 2 * CHANNELS
    model.global_pool = nn.Sequential(MeanStdPool(), Standardize(2 * CHANNELS))
    model.classifier = nn.Linear(2 * CHANNELS, 2)
    return model
