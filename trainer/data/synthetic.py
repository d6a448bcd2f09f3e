"""Data the project makes itself, from scikit-image's public-domain astronaut portrait (NASA):
a tiny face-crop dataset (for tests and smoke runs) and sample media for the demo.

The "fakes" are self-blended: a colour-shifted, slightly rescaled copy of the face blended back
through a blurred elliptical mask, so they carry a real blending boundary. One identity and
one photo cannot teach a detector anything about real deepfakes; this is smoke-test data.
"""

from __future__ import annotations

from pathlib import Path

import av
import cv2
import numpy as np
from PIL import Image
from skimage import data

from forensic.faces import FaceDetector, crop_face
from trainer.data.corruptions import write_h264
from trainer.data.sbi import BLEND_RATIOS


def astronaut() -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """The astronaut photo (RGB, 512x512) and its face box, found by MTCNN."""
    image = data.astronaut()
    faces = FaceDetector().detect([image])[0]
    if not faces:
        raise RuntimeError("MTCNN found no face in scikit-image's astronaut")
    return image, faces[0].box


def self_blend(image: np.ndarray, box, rng: np.random.Generator, ratio: float | None = None) -> np.ndarray:
    """Blend a colour-shifted, rescaled copy of the face back onto the image through a soft mask."""
    x1, y1, x2, y2 = box
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    gain = rng.uniform(0.85, 1.15, size=3)
    source = np.clip(image.astype(np.float32) * gain + rng.uniform(-12, 12, size=3), 0, 255)
    scale = rng.uniform(1.02, 1.08)
    warp = cv2.getRotationMatrix2D((cx, cy), 0.0, scale)
    warp[:, 2] += rng.uniform(-3, 3, size=2)
    source = cv2.warpAffine(source, warp, (image.shape[1], image.shape[0]), borderMode=cv2.BORDER_REFLECT)
    mask = np.zeros(image.shape[:2], np.float32)
    axes = (int((x2 - x1) * rng.uniform(0.38, 0.46)), int((y2 - y1) * rng.uniform(0.42, 0.5)))
    cv2.ellipse(mask, (int(cx), int(cy)), axes, 0, 0, 360, 1.0, -1)
    blur = int(max(axes) * 0.4) | 1
    mask = cv2.GaussianBlur(mask, (blur, blur), 0)[..., None]
    ratio = float(rng.choice(BLEND_RATIOS)) if ratio is None else ratio
    blended = image * (1 - mask * ratio) + source * mask * ratio
    return np.clip(blended, 0, 255).round().astype(np.uint8)


def _jittered_box(box, rng: np.random.Generator):
    x1, y1, x2, y2 = box
    w, h = x2 - x1, y2 - y1
    dx, dy = rng.uniform(-0.08, 0.08, size=2) * (w, h)
    s = rng.uniform(0.9, 1.1)
    cx, cy = (x1 + x2) / 2 + dx, (y1 + y2) / 2 + dy
    return (cx - w * s / 2, cy - h * s / 2, cx + w * s / 2, cy + h * s / 2)


def _jpeg_roundtrip(image: np.ndarray, quality: int) -> np.ndarray:
    ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, quality])
    return cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1]


def make_face_dataset(root: Path, per_class: dict[str, int] | None = None, size: int = 128,
                      margin: float = 1.3, seed: int = 0) -> dict[str, dict[str, int]]:
    """Write DIR/{train,validation,test}/{real,fake}/*.png crops; return the counts written."""
    per_class = per_class or {"train": 24, "validation": 8, "test": 8}
    rng = np.random.default_rng(seed)
    image, box = astronaut()
    counts: dict[str, dict[str, int]] = {}
    for split, n in per_class.items():
        counts[split] = {}
        for label in ("real", "fake"):
            folder = Path(root) / split / label
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                source = self_blend(image, box, rng) if label == "fake" else image
                crop = crop_face(source, _jittered_box(box, rng), margin, size)
                if rng.random() < 0.5:
                    crop = crop[:, ::-1]
                if rng.random() < 0.5:  # compression in both classes, so it is not the cue
                    crop = _jpeg_roundtrip(crop, int(rng.integers(50, 95)))
                Image.fromarray(np.ascontiguousarray(crop)).save(folder / f"astronaut_{i:03d}_0.png")
            counts[split][label] = n
    return counts


def write_video(path: Path, frames: list[np.ndarray], fps: int = 10) -> None:
    """Encode RGB frames as H.264 (PyAV's bundled libx264 at its defaults)."""
    with av.open(str(path), mode="w") as container:
        write_h264(container, frames, frames[0].shape[1], frames[0].shape[0], fps, {})


def panning_frames(image: np.ndarray, count: int = 20, width: int = 448, height: int = 336) -> list[np.ndarray]:
    """A camera pan across the image (the face stays in view)."""
    max_x, max_y = image.shape[1] - width, image.shape[0] - height
    return [np.ascontiguousarray(image[int(max_y * t / 2): int(max_y * t / 2) + height, int(max_x * t): int(max_x * t) + width])
            for t in np.linspace(0, 1, count)]


def make_sample_media(folder: Path, seed: int = 0) -> list[Path]:
    """Sample inputs for the demo: real and blended photos and clips, a photo without a face,
    and a corrupt file."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    image, box = astronaut()
    blended = self_blend(image, box, rng, ratio=1.0)
    written = {
        "astronaut.png": lambda p: Image.fromarray(image).save(p),
        "astronaut_blended.jpg": lambda p: Image.fromarray(blended).save(p, quality=95),
        "astronaut_pan.mp4": lambda p: write_video(p, panning_frames(image)),
        "astronaut_blended_pan.mp4": lambda p: write_video(p, panning_frames(blended)),
        "coffee_no_face.jpg": lambda p: Image.fromarray(data.coffee()).save(p, quality=95),
        "corrupt.jpg": lambda p: p.write_bytes(b"\xff\xd8\xff\xe0 this is not really a JPEG" + rng.bytes(256)),
    }
    for name, write in written.items():
        write(folder / name)
    return [folder / name for name in written]
