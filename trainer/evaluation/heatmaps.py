"""Heatmaps: for up to HEATMAPS_PER_CELL crops of each confusion-matrix cell (true/false
positives/negatives), drawn at random with the seed, a PNG of the crop beside its heatmap
overlay (forensic.heatmaps: the positive part, evidence for "fake"): Grad-CAM for a run
(trainer.evaluation.gradcam), the bundle's class activation maps for a bundle.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from forensic.heatmaps import overlay, write_png
from trainer.data.datasets import CLASSES
from trainer.evaluation.adversarial import AdversarialSaver
from trainer.evaluation.scorers import Scorer
from trainer.evaluation.sweep import Collected

HEATMAPS_PER_CELL = 4


CELLS = (("tp", "true positives", 1, True), ("fp", "false positives", 0, True),
         ("tn", "true negatives", 0, False), ("fn", "false negatives", 1, False))


def heatmap_sample(labels: np.ndarray, scores: np.ndarray, threshold: float, per_cell: int,
                   seed: int = 0) -> dict[str, list[int]]:
    """Up to `per_cell` crop indices of each confusion-matrix cell, drawn at random (seeded)."""
    rng = np.random.default_rng(seed)
    predicted_fake = np.asarray(scores) >= threshold
    sample = {}
    for key, _, label, fake in CELLS:
        members = np.flatnonzero((np.asarray(labels) == label) & (predicted_fake == fake))
        sample[key] = sorted(rng.choice(members, size=min(per_cell, len(members)), replace=False).tolist())
    return sample


def write_heatmaps(scorer: Scorer, crops: Dataset, collected: Collected, out: Path, per_cell: int,
                   seed: int = 0) -> dict:
    """heatmaps/{cell}-{index}-{class}-{crop}.png: the crop and its heatmap overlay side by side."""
    folder = out / "heatmaps"
    # An earlier report's heatmaps would be left unreferenced: remove them, and only them (the
    # folder may hold the user's own files).
    for key, *_ in CELLS:
        for stale in folder.glob(f"{key}-[0-9][0-9][0-9][0-9][0-9]-*.png"):
            stale.unlink()
    sample = heatmap_sample(collected.labels, collected.scores["clean"], collected.threshold, per_cell, seed)
    chosen = [(key, index) for key, indices in sample.items() for index in indices]
    rule = (f"up to {per_cell} crops per confusion-matrix cell, drawn at random (seed {seed}); each PNG is the "
            f"crop at the model's input size beside the positive part of its map (evidence for 'fake')")
    if not chosen:
        return {"method": None, "sample": rule, "files": [], "skipped": "no crops"}
    images = torch.stack([crops[index][0] for _, index in chosen])
    heatmaps = scorer.heatmaps(images.to(scorer.device).float().div_(255.0))
    if heatmaps.maps is None:
        return {"method": None, "sample": rule, "files": [], "skipped": heatmaps.method}
    files = []
    for (key, index), image, heat in zip(chosen, images, heatmaps.maps):
        crop = image.permute(1, 2, 0).numpy()
        label = int(collected.labels[index])
        name = f"heatmaps/{key}-{index:05d}-{AdversarialSaver.file_name(collected.names[index], label)}"
        write_png(np.concatenate([crop, overlay(crop, heat)], axis=1), out / name)
        files.append({"file": name, "cell": key, "crop": collected.names[index], "label": CLASSES[label],
                      "p_fake": float(collected.scores["clean"][index])})
    return {"method": heatmaps.method, "sample": rule, "files": files, "skipped": None}
