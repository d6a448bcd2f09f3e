"""The dataset `trainer fit` trains on: a split's crops under the chosen augmentation, with
`--sbi`'s self-blended fakes after them and, for `--paired`, each fake's real partner."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from torch.utils.data import ConcatDataset, Dataset

from trainer.data.datasets import FaceCrops, Sample, eval_transform, train_transform
from trainer.data.pairing import find_partners


def augmentation(augment: str, size: int):
    """The training transform `--augment` names (one of trainer.config.AUGMENTS)."""
    if augment.startswith("uploads"):
        from trainer.data.augment import uploads_transform

        return uploads_transform(size, augment)
    return train_transform(size) if augment == "standard" else eval_transform(size)


def training_set(samples: Sequence[Sample], size: int, augment: str, data: Path, sbi: bool, paired: bool,
                 seed: int) -> tuple[Dataset, list[int], dict[int, int]]:
    """The training dataset, its labels, and each fake's real partner (index -> index) for --paired.
    `data`: the dataset folder, whose train/real landmarks the self-blends need."""
    transform = augmentation(augment, size)
    crops = FaceCrops(samples, transform)
    partners = find_partners(samples) if paired else {}
    if not sbi:
        return crops, [s.label for s in samples], partners
    from trainer.data.sbi import SelfBlendedFakes, load_landmarks

    real_indices = [i for i, s in enumerate(samples) if s.label == 0]
    reals = [samples[i] for i in real_indices]
    landmarks = load_landmarks(Path(data) / "train" / "real")
    blended = SelfBlendedFakes(reals, transform, landmarks=landmarks, seed=seed)
    # a self-blend's partner is the real it was blended from
    partners.update({len(samples) + k: i for k, i in enumerate(real_indices)})
    return ConcatDataset([crops, blended]), [s.label for s in samples] + [1] * len(reals), partners
