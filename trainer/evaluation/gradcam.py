"""Grad-CAM (Selvaraju et al., ICCV 2017) of a PyTorch detector, for `trainer eval`'s heatmaps.

Written here with torch hooks instead of taken from the `grad-cam` package (pytorch-grad-cam):
that package requires opencv-python, whose `cv2` collides with the opencv-python-headless this
project installs (the two wheels overwrite each other's module), and Grad-CAM itself is a few
lines.

Target layer (`feature_layer`): the last module, in the order forward hooks fire, whose output
is a feature map (N, C, h, w) with more than one spatial position, i.e. the final convolutional
features before global pooling (EfficientNet's conv_head + bn2, ConvNeXt's last stage,
ResNet-SE's stage3, EffNet-ViT's token projection). A parent module's hook fires after its
children's, so a block wins over the layers inside it. At inputs so small that the final map is
1 x 1 it is the last map that still has spatial extent.

Target score: the fake-vs-real logit margin, so the map shows evidence for "fake" as the
bundles' class activation maps do. The map is Σ_k α_k A_k with α_k the spatial mean of
∂ margin / ∂ A_k, kept signed: drawing it with forensic.heatmaps.overlay keeps only the
positive part (Grad-CAM's ReLU). For a global-average-pool + linear head at the final
features, this is the class activation map divided by h · w.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


def _is_spatial_map(output) -> bool:
    return isinstance(output, torch.Tensor) and output.dim() == 4 and output.shape[2] * output.shape[3] > 1


def feature_layer(model: nn.Module, pixels: torch.Tensor) -> str:
    """The name of the last module whose output is a spatial feature map (one probe forward
    pass on the first crop)."""
    fired: list[str] = []
    handles = [module.register_forward_hook(lambda _module, _inputs, output, name=name:
                                            fired.append(name) if _is_spatial_map(output) else None)
               for name, module in model.named_modules() if name]
    try:
        with torch.no_grad():
            model(pixels[:1])
    finally:
        for handle in handles:
            handle.remove()
    if not fired:
        raise ValueError("no module of the model outputs a spatial feature map (N, C, h, w)")
    return fired[-1]


def grad_cam(model: nn.Module, pixels: torch.Tensor, layer: str) -> np.ndarray:
    """(N, h, w) signed Grad-CAM maps of the fake-vs-real logit margin at `layer`. The model
    should be in eval mode (each crop then depends on itself only)."""
    module = model.get_submodule(layer)
    kept: list[torch.Tensor] = []

    def keep(_module, _inputs, output):
        # A copy is what flows on, so a later in-place op (ReLU(inplace=True)) cannot overwrite
        # the activations that are differentiated.
        copy = output.clone()
        kept.append(copy)
        return copy

    handle = module.register_forward_hook(keep)
    try:
        with torch.enable_grad():
            logits = model(pixels.detach()).float()
            margin = (logits[:, 1] - logits[:, 0]).sum()
            (gradient,) = torch.autograd.grad(margin, kept[-1])
    finally:
        handle.remove()
    weights = gradient.mean(dim=(2, 3), keepdim=True)
    return (weights * kept[-1].detach()).sum(1).double().cpu().numpy()
