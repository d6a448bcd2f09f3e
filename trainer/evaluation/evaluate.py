"""`trainer eval`: a trained run or an exported bundle on a dataset split → clean metrics,
adversarial robustness, gradient-masking checks, common corruptions and heatmaps, written as a
report folder.

What is scored (trainer.evaluation.scorers): a `trainer fit` run's PyTorch model (P(fake) = softmax of its
logits), or a bundle exactly as `forensic scan` scores face crops (forensic.inference's
EnsembleRunner: the calibrated weighted ensemble). The attacks and the collection loop work on
either through the same small scorer interface.

Input crops: the dataset's crops (face crops made by `trainer prepare` with forensic.faces'
crop_face) brought to the input size. A run: its evaluation transform (torchvision Resize,
antialiased), as in training. A bundle: as `forensic scan` makes its crops, i.e. crop_face with
the whole crop as the box and margin 1 (same square, cv2.resize with INTER_AREA when shrinking,
else INTER_LINEAR), at the manifest's input size; normalisation is the bundle's (in its graph
or by EnsembleRunner, per the manifest).

Decision rule: a crop (or a video) is called fake when P(fake) >= the threshold: 0.5 for a run,
the manifest's decision_threshold for a bundle (its uncertain band is not used: every crop is
called real or fake). Accuracy, the confusion matrix and attack success rates use it; the
ranking metrics (ROC-AUC, average precision, EER, TPR at 1 % FPR) do not depend on it.

Clean metrics, at frame level (each crop) and video level (the mean P(fake) of a video's crops,
not forensic scan's per-identity aggregation; a crop's video is its file name up to the last two
`_`-separated fields, as `trainer prepare` names crops `{video}_{frame:04d}_{face}.png`; every
crop of a video must carry the same label): accuracy, ROC-AUC with a stratified bootstrap 95 %
percentile interval (1000 resamples of each class with replacement, seeded), TPR at 1 % FPR (the
highest TPR of a ROC point whose FPR is <= 1 %), EER (the ROC point where FPR and FNR = 1 − TPR
are closest; their mean), average precision, log-loss (P clipped to [1e-7, 1 − 1e-7]), the
confusion matrix and the counts per class. When a video's crops disagree in label, the video
level is skipped with the reason recorded.

Attacks: the white-box, black-box and learned attacks trainer.attacks.suite lists, at frame
level. Robust accuracy and AUC per attack, and the worst case over attacks. `--save-adv` keeps,
per attack, the adversarial versions of the first SAVE_ADV_PER_CLASS crops of each class (the
same crops for every attack) as 16-bit PNGs whose perturbation is rounded toward zero, so they
stay within ε of the clean crops saved beside them.

Gradient-masking checks (Athalye et al., ICML 2018; Carlini et al., "On Evaluating Adversarial
Robustness", 2019), each passed/failed with its numbers, with a tolerance of
max(0.01, 1/n) in accuracy (one crop of n); a failed check is shown in red in index.html:
  more_steps        PGD-20 accuracy <= PGD-10 accuracy + tol, at each ε both ran at
  pgd_vs_fgsm       PGD at ε' >= ε (the nearest such ε') accuracy <= FGSM at ε + tol
                    (FGSM 0.001 ↔ PGD-5 0.001; 0.005 ↔ PGD-10/20 2/255; 0.01 ↔ PGD-10/20 4/255;
                    FGSM 0.02 has no PGD at ε' >= 0.02 and is not checked)
  nonzero_gradients mean |∇ₓ attacked loss| over the clean crops > 0 (not checked without a
                    gradient)
  black_box         black-box accuracy >= the white-box accuracy at the same ε − tol

Corruptions (trainer.data.corruptions) are applied to the crops at the model's input size; AUC and
accuracy and their drop from clean.

Heatmaps: for up to HEATMAPS_PER_CELL crops of each confusion-matrix cell (true/false
positives/negatives), drawn at random with the seed, a PNG of the crop beside its heatmap
overlay (forensic.heatmaps: the positive part, evidence for "fake"): Grad-CAM for a run
(trainer.evaluation.gradcam), the bundle's class activation maps for a bundle.

`--limit N` evaluates a seeded, class-stratified random subset of N crops (each class keeps its
share of the split, at least one crop each): crops are drawn, not videos, so a video may keep
only some of its crops. Results are reproducible for a given seed, subset and batch size (the
per-batch attack and noise seeds derive from the seed and the batch index).
"""

from __future__ import annotations

import csv
import html
import json
import re
import time
import zlib
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Sequence

import cv2
import numpy as np
import torch
from sklearn.metrics import average_precision_score, confusion_matrix, log_loss, roc_auc_score, roc_curve
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from forensic.bundle import load_bundle
from forensic.heatmaps import overlay, write_png
from forensic.versions import library_versions
from trainer.attacks.square import SQUARE_P_INIT, SQUARE_QUERIES
from trainer.attacks.suite import BLACK_BOX, DEFAULT_ATTACKS, UNET_FILE, AttackSpec, load_unet_attack, run_attack
from trainer.data.corruptions import DEFAULT_CORRUPTIONS, Corruption
from trainer.data.datasets import CLASSES, FaceCrops, Sample, list_split, scan_crop
from trainer.evaluation.errors import EvaluationError
from trainer.fit import resolve_device
from trainer.evaluation.scorers import RUN_THRESHOLD, BundleScorer, Scorer, TorchScorer

SCHEMA = "trainer-eval/1"
BOOTSTRAP_RESAMPLES = 1000
SAVE_ADV_PER_CLASS = 4
HEATMAPS_PER_CELL = 4

Progress = Callable[[str, int, int], None]


# ------------------------------------------------------------------------------------ metrics

def _two_classes(y_true: np.ndarray) -> bool:
    return len(np.unique(y_true)) == 2


