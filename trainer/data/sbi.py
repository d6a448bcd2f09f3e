"""Self-Blended Images (Shiohara & Yamasaki, "Detecting Deepfakes with Self-Blended Images",
CVPR 2022): fakes synthesised from real faces alone.

A face is blended with a slightly altered copy of itself: the *source* is the same face with its
colour and quality jittered and shifted/rescaled by a few per cent, the *target* is the original,
and the mask is a deformed, blurred hull of the face. The result carries the generic traces of
face swapping (blending boundary, colour and frequency mismatch, small misalignment) without any
identity change, so a detector trained on it cannot latch on to one generator's artefacts.

The paper's mask is the hull of 81 dlib landmarks; the crops here carry MTCNN's five (eyes, nose,
mouth corners), so the hull is extended with points above the eyes, below the mouth and beyond the
eyes/mouth corners to cover the face. Without landmarks the mask is an ellipse from the face box,
and without a box the central region of the crop (a `crop_face` crop is centred on the face).

Landmarks for `trainer prepare` crops live in a sidecar `landmarks.json` next to the crops
({split}/{class}/landmarks.json: crop file name -> 5x2 list, crop pixel coordinates).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from trainer.data.datasets import Sample, read_rgb

BLEND_RATIOS = (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)  # the paper's choice: full blends half the time
LANDMARKS_FILE = "landmarks.json"
CENTRAL_FRACTION = 1 / 1.3  # without landmarks or box: the face fills this much of a crop (margin 1.3)


@dataclass(frozen=True)
class BlendParts:
    """What one self-blend is made of: blended = target*(1 - ratio*mask) + source*ratio*mask."""

    source: np.ndarray  # float32 HxWx3 in [0, 255]: the jittered, shifted copy of the face
    mask: np.ndarray  # float32 HxW in [0, 1]
    ratio: float  # one of BLEND_RATIOS


# --------------------------------------------------------------------------------------------
# Face geometry


def _face_geometry(shape: tuple[int, int], landmarks: np.ndarray | None, box) -> tuple[np.ndarray, float]:
    """Face centre (x, y) and size in pixels, from the box, else the landmarks, else the crop."""
    height, width = shape
    if box is not None:
        x1, y1, x2, y2 = (float(v) for v in box)
        return np.array([(x1 + x2) / 2, (y1 + y2) / 2]), max(x2 - x1, y2 - y1, 4.0)
    if landmarks is not None:
        eye_l, eye_r, _, mouth_l, mouth_r = landmarks
        eyes, mouth = (eye_l + eye_r) / 2, (mouth_l + mouth_r) / 2
        size = max(2.2 * np.linalg.norm(eye_r - eye_l), 2.6 * np.linalg.norm(mouth - eyes), 4.0)
        return (eyes + mouth) / 2, float(size)
    return np.array([width / 2, height / 2]), min(height, width) * CENTRAL_FRACTION


def _landmark_hull(shape: tuple[int, int], landmarks: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The convex hull of the five landmarks, extended to forehead, chin and cheeks, filled with 1."""
    eye_l, eye_r, nose, mouth_l, mouth_r = landmarks
    eyes, mouth = (eye_l + eye_r) / 2, (mouth_l + mouth_r) / 2
    down = mouth - eyes  # eyes -> mouth
    across = eye_r - eye_l
    d_eyes = np.linalg.norm(across)
    across = across / d_eyes if d_eyes > 1e-6 else np.array([1.0, 0.0])
    up_k, down_k = rng.uniform(0.5, 0.9), rng.uniform(0.6, 1.0)
    side_k = rng.uniform(0.3, 0.6) * d_eyes
    points = np.array([
        eye_l, eye_r, nose, mouth_l, mouth_r,
        eye_l - up_k * down, eye_r - up_k * down,  # forehead
        mouth_l + down_k * down, mouth_r + down_k * down,  # chin
        eye_l - side_k * across, eye_r + side_k * across,  # temples / cheeks
        mouth_l - 0.8 * side_k * across, mouth_r + 0.8 * side_k * across,  # jaw
    ])
    mask = np.zeros(shape, np.float32)
    hull = cv2.convexHull(np.round(points).astype(np.int32))
    cv2.fillConvexPoly(mask, hull, 1.0)
    return mask


