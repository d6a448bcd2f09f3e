"""`--save-adv`: per attack, the adversarial versions of the first SAVE_ADV_PER_CLASS crops of each
class (the same crops for every attack) as 16-bit PNGs whose perturbation is rounded toward
zero, so they stay within ε of the clean crops saved beside them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from trainer.data.datasets import CLASSES
from trainer.evaluation.errors import EvaluationError

SAVE_ADV_PER_CLASS = 4


def file_slug(text: str) -> str:
    """A file-name-safe form of an attack or crop name ("pgd20 eps=4/255" → "pgd20_eps=4-255")."""
    return re.sub(r"[^A-Za-z0-9.=-]+", "_", text.replace("/", "-")).strip("_")


def _write_image(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), np.ascontiguousarray(rgb[..., ::-1])):
        raise EvaluationError(f"{path}: could not write the image")


@dataclass
class AdversarialSaver:
    """`--save-adv`: for each attack, the adversarial versions of the first `per_class` crops of
    each class in evaluation order (the same crops for every attack), in folder/<attack>/ as
    16-bit RGB PNGs, and those crops as the model saw them (8-bit) in folder/clean/, named
    {class}-{crop}.png. 16 bits hold the 8-bit clean values exactly (v · 257), and the
    perturbation is rounded toward zero onto the 16-bit grid, so every saved example is within ε
    (L∞, in [0, 1]) of its clean crop. Files of the same name are replaced; nothing else in the
    folder is touched (it may be a folder of the user's)."""

    folder: Path
    per_class: int = SAVE_ADV_PER_CLASS
    files: int = 0
    taken: dict[int, int] = field(default_factory=dict)

    def select(self, labels: np.ndarray) -> list[int]:
        """The rows of this batch to keep (advances the per-class counts)."""
        rows = []
        for row, label in enumerate(labels.tolist()):
            if self.taken.get(label, 0) < self.per_class:
                self.taken[label] = self.taken.get(label, 0) + 1
                rows.append(row)
        return rows

    @staticmethod
    def file_name(name: str, label: int) -> str:
        return f"{CLASSES[label]}-{file_slug(Path(name).stem)}.png"

    def write_clean(self, names: list[str], labels: np.ndarray, images: torch.Tensor) -> None:
        for name, label, image in zip(names, labels.tolist(), images):
            _write_image(self.folder / "clean" / self.file_name(name, label), image.permute(1, 2, 0).cpu().numpy())
            self.files += 1

    def write(self, attack: str, names: list[str], labels: np.ndarray, images: torch.Tensor,
              adversarial: torch.Tensor) -> None:
        clean16 = images.cpu().to(torch.float64) * 257
        delta16 = torch.trunc(adversarial.detach().cpu().to(torch.float64) * 65535 - clean16)
        encoded = (clean16 + delta16).clamp(0, 65535).to(torch.int32).numpy().astype(np.uint16)
        for name, label, image in zip(names, labels.tolist(), encoded):
            _write_image(self.folder / file_slug(attack) / self.file_name(name, label), image.transpose(1, 2, 0))
            self.files += 1