def auc_score(y_true: np.ndarray, y_score: np.ndarray) -> float | None:
    """ROC-AUC (scikit-learn); None with one class."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if not _two_classes(y_true):
        return None
    return float(roc_auc_score(y_true, y_score))


def bootstrap_auc_ci(y_true: np.ndarray, y_score: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0,
                     level: float = 0.95) -> tuple[float, float] | None:
    """Percentile interval of the AUC over stratified bootstrap resamples (each class resampled
    with replacement to its own size, so every resample has both classes)."""
    y_true, y_score = np.asarray(y_true), np.asarray(y_score, dtype=np.float64)
    if not _two_classes(y_true) or resamples < 1:
        return None
    rng = np.random.default_rng(seed)
    fake, real = y_score[y_true == 1], y_score[y_true == 0]
    labels = np.r_[np.ones(len(fake)), np.zeros(len(real))]
    values = [roc_auc_score(labels, np.r_[fake[rng.integers(0, len(fake), len(fake))],
                                           real[rng.integers(0, len(real), len(real))]])
              for _ in range(resamples)]
    alpha = (1 - level) / 2
    return float(np.quantile(values, alpha)), float(np.quantile(values, 1 - alpha))


def tpr_at_fpr(y_true: np.ndarray, y_score: np.ndarray, max_fpr: float = 0.01) -> float | None:
    """The highest TPR among ROC points whose FPR is <= max_fpr (no interpolation)."""
    if not _two_classes(np.asarray(y_true)):
        return None
    fpr, tpr, _ = roc_curve(y_true, y_score, drop_intermediate=False)
    return float(tpr[fpr <= max_fpr + 1e-12].max())


def equal_error_rate(y_true: np.ndarray, y_score: np.ndarray) -> tuple[float, float] | None:
    """(EER, threshold): at the ROC point where FPR and FNR (= 1 − TPR) are closest (the highest
    threshold on ties), EER = (FPR + FNR) / 2."""
    if not _two_classes(np.asarray(y_true)):
        return None
    fpr, tpr, thresholds = roc_curve(y_true, y_score, drop_intermediate=False)
    fnr = 1 - tpr
    index = int(np.argmin(np.abs(fpr - fnr)))
    return float((fpr[index] + fnr[index]) / 2), float(min(thresholds[index], 1.0))


def binary_metrics(y_true: np.ndarray, y_score: np.ndarray, threshold: float = RUN_THRESHOLD,
                   bootstrap: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> dict:
    """Every clean metric for labels (0 real, 1 fake) and scores P(fake)."""
    y_true = np.asarray(y_true).astype(int)
    y_score = np.asarray(y_score, dtype=np.float64)
    predicted = (y_score >= threshold).astype(int)
    matrix = confusion_matrix(y_true, predicted, labels=[0, 1])
    both = _two_classes(y_true)
    ci = bootstrap_auc_ci(y_true, y_score, bootstrap, seed) if both else None
    eer = equal_error_rate(y_true, y_score)
    return {
        "n": int(len(y_true)),
        "counts": {name: int((y_true == label).sum()) for label, name in enumerate(CLASSES)},
        "threshold": threshold,
        "accuracy": float((predicted == y_true).mean()) if len(y_true) else None,
        "auc": auc_score(y_true, y_score),
        "auc_ci95": list(ci) if ci else None,
        "auc_ci_method": f"stratified bootstrap, {bootstrap} resamples, percentile, seed {seed}" if ci else None,
        "tpr_at_1pct_fpr": tpr_at_fpr(y_true, y_score, 0.01),
        "eer": eer[0] if eer else None,
        "eer_threshold": eer[1] if eer else None,
        "average_precision": float(average_precision_score(y_true, y_score)) if both else None,
        "log_loss": float(log_loss(y_true, np.clip(y_score, 1e-7, 1 - 1e-7), labels=[0, 1])) if len(y_true) else None,
        "confusion_matrix": {"rows": "true real, fake", "columns": "predicted real, fake",
                             "matrix": matrix.tolist(), "tn": int(matrix[0, 0]), "fp": int(matrix[0, 1]),
                             "fn": int(matrix[1, 0]), "tp": int(matrix[1, 1])},
    }


def condition_metrics(y_true: np.ndarray, y_score: np.ndarray, clean: dict | None = None,
                      threshold: float = RUN_THRESHOLD) -> dict:
    """Accuracy and AUC under one condition, and their drop from clean when given."""
    y_true = np.asarray(y_true).astype(int)
    accuracy = float(((np.asarray(y_score) >= threshold).astype(int) == y_true).mean())
    auc = auc_score(y_true, y_score)
    result = {"accuracy": accuracy, "auc": auc, "n": int(len(y_true))}
    if clean is not None:
        result["accuracy_drop"] = clean["accuracy"] - accuracy
        result["auc_drop"] = None if auc is None or clean["auc"] is None else clean["auc"] - auc
    return result


# ------------------------------------------------------------------------------------- videos

CROP_FIELDS = re.compile(r"\d{4,}_\d+")  # the frame and face numbers trainer prepare appends

def video_id(name: str | Path) -> str:
    """`{video}_{frame:04d}_{face}.png` (trainer prepare's crop names) → video; any other name
    (`George_W_Bush_0001.png`) is its own video rather than being cut at its underscores."""
    stem = Path(name).stem
    parts = stem.rsplit("_", 2)
    if len(parts) == 3 and parts[0] and CROP_FIELDS.fullmatch(f"{parts[1]}_{parts[2]}"):
        return parts[0]
    return stem


def video_scores(names: Iterable[str | Path], labels: np.ndarray, scores: np.ndarray) -> dict:
    """Per video (sorted ids): its label, mean P(fake) and crop count. Raises EvaluationError
    when a video's crops carry different labels."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(names):
        groups.setdefault(video_id(name), []).append(index)
    labels, scores = np.asarray(labels), np.asarray(scores, dtype=np.float64)
    ids = sorted(groups)
    for vid in ids:
        found = set(labels[groups[vid]].tolist())
        if len(found) > 1:
            raise EvaluationError(f"video {vid!r} has crops labelled both real and fake "
                                  f"({len(groups[vid])} crops); video ids must be unique across classes")
    return {"ids": ids, "labels": np.array([labels[groups[v][0]] for v in ids], dtype=int),
            "scores": np.array([scores[groups[v]].mean() for v in ids]),
            "crops": np.array([len(groups[v]) for v in ids], dtype=int)}


# ------------------------------------------------------------------------------------- subset

def stratified_subset(samples: list[Sample], limit: int | None, seed: int = 0) -> list[Sample]:
    """A seeded class-stratified random subset of `limit` crops (each class its share, at least
    one), in the original order; all samples when limit is None or not smaller."""
    if limit is None or limit >= len(samples):
        return list(samples)
    if limit < 2:
        raise EvaluationError("--limit must be at least 2 (one crop of each class)")
    rng = np.random.default_rng(seed)
    by_class = {label: [i for i, s in enumerate(samples) if s.label == label] for label in (0, 1)}
    present = [label for label in (0, 1) if by_class[label]]
    quotas = {label: max(1, round(limit * len(by_class[label]) / len(samples))) for label in present}
    while sum(quotas.values()) > limit:  # rounding up both classes can overshoot by one
        largest = max(present, key=lambda label: quotas[label])
        quotas[largest] -= 1
    chosen = []
    for label in present:
        chosen.extend(rng.choice(by_class[label], size=quotas[label], replace=False).tolist())
    return [samples[i] for i in sorted(chosen)]


def _seed(seed: int, batch: int, condition: str) -> int:
    """A condition's seed for one batch: independent of which other conditions run."""
    return int(np.random.SeedSequence([int(seed), int(batch), zlib.crc32(condition.encode())]).generate_state(1)[0])


# ------------------------------------------------------------------------ adversarial examples

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


# ------------------------------------------------------------------------------- collection

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
        if scorer.white_box:
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
                     gradient_mean_abs=gradient_sum / max(gradient_count, 1) if scorer.white_box else None,
                     gradient_zero_fraction=zero_crops / max(crops, 1) if scorer.white_box else None,
                     threshold=scorer.threshold, learned=learned,
                     seconds={k: round(v, 3) for k, v in seconds.items()})


# -------------------------------------------------------------------------------- summaries