def _ellipse(shape: tuple[int, int], centre: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(shape, np.float32)
    axes = (max(1, int(size * rng.uniform(0.36, 0.46))), max(1, int(size * rng.uniform(0.42, 0.52))))
    cv2.ellipse(mask, (int(round(centre[0])), int(round(centre[1]))), axes, 0, 0, 360, 1.0, -1)
    return mask


def _elastic(mask: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    """Warp the mask by a random smooth displacement field (a coarse random grid, upsampled)."""
    height, width = mask.shape
    cells = int(rng.integers(3, 7))
    amplitude = size * rng.uniform(0.02, 0.06)
    field = rng.uniform(-1.0, 1.0, size=(2, cells, cells)).astype(np.float32) * amplitude
    dx = cv2.resize(field[0], (width, height), interpolation=cv2.INTER_CUBIC)
    dy = cv2.resize(field[1], (width, height), interpolation=cv2.INTER_CUBIC)
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    return cv2.remap(mask, xs + dx, ys + dy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)


def _odd(value: float) -> int:
    return max(3, int(value) | 1)


def blend_mask(shape: tuple[int, int], landmarks: np.ndarray | None, box, rng: np.random.Generator) -> np.ndarray:
    """The blending mask (float32 HxW in [0, 1], never empty): landmark hull, else box ellipse,
    else the crop's central ellipse; elastically deformed, then Gaussian-blurred."""
    centre, size = _face_geometry(shape, landmarks, box)
    mask = _landmark_hull(shape, landmarks, rng) if landmarks is not None else _ellipse(shape, centre, size, rng)
    if mask.max() <= 0:  # landmarks off the image or degenerate: fall back to the central region
        centre, size = _face_geometry(shape, None, None)
        mask = _ellipse(shape, centre, size, rng)
    warped = _elastic(mask, size, rng)
    if warped.max() > 0:
        mask = warped
    mask = cv2.GaussianBlur(mask, (_odd(size * rng.uniform(0.05, 0.15)),) * 2, 0)
    # Blur once more after eroding the soft edge, as the paper does, so the transition sits
    # inside the hull rather than spilling far outside it.
    mask[mask < rng.uniform(0.3, 0.9)] = 0
    mask = cv2.GaussianBlur(mask, (_odd(size * rng.uniform(0.05, 0.2)),) * 2, 0)
    peak = mask.max()
    if peak <= 0:  # a sliver the erosion removed entirely: keep the unblurred shape
        mask = (warped if warped.max() > 0 else _ellipse(shape, centre, size, rng)).astype(np.float32)
        peak = mask.max()
    mask = mask / peak
    mask[mask < 1e-3] = 0.0  # no invisible fringe: outside the mask means untouched
    return np.clip(mask, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------------------------
# The source: colour, quality and geometry jitter


def _colour_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    pixels = image.astype(np.float32)
    pixels = pixels * rng.uniform(0.9, 1.1, size=3) + rng.uniform(-10, 10, size=3)  # per channel
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.85, 1.15) + mean + rng.uniform(-15, 15)  # contrast, brightness
    hsv = cv2.cvtColor(np.clip(pixels, 0, 255).round().astype(np.uint8), cv2.COLOR_RGB2HSV).astype(np.float32)
    hsv[..., 0] = np.mod(hsv[..., 0] + rng.uniform(-5, 5), 180)  # hue (OpenCV: 0..180)
    hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.85, 1.15), 0, 255)  # saturation
    return cv2.cvtColor(hsv.round().astype(np.uint8), cv2.COLOR_HSV2RGB)


def _quality_jitter(image: np.ndarray, size: float, rng: np.random.Generator) -> np.ndarray:
    choice = int(rng.integers(3))
    if choice == 0:  # JPEG re-encode
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]),
                                   [cv2.IMWRITE_JPEG_QUALITY, int(rng.integers(30, 96))])
        return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1] if ok else image
    sigma = rng.uniform(0.4, 1.2) * max(1.0, size / 128)
    blurred = cv2.GaussianBlur(image, (0, 0), sigma)
    if choice == 1:  # blur
        return blurred
    amount = rng.uniform(0.3, 1.0)  # sharpen (unsharp mask)
    return np.clip(image.astype(np.float32) * (1 + amount) - blurred.astype(np.float32) * amount, 0, 255).round().astype(np.uint8)


