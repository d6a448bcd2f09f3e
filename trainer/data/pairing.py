"""Batches that hold each fake beside its own real (`trainer fit --paired`).

A fake and the real it was made from differ only by the manipulation, so a batch holding both
shows the detector the manipulation itself rather than who is in the picture or where. A fake
crop's partner is found from the names `trainer prepare` gives:

    pair-<stem>_0000_0.png         (a pairs.csv fake)   -> <stem>_0000_0.png
    Deepfakes-044_945_0012_0.png   (a FaceForensics++ fake of target video 044)
                                                         -> 044_0012_0.png (same frame and face),
                                                            else the target's crop nearest in frame
    self-blended fake of real i    (`--sbi`)            -> real i

A fake without a partner among the training reals is paired with a random real. Each batch is
batch_size // 2 fakes, in a fresh random order each epoch, and their partners (plus one random
real when batch_size is odd): class-balanced like the default sampler.
"""

from __future__ import annotations

import re
from collections import defaultdict
from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler

from trainer.data.datasets import Sample

PAIR_PREFIX = "pair-"  # the name `trainer prepare` gives a paired fake: pair-<its real's stem>
_CROP_NAME = re.compile(r"(?P<video>.+)_(?P<frame>\d{4})_(?P<face>\d+)")
_FFPP_STEM = re.compile(r"\d+(?:_\d+)+")


def _parts(name: str) -> tuple[str, int, int] | None:
    match = _CROP_NAME.fullmatch(name.rsplit(".", 1)[0])
    if match is None:
        return None
    return match["video"], int(match["frame"]), int(match["face"])


def partner_video(fake_video: str) -> str | None:
    """The real video a fake video's name says it was made from, if it says."""
    if fake_video.startswith(PAIR_PREFIX):
        return fake_video[len(PAIR_PREFIX):]
    method, sep, stem = fake_video.partition("-")
    if sep and _FFPP_STEM.fullmatch(stem):
        return stem.split("_")[0]
    return None


def find_partners(samples: Sequence[Sample]) -> dict[int, int]:
    """Fake sample index -> index of its real partner among `samples` (fakes without one are left out)."""
    reals: dict[str, list[tuple[int, int, int]]] = defaultdict(list)  # video -> (frame, face, index)
    for index, sample in enumerate(samples):
        parts = _parts(sample.path.name) if sample.label == 0 else None
        if parts is not None:
            reals[parts[0]].append((parts[1], parts[2], index))
    partners: dict[int, int] = {}
    for index, sample in enumerate(samples):
        parts = _parts(sample.path.name) if sample.label == 1 else None
        if parts is None:
            continue
        video = partner_video(parts[0])
        candidates = reals.get(video or "")
        if candidates:
            frame, face = parts[1], parts[2]
            partners[index] = min(candidates, key=lambda c: (abs(c[0] - frame), c[1] != face))[2]
    return partners


class PairedBatchSampler(Sampler[list[int]]):
    """Batches of fakes and their partners (see the module docstring); `set_epoch` reshuffles."""

    def __init__(self, fakes: Sequence[int], partners: dict[int, int], reals: Sequence[int], batch_size: int,
                 steps: int, seed: int = 0):
        if not fakes or not reals:
            raise ValueError("paired batches need real and fake training samples")
        if batch_size < 2:
            raise ValueError("paired batches need --batch-size >= 2")
        self.fakes, self.partners, self.reals = list(fakes), dict(partners), list(reals)
        self.batch_size, self.steps, self.seed, self.epoch = batch_size, steps, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.steps

    def __iter__(self) -> Iterator[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        half = self.batch_size // 2
        order: list[int] = []
        for _ in range(self.steps):
            while len(order) < half:
                order.extend(self.fakes[i] for i in torch.randperm(len(self.fakes), generator=generator).tolist())
            fakes, order = order[:half], order[half:]
            batch = []
            for fake in fakes:
                partner = self.partners.get(fake)
                if partner is None:
                    partner = self.reals[int(torch.randint(len(self.reals), (), generator=generator))]
                batch.extend((fake, partner))
            if self.batch_size % 2:
                batch.append(self.reals[int(torch.randint(len(self.reals), (), generator=generator))])
            yield batch