def masking_tolerance(n: int) -> float:
    return max(0.01, 1.0 / max(n, 1))


def gradient_masking_checks(collected: Collected, results: dict[str, dict]) -> dict:
    """The four checks; each {"passed": True/False/None (could not be checked), "rule", numbers}."""
    n = len(collected.labels)
    tol = masking_tolerance(n)
    pgd_specs = [s for s in collected.attacks if s.family == "pgd"]
    fgsm_specs = [s for s in collected.attacks if s.family == "fgsm"]

    def same(a: float, b: float) -> bool:
        return abs(a - b) <= 1e-9

    def verdict(pairs: list[dict]) -> bool | None:
        return all(p["passed"] for p in pairs) if pairs else None

    steps_pairs = []
    for more in pgd_specs:
        fewer = [s for s in pgd_specs if same(s.eps, more.eps) and s.steps < more.steps]
        for other in fewer:
            a_more, a_fewer = results[more.name]["accuracy"], results[other.name]["accuracy"]
            steps_pairs.append({"eps": more.eps, "fewer": other.name, "fewer_accuracy": a_fewer, "more": more.name,
                                "more_accuracy": a_more, "passed": a_more <= a_fewer + tol})

    fgsm_pairs, unchecked = [], []
    for spec in fgsm_specs:
        larger = [s for s in pgd_specs if s.eps >= spec.eps - 1e-9]
        if not larger:
            unchecked.append(spec.name)
            continue
        nearest = min(s.eps for s in larger)
        for other in (s for s in larger if same(s.eps, nearest)):
            a_pgd, a_fgsm = results[other.name]["accuracy"], results[spec.name]["accuracy"]
            fgsm_pairs.append({"fgsm": spec.name, "fgsm_accuracy": a_fgsm, "pgd": other.name, "pgd_accuracy": a_pgd,
                               "passed": a_pgd <= a_fgsm + tol})

    black = None
    if collected.black_box is not None:
        bb = collected.black_box
        white = [s for s in collected.attacks if same(s.eps, bb.eps)]
        if white:
            strongest = min(white, key=lambda s: results[s.name]["accuracy"])
            a_black, a_white = results[bb.name]["accuracy"], results[strongest.name]["accuracy"]
            black = {"passed": a_black >= a_white - tol, "black_box": bb.name, "black_box_accuracy": a_black,
                     "white_box": strongest.name, "white_box_accuracy": a_white}

    if collected.gradient_mean_abs is None:
        nonzero = {"passed": None, "reason": "no input gradient (black-box only)"}
    else:
        nonzero = {"passed": bool(collected.gradient_mean_abs > 0), "mean_abs_gradient": collected.gradient_mean_abs,
                   "zero_gradient_crop_fraction": collected.gradient_zero_fraction}
    return {
        "tolerance": tol,
        "tolerance_rule": "max(0.01, 1/n) in accuracy",
        "more_steps": {"rule": "PGD with more steps is never weaker: acc(more) <= acc(fewer) + tol at equal eps",
                       "passed": verdict(steps_pairs), "pairs": steps_pairs},
        "pgd_vs_fgsm": {"rule": "PGD at the nearest eps' >= eps is at least as strong as FGSM at eps: "
                                "acc(PGD) <= acc(FGSM) + tol",
                        "passed": verdict(fgsm_pairs), "pairs": fgsm_pairs, "not_checked": unchecked},
        "nonzero_gradients": {"rule": "mean |d attacked loss / d input| over the clean crops > 0", **nonzero},
        "black_box": {"rule": "black-box (Square-like random search) accuracy >= white-box accuracy at the same eps - tol",
                      **(black or {"passed": None, "reason": "no black-box attack or no white-box attack at its eps"})},
    }


CHECK_NAMES = ("more_steps", "pgd_vs_fgsm", "nonzero_gradients", "black_box")


def summarise(collected: Collected, *, seed: int = 0, bootstrap: int = BOOTSTRAP_RESAMPLES) -> dict:
    """Clean (frame and video level), attacks, masking checks and corruptions from the scores."""
    y = collected.labels
    threshold = collected.threshold
    clean = binary_metrics(y, collected.scores["clean"], threshold=threshold, bootstrap=bootstrap, seed=seed)
    summary: dict = {"clean": {"frame": clean, "video": None, "video_skipped": None}}
    try:
        videos = video_scores(collected.names, y, collected.scores["clean"])
        summary["clean"]["video"] = binary_metrics(videos["labels"], videos["scores"], threshold=threshold,
                                                   bootstrap=bootstrap, seed=seed)
        summary["clean"]["video"]["crops_per_video"] = {"min": int(videos["crops"].min()), "mean": float(videos["crops"].mean()),
                                                        "max": int(videos["crops"].max())}
        summary["clean"]["video"]["aggregation"] = "mean P(fake) of the video's crops"
    except EvaluationError as exc:
        summary["clean"]["video_skipped"] = str(exc)

    all_attacks = collected.all_attacks
    if all_attacks:
        correct_clean = (collected.scores["clean"] >= threshold).astype(int) == y
        results = {}
        for spec in all_attacks:
            scores = collected.scores[spec.name]
            entry = {"name": spec.name, "family": spec.group, "eps": spec.eps, "eps_text": spec.eps_text or f"{spec.eps:g}",
                     "box": spec.box}
            if spec.family == "pgd":
                entry["steps"] = spec.steps
            if spec.family == "square":
                entry["queries"] = spec.steps
            if spec.family == "unet":
                entry["source"] = f"the run's {UNET_FILE} (the dual-attacker's U-Net from its last epoch)"
            entry.update(condition_metrics(y, scores, clean, threshold))
            flipped = correct_clean & ((scores >= threshold).astype(int) != y)
            entry["success_rate"] = float(flipped.sum() / max(correct_clean.sum(), 1))
            results[spec.name] = entry
        worst_acc = min(results.values(), key=lambda r: r["accuracy"])
        with_auc = [r for r in results.values() if r["auc"] is not None]
        worst_auc = min(with_auc, key=lambda r: r["auc"]) if with_auc else None
        robust_everywhere = correct_clean.copy()
        for spec in all_attacks:
            robust_everywhere &= (collected.scores[spec.name] >= threshold).astype(int) == y
        summary["attacks"] = {
            "space": "pixels in [0, 1], L-infinity, true labels",
            "results": list(results.values()),
            "worst_case": {"accuracy": worst_acc["accuracy"], "accuracy_attack": worst_acc["name"],
                           "auc": worst_auc["auc"] if worst_auc else None,
                           "auc_attack": worst_auc["name"] if worst_auc else None,
                           "per_crop_accuracy": float(robust_everywhere.mean()),
                           "per_crop_rule": "correct clean and under every attack"},
        }
        summary["gradient_masking"] = gradient_masking_checks(collected, results)
        checked = [summary["gradient_masking"][k]["passed"] for k in CHECK_NAMES]
        done = [v for v in checked if v is not None]
        summary["gradient_masking"]["passed"] = all(done) if done else None  # None: nothing could be checked
    else:
        summary["attacks"] = None
        summary["gradient_masking"] = None
    if collected.corruptions:
        summary["corruptions"] = {
            "applied_to": "crops at the model's input size (uint8), per batch; h264: per-crop re-encoding of the "
                          "batch's crops as frames of one clip, not the original video",
            "results": [{"name": name, **condition_metrics(y, collected.scores[name], clean, threshold)}
                        for name in collected.corruptions],
        }
    else:
        summary["corruptions"] = None
    return summary


