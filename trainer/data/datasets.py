"""Face-crop datasets in the seeds' folder layout: DIR/{train,validation,test}/{real,fake}/*.png|jpg."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset
from torchvision.transforms import v2

from forensic.faces import crop_face

SPLITS = ("train", "validation", "test")
CLASSES = ("real", "fake")  # label = index: real 0, fake 1 (the bundle's class_order)
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg"})


class DatasetError(Exception):
    """A malformed dataset folder, described in one line."""


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def list_split(root: Path, split: str) -> list[Sample]:
    """The split's samples, sorted; raises DatasetError for a missing split or class or an empty class."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise DatasetError(f"{split_dir}: missing split folder (expected {root}/{{{','.join(SPLITS)}}}/{{real,fake}}/)")
    samples: list[Sample] = []
    for label, name in enumerate(CLASSES):
        class_dir = split_dir / name
        if not class_dir.is_dir():
            raise DatasetError(f"{class_dir}: missing class folder '{name}'")
        files = sorted(p for p in class_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DatasetError(f"{class_dir}: no .png or .jpg images")
        samples.extend(Sample(p, label) for p in files)
    return samples


def verify_images(samples: list[Sample]) -> None:
    """Decode every file once, before hours of training depend on it (verify() alone misses
    truncated JPEGs)."""
    for sample in samples:
        try:
            with Image.open(sample.path) as image:
                image.load()
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DatasetError(f"{sample.path}: unreadable image ({exc})") from None


def class_counts(samples: list[Sample]) -> dict[str, int]:
    return {name: sum(1 for s in samples if s.label == label) for label, name in enumerate(CLASSES)}


def read_rgb(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.array(image.convert("RGB"))
    except (UnidentifiedImageError, OSError) as exc:
        raise DatasetError(f"{path}: unreadable image ({exc})") from None


def train_transform(size: int) -> v2.Compose:
    """Flip, small rotation, mild colour jitter, and sometimes JPEG re-compression or blur (the
    detector must not learn compression level as the cue)."""
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((size, size), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.RandomRotation(10)], p=0.3),
        v2.ColorJitter(brightness=0.1, contrast=0.1, saturation=0.1, hue=0.02),
        v2.RandomApply([v2.JPEG((50, 95))], p=0.3),
        v2.RandomApply([v2.GaussianBlur(5, sigma=(0.1, 1.5))], p=0.2),
        v2.ToDtype(torch.float32, scale=True),
    ])


def eval_transform(size: int) -> v2.Compose:
    return v2.Compose([
        v2.ToImage(),
        v2.Resize((size, size), antialias=True),
        v2.ToDtype(torch.float32, scale=True),
    ])


def scan_crop(image: np.ndarray, size: int) -> np.ndarray:
    """A dataset crop (itself a crop_face output) at `size` as `forensic scan` makes its crops:
    crop_face with the whole image as the face box and margin 1 (cv2 INTER_AREA when shrinking,
    else INTER_LINEAR). What a bundle sees, so what its calibration and evaluation must see."""
    height, width = image.shape[:2]
    return crop_face(image, (0, 0, width, height), 1.0, size)


def scan_transform(size: int) -> Callable[[np.ndarray], torch.Tensor]:
    """scan_crop as a float tensor (3, size, size) of pixels in [0, 1]."""
    return lambda image: torch.from_numpy(scan_crop(image, size)).permute(2, 0, 1).float().div(255.0)


class FaceCrops(Dataset):
    """Face crops through `transform` (an RGB uint8 array → a tensor, e.g. pixels in [0, 1],
    (3, size, size)), with label 0 real / 1 fake."""

    def __init__(self, samples: list[Sample], transform: Callable[[np.ndarray], torch.Tensor]):
        self.samples = samples
        self.transform = transform

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        sample = self.samples[index]
        return self.transform(read_rgb(sample.path)), sample.label
