"""The sweep over conditions: every batch of crops scored clean, under each attack
(trainer.attacks.suite) and under each corruption, in one pass over the data, with the clean
crops' input gradients (for the gradient-masking checks) and the seconds each condition took.

Corruptions (trainer.data.corruptions) are applied to the crops at the model's input size.
Results are reproducible for a given seed, subset and batch size: each batch's attack and noise
seeds derive from the seed, the batch index and the condition's name, so they do not depend on
which other conditions run.
"""

from __future__ import annotations

import time
import zlib
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch

from trainer.attacks.suite import BLACK_BOX, DEFAULT_ATTACKS, AttackSpec, run_attack
from trainer.data.corruptions import DEFAULT_CORRUPTIONS, Corruption
from trainer.evaluation.adversarial import AdversarialSaver
from trainer.evaluation.errors import EvaluationError
from trainer.evaluation.metrics import RUN_THRESHOLD
from trainer.evaluation.scorers import Scorer

Progress = Callable[[str, int, int], None]  # (phase, done, total)


def _seed(seed: int, batch: int, condition: str) -> int:
    """A condition's seed for one batch: independent of which other conditions run."""
    return int(np.random.SeedSequence([int(seed), int(batch), zlib.crc32(condition.encode())]).generate_state(1)[0])


@dataclass
class Collected:
    """Per-crop labels and P(fake) under every condition, and the clean input gradients."""
    labels: np.ndarray
    names: list[str]
    scores: dict[str, np.ndarray]  # "clean", attack names, corruption names
    attacks: list[AttackSpec]  # white-box
    black_box: AttackSpec | None
    corruptions: list[str]
    gradient_mean_abs: float | None  # None: the scorer has no gradient
    gradient_zero_fraction: float | None
    threshold: float = RUN_THRESHOLD
    learned: list[AttackSpec] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def all_attacks(self) -> list[AttackSpec]:
        return self.attacks + self.learned + ([self.black_box] if self.black_box else [])


Batch = tuple[torch.Tensor, torch.Tensor]  # uint8 (N, 3, H, W) images, int64 labels


def collect(scorer: Scorer, batches: Iterable[Batch], *, n_batches: int | None = None, names: list[str] | None = None,
            attacks: Iterable[AttackSpec] = DEFAULT_ATTACKS, black_box: AttackSpec | None = BLACK_BOX,
            learned: Iterable[AttackSpec] = (), corruptions: Iterable[Corruption] = DEFAULT_CORRUPTIONS,
            seed: int = 0, save_adv: AdversarialSaver | None = None,
            on_progress: Progress | None = None) -> Collected:
    """Score every batch clean, under each attack and each corruption (one pass over the data)."""
    attacks, learned, corruptions = list(attacks), list(learned), list(corruptions)
    if attacks and not scorer.white_box:
        raise EvaluationError(f"white-box attacks need an input gradient: {scorer.white_box_missing}")
    conditions = attacks + learned + ([black_box] if black_box else [])
    # The input-gradient statistic serves only the masking checks, which need an attack: without one
    # it would cost each clean batch a gradient pass (and the gradient graphs' memory) for nothing.
    measure_gradient = scorer.white_box and bool(conditions)
    device = scorer.device
    steps_per_batch = 1 + len(conditions) + len(corruptions)
    total = None if n_batches is None else n_batches * steps_per_batch
    scores: dict[str, list[np.ndarray]] = {"clean": []}
    labels_all: list[np.ndarray] = []
    batch_names: list[str] = []
    seconds: dict[str, float] = {}
    gradient_sum, gradient_count, zero_crops, crops = 0.0, 0, 0, 0
    done = 0

    def step(description: str) -> None:
        nonlocal done
        done += 1
        if on_progress:
            on_progress(description, done, total or done)

    def timed(condition: str, started: float) -> None:
        seconds[condition] = seconds.get(condition, 0.0) + time.perf_counter() - started

    for index, (images, labels) in enumerate(batches):
        started = time.perf_counter()
        offset = len(batch_names)
        batch_names.extend(names[offset:offset + len(labels)] if names is not None
                           else [str(i) for i in range(offset, offset + len(labels))])
        labels = labels.to(device)
        pixels = images.to(device).float().div_(255.0)
        scores["clean"].append(scorer.p_fake(pixels))
        labels_all.append(labels.cpu().numpy())
        if measure_gradient:
            gradient = scorer.loss_gradient(pixels, labels)
            gradient_sum += float(gradient.abs().sum())
            gradient_count += gradient.numel()
            zero_crops += int((gradient.flatten(1).abs().amax(1) == 0).sum())
        crops += len(labels)
        keep = save_adv.select(labels_all[-1]) if save_adv else []
        kept_names, kept_labels = [batch_names[offset + row] for row in keep], labels_all[-1][keep]
        if keep:
            save_adv.write_clean(kept_names, kept_labels, images[keep])
        timed("clean", started)
        step(f"batch {index + 1}: clean")
        for spec in conditions:
            started = time.perf_counter()
            adv = run_attack(scorer, spec, pixels, labels, seed=_seed(seed, index, spec.name))
            scores.setdefault(spec.name, []).append(scorer.p_fake(adv))
            if keep:
                save_adv.write(spec.name, kept_names, kept_labels, images[keep], adv[keep])
            timed(spec.name, started)
            step(f"batch {index + 1}: {spec.name}")
        if corruptions:
            array = images.permute(0, 2, 3, 1).contiguous().numpy()
            for corruption in corruptions:
                started = time.perf_counter()
                corrupted = corruption.apply(array, _seed(seed, index, corruption.name))
                tensor = torch.from_numpy(corrupted).permute(0, 3, 1, 2).to(device).float().div_(255.0)
                scores.setdefault(corruption.name, []).append(scorer.p_fake(tensor))
                timed(corruption.name, started)
                step(f"batch {index + 1}: {corruption.name}")
    if not labels_all:
        raise EvaluationError("no crops to evaluate")
    labels_array = np.concatenate(labels_all).astype(int)
    return Collected(labels=labels_array, names=batch_names,
                     scores={key: np.concatenate(value) for key, value in scores.items()}, attacks=attacks,
                     black_box=black_box, corruptions=[c.name for c in corruptions],
                     gradient_mean_abs=gradient_sum / max(gradient_count, 1) if measure_gradient else None,
                     gradient_zero_fraction=zero_crops / max(crops, 1) if measure_gradient else None,
                     threshold=scorer.threshold, learned=learned,
                     seconds={k: round(v, 3) for k, v in seconds.items()})