def condition_rows(summary: dict) -> list[dict]:
    """metrics.csv rows: clean, each attack, each corruption (accuracy, AUC, n)."""
    clean = summary["clean"]["frame"]
    rows = [{"condition": "clean", "kind": "clean", "accuracy": clean["accuracy"], "auc": clean["auc"], "n": clean["n"]}]
    if summary["clean"].get("video"):
        video = summary["clean"]["video"]
        rows.append({"condition": "clean (video level)", "kind": "clean-video", "accuracy": video["accuracy"],
                     "auc": video["auc"], "n": video["n"]})
    kinds = {"white": "attack", "black": "attack-black-box", "learned": "attack-learned"}
    for kind in ("attacks", "corruptions"):
        for result in (summary.get(kind) or {}).get("results", []):
            rows.append({"condition": result["name"], "kind": kinds[result["box"]] if kind == "attacks" else "corruption",
                         "accuracy": result["accuracy"], "auc": result["auc"], "n": result["n"]})
    return rows


# --------------------------------------------------------------------------------- heatmaps

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


# ------------------------------------------------------------------------------------ the run

@dataclass
class EvalSettings:
    """What to evaluate and how; the same for a run and a bundle."""
    split: str = "test"
    limit: int | None = None
    batch_size: int = 32
    seed: int = 0
    attacks: Sequence[AttackSpec] = DEFAULT_ATTACKS  # white-box; skipped for a bundle without gradients
    black_box: AttackSpec | None = BLACK_BOX
    learned_attacks: bool = True  # a dual-attacker run's U-Net
    corruptions: Sequence[Corruption] = DEFAULT_CORRUPTIONS
    heatmaps_per_cell: int = HEATMAPS_PER_CELL
    save_adv: Path | None = None  # folder for adversarial examples
    device: str = "auto"
    bootstrap: int = BOOTSTRAP_RESAMPLES  # resamples of the AUC's confidence interval


def run_resize(size: int) -> Callable[[np.ndarray], torch.Tensor]:
    """A run's evaluation transform up to the float conversion (torchvision Resize, antialiased)."""
    transform = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])
    return lambda image: transform(image).as_subclass(torch.Tensor)


def _bundle_resize(size: int) -> Callable[[np.ndarray], torch.Tensor]:
    return lambda image: torch.from_numpy(scan_crop(image, size)).permute(2, 0, 1).contiguous()


def _check_settings(settings: EvalSettings) -> None:
    if settings.batch_size < 1:
        raise EvaluationError("--batch-size must be at least 1")


def _evaluate(scorer: Scorer, data: Path, out: Path, settings: EvalSettings, *, subject: dict,
              resize: Callable[[np.ndarray], torch.Tensor], learned: list[AttackSpec], threshold_rule: str,
              not_done: list[str], started: float, on_progress: Progress | None) -> dict:
    """The evaluation shared by runs and bundles; `subject` says what was evaluated."""
    available = list_split(Path(data), settings.split)
    samples = stratified_subset(available, settings.limit, settings.seed)
    crops = FaceCrops(samples, resize)  # uint8 crops at the scorer's input size
    loader = DataLoader(crops, batch_size=settings.batch_size, shuffle=False, num_workers=0)
    saver = AdversarialSaver(Path(settings.save_adv)) if settings.save_adv else None
    attacks = list(settings.attacks) if scorer.white_box else []
    collected = collect(scorer, ((images, torch.as_tensor(labels)) for images, labels in loader),
                        n_batches=len(loader), names=[s.path.name for s in samples], attacks=attacks,
                        black_box=settings.black_box, learned=learned, corruptions=settings.corruptions,
                        seed=settings.seed, save_adv=saver, on_progress=on_progress)
    summary = summarise(collected, seed=settings.seed, bootstrap=settings.bootstrap)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heatmaps = None
    if settings.heatmaps_per_cell > 0:
        if on_progress:
            on_progress("heatmaps", 0, 1)
        heatmap_started = time.perf_counter()
        heatmaps = write_heatmaps(scorer, crops, collected, out, settings.heatmaps_per_cell, settings.seed)
        collected.seconds["heatmaps"] = round(time.perf_counter() - heatmap_started, 3)

    def counts(items: list[Sample]) -> dict[str, int]:
        return {name: sum(1 for s in items if s.label == label) for label, name in enumerate(CLASSES)}

    videos = {name: len({video_id(s.path.name) for s in samples if s.label == label}) for label, name in enumerate(CLASSES)}
    any_attack = bool(attacks or learned or settings.black_box)
    report = {
        "schema": SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **subject,
        "data": str(data), "split": settings.split, "seed": settings.seed, "batch_size": settings.batch_size,
        "limit": settings.limit,
        "subset": (f"seeded class-stratified random subset of {len(samples)} of {len(available)} crops (seed {settings.seed})"
                   if len(samples) < len(available) else "all crops of the split"),
        "counts": {"crops": counts(samples), "crops_in_split": counts(available), "videos": videos},
        "threshold": scorer.threshold,
        "threshold_rule": threshold_rule,
        **summary,
        "white_box": {"available": scorer.white_box, "attacked_loss": scorer.attacked_loss,
                      "missing": scorer.white_box_missing,
                      "skipped_attacks": [s.name for s in settings.attacks] if not scorer.white_box else []},
        "attack_settings": None if not any_attack else {
            "white_box": [s.name for s in attacks], "black_box": settings.black_box.name if settings.black_box else None,
            "learned": [s.name for s in learned],
            "pgd_step_size": "2.5 * eps / steps", "pgd_random_start": True,
            "square": {"queries": SQUARE_QUERIES, "p_init": SQUARE_P_INIT, "loss": "margin"},
            "seeds": "per batch and condition: numpy SeedSequence([seed, batch index, crc32(condition name)])"},
        "heatmaps": heatmaps,
        "adversarial_examples": None if saver is None else {
            "folder": str(saver.folder), "files": saver.files,
            "rule": f"per attack, the first {saver.per_class} crops of each class in evaluation order (the same "
                    f"crops for every attack), with those clean crops in clean/",
            "format": "16-bit RGB PNG, perturbation rounded toward zero (within eps of the 8-bit clean crop)"},
        "not_done": not_done,
        "versions": library_versions(),
        "seconds": {"total": round(time.perf_counter() - started, 2), **collected.seconds},
    }
    write_report(report, collected, out)
    return report


