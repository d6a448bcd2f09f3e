"""Training augmentation for what real uploads do to a face: the `uploads` recipe.

On top of the `standard` recipe's flip, rotation and colour jitter it adds small shifts and
scales (face boxes wobble between detectors and frames), then a chain of degradations applied
in the order a sharing pipeline applies them: downscale-upscale (resized uploads), blur,
sensor noise, and finally lossy re-encoding by JPEG or H.264 (one frame through libx264, as
`trainer eval`'s h264 corruption). Each fires with its own probability, so most crops get one
or two, some none. Random draws come from torch's generator, which DataLoader seeds per worker
(numpy's global generator would repeat the same draws in every worker).

`uploads-no-h264` is the same recipe with the H.264 step left out (its 15 % of crops get no
re-encoding), for machines without PyAV (the lent GPU machine: its wheel does not fit what can be
carried there).
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torchvision.transforms import v2

from trainer.data.corruptions import h264, jpeg

# (probability, parameter range) per degradation
DOWNSCALE = (0.2, (0.35, 0.9))  # factor of each side
BLUR = (0.15, (0.3, 1.5))  # Gaussian sigma in pixels
NOISE = (0.15, (0.004, 0.03))  # sigma in [0, 1] pixel units
JPEG = (0.3, (30, 95))  # quality
H264 = (0.15, (20, 40))  # CRF


def _uniform(low: float, high: float) -> float:
    return low + (high - low) * torch.rand(()).item()


def _fires(probability: float) -> bool:
    return torch.rand(()).item() < probability


def degrade(image: np.ndarray, with_h264: bool = True) -> np.ndarray:
    """One random upload degradation chain on an RGB uint8 (H, W, 3) image."""
    h, w = image.shape[:2]
    if _fires(DOWNSCALE[0]):
        factor = _uniform(*DOWNSCALE[1])
        small = cv2.resize(image, (max(8, round(w * factor)), max(8, round(h * factor))), interpolation=cv2.INTER_AREA)
        image = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)
    if _fires(BLUR[0]):
        sigma = _uniform(*BLUR[1])
        image = cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    if _fires(NOISE[0]):
        sigma = _uniform(*NOISE[1])
        noise = torch.randn(image.shape).numpy() * sigma * 255.0
        image = np.clip(image.astype(np.float32) + noise, 0, 255).round().astype(np.uint8)
    draw = torch.rand(()).item()
    if draw < JPEG[0]:
        image = jpeg(image[None], quality=round(_uniform(*JPEG[1])))[0]
    elif with_h264 and draw < JPEG[0] + H264[0]:
        image = h264(image[None], crf=round(_uniform(*H264[1])))[0]
    return np.ascontiguousarray(image)


def uploads_transform(size: int, with_h264: bool = True) -> v2.Compose:
    """RGB uint8 array -> float tensor (3, size, size) in [0, 1], augmented as uploads are."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((size, size), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.RandomAffine(degrees=8, translate=(0.04, 0.04), scale=(0.93, 1.07))], p=0.5),
        v2.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.2, hue=0.03),
        v2.Lambda(lambda tensor: torch.from_numpy(degrade(tensor.permute(1, 2, 0).numpy(), with_h264)).permute(2, 0, 1)),
        v2.ToDtype(torch.float32, scale=True),
    ])
