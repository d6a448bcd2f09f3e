"""Clean metrics, at frame level (each crop) and video level (the mean P(fake) of a video's crops,
not forensic scan's per-identity aggregation; a crop's video is its file name up to the last two
`_`-separated fields, as `trainer prepare` names crops `{video}_{frame:04d}_{face}.png`; every
crop of a video must carry the same label): accuracy, ROC-AUC with a stratified bootstrap 95 %
percentile interval (1000 resamples of each class with replacement, seeded), TPR at 1 % FPR (the
highest TPR of a ROC point whose FPR is <= 1 %), EER (the ROC point where FPR and FNR = 1 − TPR
are closest; their mean), average precision, log-loss (P clipped to [1e-7, 1 − 1e-7]), the
confusion matrix and the counts per class. When a video's crops disagree in label, the video
level is skipped with the reason recorded.

Decision rule: a crop (or a video) is called fake when P(fake) >= the threshold: RUN_THRESHOLD
(0.5) for a run, the manifest's decision_threshold for a bundle. Accuracy, the confusion matrix
and attack success rates use it; the ranking metrics (ROC-AUC, average precision, EER, TPR at
1 % FPR) do not depend on it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Iterable

import numpy as np
from sklearn.metrics import average_precision_score, confusion_matrix, log_loss, roc_auc_score, roc_curve

from trainer.data.datasets import CLASSES
from trainer.evaluation.errors import EvaluationError

BOOTSTRAP_RESAMPLES = 1000
RUN_THRESHOLD = 0.5  # a run calls a crop fake at P(fake) >= 0.5 (a bundle: its decision_threshold)


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