def evaluate_run(run_dir: Path, data: Path, out: Path, settings: EvalSettings | None = None, *,
                 checkpoint: str = "best", on_progress: Progress | None = None) -> dict:
    """Evaluate a `trainer fit` run on DATA/split and write the report folder `out`; return the
    report (metrics.json's content)."""
    from trainer.export.bundle import load_run_model

    started = time.perf_counter()
    settings = settings or EvalSettings()
    _check_settings(settings)
    run = load_run_model(Path(run_dir), checkpoint)
    size = int(run.config["size"])
    try:
        torch_device = resolve_device(settings.device)
    except ValueError as exc:
        raise EvaluationError(str(exc)) from None
    unet = load_unet_attack(Path(run_dir), run.config) if settings.learned_attacks else None
    subject = {"run_dir": str(run_dir), "checkpoint": checkpoint, "epoch": run.epoch,
               "arch": run.config["arch"], "method": run.config.get("method"), "init": run.config.get("init"),
               "size": size, "trained_on": run.config.get("data"), "device": str(torch_device),
               "input": "the dataset crops resized by the run's evaluation transform (torchvision Resize, antialiased)"}
    return _evaluate(TorchScorer(run.model, torch_device), data, out, settings, subject=subject,
                     resize=run_resize(size), learned=[unet] if unet else [],
                     threshold_rule=f"a crop or video is called fake when P(fake) >= {RUN_THRESHOLD}",
                     not_done=[], started=started, on_progress=on_progress)


def evaluate_bundle(bundle_dir: Path, data: Path, out: Path, settings: EvalSettings | None = None, *,
                    on_progress: Progress | None = None) -> dict:
    """Evaluate an exported bundle, scored as `forensic scan` scores face crops, on DATA/split
    and write the report folder `out`; return the report."""
    started = time.perf_counter()
    settings = settings or EvalSettings()
    _check_settings(settings)
    if settings.device not in ("auto", "cpu", "cuda"):
        raise EvaluationError(f"--device must be auto, cpu or cuda, not {settings.device!r}")
    bundle = load_bundle(Path(bundle_dir))
    scorer = BundleScorer(bundle, settings.device, settings.batch_size)
    total_weight = sum(entry.weight for entry in bundle.models)
    trainings = {entry["name"]: entry.get("training") or {} for entry in bundle.manifest["models"]}
    models = [{"name": entry.name, "arch": entry.arch, "weight": entry.weight / total_weight,
               "temperature": entry.temperature, "bias": entry.bias,
               "method": trainings[entry.name].get("method"), "run": trainings[entry.name].get("run"),
               "epoch": trainings[entry.name].get("epoch"),
               "gradient_graph": entry.gradient_graph or f"none: {entry.gradient_graph_missing or 'not exported'}"}
              for entry in bundle.models]
    spec = bundle.manifest["input"]
    subject = {"bundle": {"path": str(bundle_dir), "name": bundle.name, "sha256": bundle.sha256,
                          "decision_threshold": bundle.threshold,
                          "temperature": float(bundle.manifest.get("temperature", 1.0)),
                          "uncertain_band": bundle.uncertain_band, "models": models},
               "arch": "+".join(dict.fromkeys(m["arch"] for m in models)),
               "method": "+".join(dict.fromkeys(str(m["method"]) for m in models)),
               "size": bundle.input_size, "device": "+".join(scorer.runner.providers),
               "input": (f"the dataset crops brought to {bundle.input_size} px as forensic scan makes its crops "
                         f"(crop_face: cv2 INTER_AREA when shrinking, else INTER_LINEAR); pixels in [0, 1], "
                         f"normalised with mean {spec['mean']} and std {spec['std']} "
                         f"{'inside the graph' if spec['normalize_in_graph'] else 'by EnsembleRunner'}")}
    rule = (f"a crop or video is called fake when the calibrated ensemble P(fake) >= {bundle.threshold:.6g}, "
            f"the bundle's decision_threshold (its uncertain band ±{bundle.uncertain_band:g} is not used)")
    not_done = ["U-Net attack: a bundle does not carry the dual-attacker's U-Net (evaluate the run for it)"]
    return _evaluate(scorer, data, out, settings, subject=subject, resize=_bundle_resize(bundle.input_size),
                     learned=[], threshold_rule=rule, not_done=not_done, started=started, on_progress=on_progress)


# ----------------------------------------------------------------------------------- writing

def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