def blend_source(image: np.ndarray, landmarks: np.ndarray | None, box, rng: np.random.Generator) -> np.ndarray:
    """The face with colour and quality jitter, scaled by 0.95-1.05 about its centre and shifted by
    up to 4% of its size (float32 HxWx3)."""
    centre, size = _face_geometry(image.shape[:2], landmarks, box)
    source = _quality_jitter(_colour_jitter(image, rng), size, rng)
    warp = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), 0.0, float(rng.uniform(0.95, 1.05)))
    warp[:, 2] += rng.uniform(-0.04, 0.04, size=2) * size
    source = cv2.warpAffine(source, warp, (image.shape[1], image.shape[0]), flags=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT)
    return source.astype(np.float32)


# --------------------------------------------------------------------------------------------
# The blend


def _check(image: np.ndarray, landmarks) -> np.ndarray | None:
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"self_blend needs an HxWx3 uint8 image, not {image.dtype} {image.shape}")
    if landmarks is None:
        return None
    landmarks = np.asarray(landmarks, dtype=np.float64)
    if landmarks.shape != (5, 2):
        raise ValueError(f"landmarks must be 5x2 (eyes, nose, mouth corners), not {landmarks.shape}")
    return landmarks


def self_blend_parts(image: np.ndarray, landmarks, box, rng: np.random.Generator) -> BlendParts:
    """Draw a self-blend's source, mask and ratio (what `self_blend` combines)."""
    landmarks = _check(image, landmarks)
    source = blend_source(image, landmarks, box, rng)
    mask = blend_mask(image.shape[:2], landmarks, box, rng)
    ratio = float(rng.choice(BLEND_RATIOS))
    return BlendParts(source=source, mask=mask, ratio=ratio)


def compose(target: np.ndarray, parts: BlendParts) -> np.ndarray:
    """target*(1 - ratio*mask) + source*ratio*mask, rounded to uint8 (mask 0: target unchanged)."""
    alpha = (parts.mask * parts.ratio)[..., None]
    blended = target.astype(np.float32) * (1 - alpha) + parts.source * alpha
    return np.clip(blended, 0, 255).round().astype(np.uint8)


def self_blend(image: np.ndarray, landmarks, box, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A self-blended fake of `image` (uint8 HxWx3) and its mask (float32 HxW in [0, 1]).

    `landmarks`: MTCNN's five points (5x2, image pixels) or None; `box`: (x1, y1, x2, y2) or None.
    Pixels where the mask is 0 are the original's, bit for bit. Deterministic for a given `rng` state.
    """
    parts = self_blend_parts(image, landmarks, box, rng)
    return compose(image, parts), parts.mask


# --------------------------------------------------------------------------------------------
# Landmarks sidecar and the on-the-fly dataset


def load_landmarks(split_dir: Path) -> dict[str, np.ndarray]:
    """Crop file name -> (5, 2) landmarks, from `landmarks.json` in `split_dir` and in its class
    folders (`trainer prepare` writes {split}/{class}/landmarks.json); {} when there is none."""
    split_dir = Path(split_dir)
    found: dict[str, np.ndarray] = {}
    for path in [split_dir / LANDMARKS_FILE, *sorted(split_dir.glob(f"*/{LANDMARKS_FILE}"))]:
        if not path.is_file():
            continue
        try:
            entries = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: unreadable landmarks file ({exc})") from None
        for name, points in entries.items():
            points = np.asarray(points, dtype=np.float64)
            if points.shape == (5, 2):
                found[name] = points
    return found


class SelfBlendedFakes(Dataset):
    """One self-blended fake per sample (meant for the real training crops), made on the fly:
    (transform(blended), 1). The blend is drawn from (seed, epoch, index), so an epoch is
    reproducible and each epoch differs; call `set_epoch(n)` before each epoch (worker processes
    get the new value when the DataLoader is re-created or its iterator restarts)."""

    def __init__(self, samples: Sequence[Sample], transform: Callable,
                 landmarks: dict[str, np.ndarray] | None = None, seed: int = 0):
        self.samples = list(samples)
        self.transform = transform
        self.landmarks = landmarks or {}
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def blend(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The (blended uint8 image, mask) for `index` at the current epoch."""
        sample = self.samples[index]
        image = read_rgb(sample.path)
        rng = np.random.default_rng([self.seed % 2**32, self.epoch % 2**32, index])
        return self_blend(image, self.landmarks.get(sample.path.name), None, rng)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        blended, _ = self.blend(index)
        return self.transform(blended), 1
