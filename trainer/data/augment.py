"""Training augmentation for what real uploads do to a face: the `uploads` recipe.

On top of the `standard` recipe's flip, rotation and colour jitter it adds small shifts and
scales (face boxes wobble between detectors and frames), then a chain of degradations applied
in the order a sharing pipeline applies them: downscale-upscale (resized uploads), blur,
sensor noise, and finally lossy re-encoding by JPEG or H.264 (one frame through libx264, as
`trainer eval`'s h264 corruption). Each fires with its own probability, so most crops get one
or two, some none. Random draws come from torch's generator, which DataLoader seeds per worker
(numpy's global generator would repeat the same draws in every worker).

Three recipes (RECIPES, `--augment NAME`) differ only in the re-encoding step:
`uploads-no-h264` leaves H.264 out (its 15 % of crops get no re-encoding), for machines without
PyAV (the lent GPU machine: its wheel does not fit what can be carried there); `uploads-h264`
sends a third of the crops through H.264 up to CRF 45, so that about 17 % see CRF 35 or worse
against `uploads`' 4 % (the model card's largest compression drop is at CRF 35).
"""

from __future__ import annotations

from typing import NamedTuple

import cv2
import numpy as np
import torch
from torchvision.transforms import v2

from trainer.data.corruptions import h264, jpeg

class UploadRecipe(NamedTuple):
    """(probability, parameter range) per degradation; a crop is re-encoded by JPEG or H.264, not both."""

    downscale: tuple[float, tuple[float, float]] = (0.2, (0.35, 0.9))  # factor of each side
    blur: tuple[float, tuple[float, float]] = (0.15, (0.3, 1.5))  # Gaussian sigma in pixels
    noise: tuple[float, tuple[float, float]] = (0.15, (0.004, 0.03))  # sigma in [0, 1] pixel units
    jpeg: tuple[float, tuple[float, float]] = (0.3, (30, 95))  # quality
    h264: tuple[float, tuple[float, float]] = (0.15, (20, 40))  # CRF


RECIPES = {
    "uploads": UploadRecipe(),
    "uploads-no-h264": UploadRecipe(h264=(0.0, (20, 40))),
    "uploads-h264": UploadRecipe(jpeg=(0.25, (30, 95)), h264=(0.35, (23, 45))),
}


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _fires(probability: float) -> bool:
    return torch.rand(()).item() < probability


def degrade(image: np.ndarray, recipe: UploadRecipe = RECIPES["uploads"]) -> np.ndarray:
    """One random upload degradation chain on an RGB uint8 (H, W, 3) image."""
    h, w = image.shape[:2]
    if _fires(recipe.downscale[0]):
        factor = _uniform(*recipe.downscale[1])
        small = cv2.resize(image, (max(8, round(w * factor)), max(8, round(h * factor))), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if _fires(recipe.blur[0]):
        sigma = _uniform(*recipe.blur[1])
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    if _fires(recipe.noise[0]):
        sigma = _uniform(*recipe.noise[1])
        noise = torch.randn(image.shape).numpy() * sigma * 255.0
        image = np.clip(image.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)
    draw = torch.rand(()).item()
    if draw < recipe.jpeg[0]:
        image = jpeg(image[None], quality=round(_uniform(*recipe.jpeg[1])))[0]
    elif draw < recipe.jpeg[0] + recipe.h264[0]:
        image = h264(image[None], crf=round(_uniform(*recipe.h264[1])))[0]
    return np.ascontiguousarray(image)


def uploads_transform(size: int, recipe: str = "uploads") -> v2.Compose:
    """RGB uint8 array -> float tensor (3, size, size) in [0, 1], augmented as uploads are (a RECIPES name)."""
    degradations = RECIPES[recipe]
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((size, size), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.RandomAffine(degrees=8, translate=(0.04, 0.04), scale=(0.93, 1.07))], p=0.5),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03),
        v2.Lambda(lambda tensor: torch.from_numpy(degrade(tensor.permute(1, 2, 0).numpy(), degradations)).permute(2, 0, 1)),
        v2.ToDtype(torch.float32, scale=True),
    ])