def write_report(report: dict, collected: Collected, out: Path) -> None:
    """metrics.json, metrics.csv, scores.csv, the PNG plots (when matplotlib is installed) and
    index.html into `out`."""
    out.mkdir(parents=True, exist_ok=True)
    report["plots"] = write_plots(report, collected, out)
    (out / "metrics.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    with open(out / "metrics.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["condition", "kind", "accuracy", "auc", "n"])
        writer.writeheader()
        writer.writerows(condition_rows(report))
    with open(out / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        keys = list(collected.scores)
        writer.writerow(["crop", "video", "label", *keys])
        for i, name in enumerate(collected.names):
            writer.writerow([name, video_id(name), int(collected.labels[i]),
                             *(f"{collected.scores[k][i]:.6f}" for k in keys)])
    (out / "index.html").write_text(render_html(report, out))


def write_plots(report: dict, collected: Collected, out: Path) -> list[str]:
    """The PNG plots; [] when matplotlib is not installed."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    written = []

    def save(figure, name: str) -> None:
        figure.tight_layout()
        figure.savefig(out / name, dpi=100)
        plt.close(figure)
        written.append(name)

    y = collected.labels
    threshold = collected.threshold
    clean = report["clean"]["frame"]
    attacks = report.get("attacks")
    if attacks:
        figure, axis = plt.subplots(figsize=(6, 4))
        families: dict[str, list[dict]] = {}
        for result in attacks["results"]:
            families.setdefault(result["family"], []).append(result)
        markers = {"square": ("*", " (black-box)"), "unet": ("D", " (learned)")}
        for family, results in families.items():
            results = sorted(results, key=lambda r: r["eps"])
            marker, suffix = markers.get(family, ("o", ""))
            alone = family in markers
            axis.plot([r["eps"] for r in results], [r["accuracy"] for r in results], marker=marker,
                      linestyle="" if alone else "-", markersize=10 if alone else 5, label=family + suffix)
        axis.axhline(clean["accuracy"], color="grey", linestyle="--", label="clean")
        axis.set_xscale("log")
        axis.set_xlabel("ε (L∞, pixels in [0, 1])")
        axis.set_ylabel("robust accuracy")
        axis.set_ylim(-0.02, 1.02)
        axis.set_title("Accuracy vs ε per attack")
        axis.legend(fontsize=8)
        save(figure, "accuracy_vs_eps.png")

    if clean["auc"] is not None:
        figure, axis = plt.subplots(figsize=(5, 5))
        fpr, tpr, _ = roc_curve(y, collected.scores["clean"])
        axis.plot(fpr, tpr, label=f"clean (AUC {clean['auc']:.3f})")
        worst = (attacks or {}).get("worst_case", {}).get("auc_attack")
        if worst:
            fpr, tpr, _ = roc_curve(y, collected.scores[worst])
            axis.plot(fpr, tpr, label=f"{worst} (AUC {attacks['worst_case']['auc']:.3f})")
        axis.plot([0, 1], [0, 1], color="grey", linestyle=":")
        axis.set_xlabel("false-positive rate")
        axis.set_ylabel("true-positive rate")
        axis.set_title("ROC: clean vs worst attack")
        axis.legend(fontsize=8, loc="lower right")
        save(figure, "roc.png")

    if report.get("corruptions"):
        results = report["corruptions"]["results"]
        figure, axis = plt.subplots(figsize=(8, 4))
        positions = np.arange(len(results))
        axis.bar(positions - 0.2, [r["accuracy"] for r in results], 0.4, label="accuracy")
        axis.bar(positions + 0.2, [r["auc"] if r["auc"] is not None else 0 for r in results], 0.4, label="AUC")
        axis.axhline(clean["accuracy"], color="C0", linestyle="--", linewidth=1, label="clean accuracy")
        if clean["auc"] is not None:
            axis.axhline(clean["auc"], color="C1", linestyle="--", linewidth=1, label="clean AUC")
        axis.set_xticks(positions, [r["name"] for r in results], rotation=30, ha="right", fontsize=8)
        axis.set_ylim(0, 1.3)
        axis.set_title("Corruptions")
        axis.legend(fontsize=8, loc="upper center", ncol=4)
        save(figure, "corruptions.png")

    figure, axis = plt.subplots(figsize=(6, 4))
    bins = np.linspace(0, 1, 21)
    for label, name in enumerate(CLASSES):
        values = collected.scores["clean"][y == label]
        if len(values):
            axis.hist(values, bins=bins, alpha=0.6, label=f"{name} (n={len(values)})")
    axis.axvline(threshold, color="black", linestyle="--", linewidth=1, label=f"threshold {threshold:.3g}")
    axis.set_xlabel("P(fake), clean")
    axis.set_ylabel("crops")
    axis.set_title("Score histograms per class")
    axis.legend(fontsize=8)
    save(figure, "score_histograms.png")

    figure, axis = plt.subplots(figsize=(4, 4))
    matrix = np.array(clean["confusion_matrix"]["matrix"])
    axis.imshow(matrix, cmap="Blues")
    for (row, col), value in np.ndenumerate(matrix):
        axis.text(col, row, str(value), ha="center", va="center",
                  color="white" if value > matrix.max() / 2 else "black", fontsize=14)
    axis.set_xticks([0, 1], ["real", "fake"])
    axis.set_yticks([0, 1], ["real", "fake"])
    axis.set_xlabel(f"predicted (P(fake) >= {threshold:.3g})")
    axis.set_ylabel("true")
    axis.set_title("Confusion matrix (frames)")
    save(figure, "confusion_matrix.png")
    return written


def fmt(value, digits: int = 4) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return "passed" if value else "FAILED"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _table(headers: list[str], rows: list[list], row_classes: list[str | None] | None = None) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    classes = row_classes or [None] * len(rows)
    body = "".join((f"<tr class='{css}'>" if css else "<tr>") + "".join(f"<td>{html.escape(fmt(c))}</td>" for c in row)
                   + "</tr>" for row, css in zip(rows, classes))
    return f"<table><tr>{head}</tr>{body}</table>"


def _clean_rows(metrics: dict) -> list[list]:
    ci = metrics["auc_ci95"]
    cm = metrics["confusion_matrix"]
    return [["n (real / fake)", f"{metrics['n']} ({metrics['counts']['real']} / {metrics['counts']['fake']})"],
            [f"accuracy (P(fake) >= {metrics['threshold']:.4g})", metrics["accuracy"]], ["ROC-AUC", metrics["auc"]],
            ["ROC-AUC 95% CI", f"{ci[0]:.4f} – {ci[1]:.4f}" if ci else None],
            ["TPR at 1% FPR", metrics["tpr_at_1pct_fpr"]], ["EER", metrics["eer"]],
            ["average precision", metrics["average_precision"]], ["log-loss", metrics["log_loss"]],
            ["confusion (tn fp / fn tp)", f"{cm['tn']} {cm['fp']} / {cm['fn']} {cm['tp']}"]]


def check_lines(masking: dict | None) -> list[tuple[str, bool | None, str]]:
    """(check, passed, numbers) for printing and the HTML table."""
    if not masking:
        return []
    lines = []
    pairs = masking["more_steps"]["pairs"]
    lines.append(("more PGD steps not weaker", masking["more_steps"]["passed"],
                  "; ".join(f"{p['more']} {p['more_accuracy']:.3f} vs {p['fewer']} {p['fewer_accuracy']:.3f}" for p in pairs)
                  or "no pairs"))
    pairs = masking["pgd_vs_fgsm"]["pairs"]
    lines.append(("PGD at least as strong as FGSM", masking["pgd_vs_fgsm"]["passed"],
                  "; ".join(f"{p['pgd']} {p['pgd_accuracy']:.3f} vs {p['fgsm']} {p['fgsm_accuracy']:.3f}" for p in pairs)
                  or "no pairs"))
    gradient = masking["nonzero_gradients"]
    lines.append(("non-zero input gradients", gradient["passed"],
                  f"mean |grad| {gradient['mean_abs_gradient']:.3e}, crops with zero gradient "
                  f"{gradient['zero_gradient_crop_fraction']:.2f}" if "mean_abs_gradient" in gradient
                  else gradient.get("reason", "")))
    black = masking["black_box"]
    lines.append(("black-box no stronger than white-box", black["passed"],
                  f"{black['black_box']} {black['black_box_accuracy']:.3f} vs {black['white_box']} "
                  f"{black['white_box_accuracy']:.3f}" if "black_box_accuracy" in black else black.get("reason", "")))
    return lines


def masking_table_html(masking: dict | None) -> str:
    """The gradient-masking checks as an HTML table; a failed check's row has class 'fail' (red)."""
    lines = check_lines(masking)
    rows = [[name, "not checked" if passed is None else passed, numbers] for name, passed, numbers in lines]
    return _table(["check", "result", "numbers"], rows, ["fail" if passed is False else None for _, passed, _ in lines])


STYLE = """
body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px;color:#222}
h1{font-size:1.4em} h2{font-size:1.1em;margin-top:1.6em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
img{max-width:100%;margin:.5em 0;border:1px solid #eee} code{font-size:.85em}
tr.fail td{color:#b00020;background:#fde7e9;font-weight:600}
p.fail{color:#b00020;font-weight:600}
.heatmaps figure{display:inline-block;margin:0 .6em .6em 0;font-size:.8em}
.heatmaps img{width:256px;image-rendering:pixelated}
"""


def _subject_html(report: dict) -> tuple[str, list[list]]:
    """The page's title line and the rows saying what was evaluated."""
    bundle = report.get("bundle")
    if bundle:
        title = f"Evaluation of bundle {bundle['name']} ({bundle['path']}, manifest sha256 {bundle['sha256'][:12]})"
        rows = [["models", "; ".join(f"{m['name']} ({m['arch']}, {m['method']}, weight {m['weight']:.3f}, "
                                      f"temperature {m.get('temperature', 1.0):.4g}, bias {m.get('bias', 0.0):.4g}, "
                                      f"gradient graph: {m['gradient_graph']})" for m in bundle["models"])],
                ["temperature (bundle; after each model's own)", bundle["temperature"]], ["decision threshold (manifest)", bundle["decision_threshold"]]]
        return title, rows
    title = f"Evaluation of {report['run_dir']} ({report['checkpoint']}, epoch {report['epoch']})"
    return title, [["arch", report["arch"]], ["method", report["method"]]]


def _heatmaps_html(heatmaps: dict | None) -> list[str]:
    if not heatmaps:
        return []
    e = html.escape
    parts = ["<h2>Heatmaps</h2>"]
    if heatmaps.get("skipped"):
        return parts + [f"<p>Not drawn: {e(heatmaps['skipped'])}</p>"]
    parts.append(f"<p>{e(heatmaps['method'])}; {e(heatmaps['sample'])}.</p>")
    for key, title, _, _ in CELLS:
        files = [f for f in heatmaps["files"] if f["cell"] == key]
        parts.append(f"<h3>{e(title)} ({len(files)})</h3><div class='heatmaps'>" + "".join(
            f"<figure><img src='{e(f['file'])}' alt='{e(f['crop'])}'><figcaption>{e(f['crop'])}<br>"
            f"{e(f['label'])}, P(fake) {f['p_fake']:.3f}</figcaption></figure>" for f in files) + "</div>")
    return parts


def render_html(report: dict, out: Path) -> str:
    """index.html: the tables, and only the plots and heatmaps that exist in `out`."""
    e = html.escape
    title, subject_rows = _subject_html(report)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>trainer eval: {e(report['arch'])}</title>"
             f"<style>{STYLE}</style></head><body>", f"<h1>{e(title)}</h1>",
             _table(["setting", "value"], [
                 *subject_rows, ["data", f"{report['data']} ({report['split']})"],
                 ["crops (real / fake)", f"{report['counts']['crops']['real']} / {report['counts']['crops']['fake']}"],
                 ["input", report.get("input")], ["subset", report["subset"]], ["seed", report["seed"]],
                 ["device", report["device"]], ["decision rule", report["threshold_rule"]], ["created", report["created"]]])]
    clean = report["clean"]
    parts.append("<h2>Clean</h2>")
    video = clean.get("video")
    headers = ["metric", "frame level"] + (["video level"] if video else [])
    frame_rows = _clean_rows(clean["frame"])
    rows = [row + ([_clean_rows(video)[i][1]] if video else []) for i, row in enumerate(frame_rows)]
    parts.append(_table(headers, rows))
    if clean.get("video_skipped"):
        parts.append(f"<p>Video level not computed: {e(clean['video_skipped'])}</p>")
    white_box = report.get("white_box") or {}
    if white_box.get("skipped_attacks"):
        parts.append(f"<p class='fail'>Black-box only: white-box attacks ({len(white_box['skipped_attacks'])}) not run "
                     f"because {e(white_box['missing'])}.</p>")
    if report.get("attacks"):
        attacks = report["attacks"]
        parts.append("<h2>Attacks (frame level)</h2>")
        if white_box.get("attacked_loss"):
            parts.append(f"<p>White-box attacks ascend the gradient of: {e(white_box['attacked_loss'])}.</p>")
        parts.append(_table(["attack", "box", "accuracy", "AUC", "Δ accuracy", "Δ AUC", "success rate", "n"],
                            [[r["name"], r["box"], r["accuracy"], r["auc"], r["accuracy_drop"], r["auc_drop"],
                              r["success_rate"], r["n"]] for r in attacks["results"]]))
        worst = attacks["worst_case"]
        parts.append(f"<p>Worst case: accuracy {fmt(worst['accuracy'])} ({e(worst['accuracy_attack'])}), "
                     f"AUC {fmt(worst['auc'])} ({e(str(worst['auc_attack']))}); correct clean and under every "
                     f"attack: {fmt(worst['per_crop_accuracy'])}</p>")
        masking = report["gradient_masking"]
        failed = [name for name, passed, _ in check_lines(masking) if passed is False]
        parts.append("<h2>Gradient-masking checks</h2>")
        if failed:
            parts.append(f"<p class='fail'>{len(failed)} check(s) FAILED ({e(', '.join(failed))}): the white-box "
                         f"robust accuracies above may overstate robustness.</p>")
        parts.append(masking_table_html(masking))
        parts.append(f"<p>Tolerance {fmt(masking['tolerance'])} ({e(masking['tolerance_rule'])}).</p>")
    adversarial = report.get("adversarial_examples")
    if adversarial:
        parts.append(f"<p>Adversarial examples: {adversarial['files']} files in <code>{e(adversarial['folder'])}</code> "
                     f"({e(adversarial['rule'])}; {e(adversarial['format'])}).</p>")
    if report.get("corruptions"):
        parts.append("<h2>Corruptions (frame level)</h2>")
        parts.append(_table(["corruption", "accuracy", "AUC", "Δ accuracy", "Δ AUC", "n"],
                            [[r["name"], r["accuracy"], r["auc"], r["accuracy_drop"], r["auc_drop"], r["n"]]
                             for r in report["corruptions"]["results"]]))
        parts.append(f"<p>{e(report['corruptions']['applied_to'])}.</p>")
    heatmaps = report.get("heatmaps")
    if heatmaps:
        heatmaps = {**heatmaps, "files": [f for f in heatmaps["files"] if (out / f["file"]).is_file()]}
    parts.extend(_heatmaps_html(heatmaps))
    plots = [name for name in report.get("plots", []) if (out / name).is_file()]
    if plots:
        parts.append("<h2>Plots</h2>")
        parts.extend(f"<div><img src='{e(name)}' alt='{e(name)}'></div>" for name in plots)
    links = [name for name in ("metrics.json", "metrics.csv", "scores.csv") if (out / name).is_file()]
    if links:
        parts.append("<p>Data: " + ", ".join(f"<a href='{e(n)}'>{e(n)}</a>" for n in links) + "</p>")
    if report["not_done"]:
        parts.append("<h2>Not done</h2><ul>" + "".join(f"<li>{e(item)}</li>" for item in report["not_done"]) + "</ul>")
    parts.append("<h2>Versions</h2>" + _table(["library", "version"], [[k, v] for k, v in report["versions"].items()]))
    parts.append("</body></html>\n")
    return "\n".join(parts)


