"""Heatmaps from class activation maps: where in a face crop the models saw evidence of "fake".

A model's CAM is its final feature map weighted by (w_fake − w_real): exact for global-pool +
linear heads, and its spatial mean is the fake-vs-real logit margin (minus a constant). Models'
maps are resized to the crop, combined with the ensemble's weights, and only the positive part
(evidence for "fake") is drawn, scaled to the largest absolute value so that a map of a face the
models find real stays faint.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from forensic.outputs import atomic_write


def combine(cams: dict[str, np.ndarray], weights: dict[str, float], size: int) -> np.ndarray:
    """Weighted mean of the models' (h, w) maps, each resized to (size, size)."""
    total = sum(weights[name] for name in cams)
    combined = np.zeros((size, size), np.float64)
    for name, cam in cams.items():
        resized = cv2.resize(cam.astype(np.float32), (size, size), interpolation=cv2.INTER_CUBIC)
        combined += weights[name] / total * resized
    return combined


def overlay(crop: np.ndarray, cam: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    """The crop with the positive part of `cam` drawn over it (JET colours, red = most fake)."""
    scale = float(np.abs(cam).max()) or 1.0
    heat = np.clip(cam / scale, 0.0, 1.0)
    colours = cv2.applyColorMap((heat * 255).astype(np.uint8), cv2.COLORMAP_JET)[..., ::-1]
    weight = (alpha * heat)[..., None]
    return np.clip(crop * (1 - weight) + colours * weight, 0, 255).astype(np.uint8)


def write_png(image: np.ndarray, path: Path) -> Path:
    return atomic_write(path, lambda handle: Image.fromarray(image).save(handle, format="PNG"))