# ------------------------------------------------------------------------------------ compare

def load_report(path: Path) -> dict:
    path = Path(path)
    file = path / "metrics.json" if path.is_dir() else path
    try:
        report = json.loads(file.read_text())
    except FileNotFoundError:
        raise EvaluationError(f"{file}: no such report (run `trainer eval` first)") from None
    except json.JSONDecodeError as exc:
        raise EvaluationError(f"{file}: not valid JSON ({exc})") from None
    if not isinstance(report, dict) or report.get("schema") != SCHEMA:
        raise EvaluationError(f"{file}: not a `trainer eval` report (schema {SCHEMA})")
    return report


def compare_reports(paths: list[Path]) -> tuple[list[str], list[list]]:
    """Column names (arch+method, made unique) and rows [label, value per report]."""
    if len(paths) < 1:
        raise EvaluationError("--compare needs at least one report folder")
    reports = [load_report(p) for p in paths]
    names = [f"{'bundle ' if r.get('bundle') else ''}{r['arch']}+{r.get('method') or '?'}" for r in reports]
    columns = [f"{n} ({Path(p).name})" if names.count(n) > 1 else n for n, p in zip(names, paths)]

    def attack(report: dict, name: str, key: str = "accuracy"):
        for result in (report.get("attacks") or {}).get("results", []):
            if result["name"] == name:
                return result[key]
        return None

    def corruption(report: dict, name: str, key: str):
        for result in (report.get("corruptions") or {}).get("results", []):
            if result["name"] == name:
                return result[key]
        return None

    def ordered(kind: str) -> list[str]:
        seen: list[str] = []
        for report in reports:
            for result in (report.get(kind) or {}).get("results", []):
                if result["name"] not in seen:
                    seen.append(result["name"])
        return seen

    rows = [["crops (real / fake)"] + [f"{r['counts']['crops']['real']} / {r['counts']['crops']['fake']}" for r in reports],
            ["decision threshold"] + [r["threshold"] for r in reports],
            ["clean accuracy"] + [r["clean"]["frame"]["accuracy"] for r in reports],
            ["clean AUC"] + [r["clean"]["frame"]["auc"] for r in reports],
            ["video AUC"] + [(r["clean"].get("video") or {}).get("auc") for r in reports]]
    for name in ordered("attacks"):
        rows.append([f"{name} acc"] + [attack(r, name) for r in reports])
    rows.append(["worst-case acc"] + [(r.get("attacks") or {}).get("worst_case", {}).get("accuracy") for r in reports])
    rows.append(["worst-case attack"] + [(r.get("attacks") or {}).get("worst_case", {}).get("accuracy_attack") for r in reports])
    rows.append(["masking checks"] + [_checks_passed(r.get("gradient_masking")) for r in reports])
    for name in ordered("corruptions"):
        rows.append([f"{name} acc"] + [corruption(r, name, "accuracy") for r in reports])
        rows.append([f"{name} AUC"] + [corruption(r, name, "auc") for r in reports])
    return columns, rows


def _checks_passed(masking: dict | None) -> str | None:
    if not masking:
        return None
    verdicts = [masking[k]["passed"] for k in CHECK_NAMES if masking[k]["passed"] is not None]
    return f"{sum(verdicts)}/{len(verdicts)} passed"


def write_compare(columns: list[str], rows: list[list], out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "compare.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["metric", *columns])
        writer.writerows([[row[0], *("" if v is None else v for v in row[1:])] for row in rows])
    lines = ["| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    lines += ["| " + " | ".join([row[0], *(fmt(v) for v in row[1:])]) + " |" for row in rows]
    (out / "compare.md").write_text("\n".join(lines) + "\n")
    return [out / "compare.csv", out / "compare.md"]


# ----------------------------------------------------------------------------------- printing

def summary_table(report: dict):
    """A rich Table: one row per condition (accuracy, AUC, their drops, n)."""
    from rich.table import Table

    table = Table(title=f"{report['arch']}+{report.get('method')}, {report['split']}: "
                        f"{report['counts']['crops']['real']} real / {report['counts']['crops']['fake']} fake crops")
    for header in ("condition", "accuracy", "AUC", "Δ acc", "Δ AUC", "n"):
        table.add_column(header, justify="left" if header == "condition" else "right", no_wrap=True)
    clean = report["clean"]["frame"]
    table.add_row("clean (frames)", fmt(clean["accuracy"]), fmt(clean["auc"]), "", "", str(clean["n"]))
    if report["clean"].get("video"):
        video = report["clean"]["video"]
        table.add_row("clean (videos)", fmt(video["accuracy"]), fmt(video["auc"]), "", "", str(video["n"]))
    for kind in ("attacks", "corruptions"):
        results = (report.get(kind) or {}).get("results", [])
        if results:
            table.add_section()
        for r in results:
            table.add_row(r["name"], fmt(r["accuracy"]), fmt(r["auc"]), fmt(r["accuracy_drop"]), fmt(r["auc_drop"]),
                          str(r["n"]))
    return table


def summary_lines(report: dict) -> list[str]:
    """The headline numbers and the gradient-masking verdicts, one line each."""
    clean = report["clean"]["frame"]
    ci = clean["auc_ci95"]
    lines = [f"accuracy: a crop or video is called fake when P(fake) >= {report['threshold']:.4g}",
             f"clean frames: AUC {fmt(clean['auc'])}" + (f" (95% CI {ci[0]:.4f}-{ci[1]:.4f})" if ci else "")
             + f", TPR@1%FPR {fmt(clean['tpr_at_1pct_fpr'])}, EER {fmt(clean['eer'])}, "
               f"AP {fmt(clean['average_precision'])}, log-loss {fmt(clean['log_loss'])}"]
    video = report["clean"].get("video")
    if video:
        lines.append(f"clean videos ({video['n']}): accuracy {fmt(video['accuracy'])}, AUC {fmt(video['auc'])}, "
                     f"EER {fmt(video['eer'])}")
    elif report["clean"].get("video_skipped"):
        lines.append(f"video level skipped: {report['clean']['video_skipped']}")
    white_box = report.get("white_box") or {}
    if white_box.get("skipped_attacks"):
        lines.append(f"black-box only: {len(white_box['skipped_attacks'])} white-box attacks not run because "
                     f"{white_box['missing']}")
    if report.get("attacks"):
        worst = report["attacks"]["worst_case"]
        lines.append(f"worst case over attacks: accuracy {fmt(worst['accuracy'])} ({worst['accuracy_attack']}), "
                     f"AUC {fmt(worst['auc'])} ({worst['auc_attack']})")
        for name, passed, numbers in check_lines(report["gradient_masking"]):
            verdict = "not checked" if passed is None else ("passed" if passed else "FAILED")
            lines.append(f"gradient masking: {name}: {verdict} ({numbers})")
    heatmaps = report.get("heatmaps")
    if heatmaps:
        lines.append(f"heatmaps: {len(heatmaps['files'])} PNGs in heatmaps/ ({heatmaps['method']})" if heatmaps["files"]
                     else f"heatmaps: none ({heatmaps['skipped']})")
    if report.get("adversarial_examples"):
        adversarial = report["adversarial_examples"]
        lines.append(f"adversarial examples: {adversarial['files']} PNGs in {adversarial['folder']}")
    return lines


def compare_table(columns: list[str], rows: list[list]):
    from rich.table import Table

    table = Table(title="trainer eval --compare")
    table.add_column("metric", no_wrap=True)
    for column in columns:
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(row[0], *(fmt(v) for v in row[1:]))
    return table
