"""Grouped K-fold cross-validation over a `trainer prepare` dataset.

Twelve or twenty validation videos cannot rank candidates (a video AUC interval over 22 videos is
about ±0.2 wide). Cross-validation scores every video once, by a model that never saw its people:

    trainer folds DATA --k 5 --out FOLDS      FOLDS/fold-{i}/{train,validation}/{real,fake}/
                                              (symbolic links to DATA's crops), folds.json
    trainer fit --data FOLDS/fold-0 ...       one run per fold
    trainer eval RUN --data FOLDS/fold-0 --split validation --checkpoint last ...
    trainer pool EVAL-0 EVAL-1 ...            the out-of-fold scores pooled: frame and video AUC
                                              with intervals, each fold's own, and per manipulation
                                              (all reals against each method's fake videos)

Folds are made of whole identity groups (the same union-find as prepare's splits, so `044.mp4`,
`044_945.mp4` and `945.mp4` always share a fold), balanced by video count. The folds draw on the
splits named (default train and validation); the test split is never part of a fold.
Use a fixed epoch count and `--checkpoint last` when scoring folds: picking each fold's best epoch
on the very videos it is scored on would flatter the pooled figure.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Callable, Sequence

import numpy as np

from trainer.data.datasets import CLASSES, SPLITS
from trainer.data.pairing import PAIR_PREFIX
from trainer.data.prepared_folder import DONE_FILE, PREPARE_FILE, SBI_PREFIX, read_records
from trainer.data.sbi import LANDMARKS_FILE
from trainer.data.sources import fake_method, group_videos
from trainer.evaluation.errors import EvaluationError
from trainer.evaluation.metrics import BOOTSTRAP_RESAMPLES, auc_score, video_id
from trainer.evaluation.report import SCORES_FILE, read_scores

FOLDS_FILE = "folds.json"


class FoldsError(Exception):
    """A dataset that cannot be folded as asked, or fold reports that cannot be pooled; one line."""


def _identity_stem(record: dict) -> str:
    name = record["video"]
    if name.startswith(PAIR_PREFIX):  # a paired fake belongs to its real's identity
        return name[len(PAIR_PREFIX):]
    return Path(record["path"]).stem


def assign_folds(groups: Sequence[Sequence], k: int, seed: int = 0) -> list[int]:
    """A fold number for each group, balancing video counts: groups shuffled (seeded), then placed
    largest first into the fold with the fewest videos so far."""
    order = np.random.default_rng(seed).permutation(len(groups)).tolist()
    order.sort(key=lambda i: -len(groups[i]))
    sizes = [0] * k
    result = [0] * len(groups)
    for i in order:
        fold = min(range(k), key=lambda f: (sizes[f], f))
        result[i] = fold
        sizes[fold] += len(groups[i])
    return result


def _link(source: Path, folder: Path) -> None:
    target = folder / source.name
    if not target.is_symlink():
        os.symlink(source.resolve(), target)


def make_folds(data: Path, out: Path, k: int = 5, seed: int = 0, splits: Sequence[str] = ("train", "validation")) -> dict:
    """Write OUT/fold-{i} for i < k (see the module docstring) and OUT/folds.json; return its content."""
    data, out = Path(data), Path(out)
    if k < 2:
        raise FoldsError(f"--k must be at least 2, not {k}")
    unknown = [s for s in splits if s not in SPLITS]
    if unknown or not splits:
        raise FoldsError(f"--splits takes names among {', '.join(SPLITS)}, not {','.join(splits) or 'nothing'}")
    if not (data / PREPARE_FILE).is_file() or not (data / DONE_FILE).is_file():
        raise FoldsError(f"{data}: not a `trainer prepare` folder (no {PREPARE_FILE} and {DONE_FILE})")
    if out.exists() and not (out / FOLDS_FILE).is_file():
        raise FoldsError(f"{out}: exists and is not a `trainer folds` folder (no {FOLDS_FILE}); choose another --out")
    settings = json.loads((data / PREPARE_FILE).read_text()).get("settings", {})
    records = [r for r in read_records(data).values() if r.get("status") == "done" and r.get("split") in splits]
    if not records:
        raise FoldsError(f"{data}: no prepared videos in the {', '.join(splits)} splits")
    groups = group_videos([_identity_stem(r) for r in records], settings.get("group_pattern"))
    if len(groups) < k:
        raise FoldsError(f"{data}: {len(groups)} identity groups in {', '.join(splits)}, fewer than --k {k}")
    fold_of_group = assign_folds(groups, k, seed)
    fold_of_stem = {stem: fold for group, fold in zip(groups, fold_of_group) for stem in group}
    fold_of_video = {r["video"]: fold_of_stem[_identity_stem(r)] for r in records}

    if out.exists():
        shutil.rmtree(out)  # a folds folder is only links and indexes: rebuilt whole, never half-updated
    crops_of = {r["video"]: r for r in records}
    landmarks: dict[tuple[int, str, str], dict] = {}
    for fold in range(k):
        for part in ("train", "validation"):
            for label in CLASSES:
                (out / f"fold-{fold}" / part / label).mkdir(parents=True)
                landmarks[(fold, part, label)] = {}
    for name, record in sorted(crops_of.items()):
        source_dir = data / record["split"] / record["label"]
        for fold in range(k):
            part = "validation" if fold_of_video[name] == fold else "train"
            folder = out / f"fold-{fold}" / part / record["label"]
            for crop, points in record["crops"].items():
                _link(source_dir / crop, folder)
                landmarks[(fold, part, record["label"])][crop] = points
    _link_self_blends(data, out, k, fold_of_video, crops_of, landmarks)
    for (fold, part, label), entries in landmarks.items():
        (out / f"fold-{fold}" / part / label / LANDMARKS_FILE).write_text(json.dumps(dict(sorted(entries.items()))))
    for fold in range(k):
        shutil.copy(data / PREPARE_FILE, out / f"fold-{fold}" / PREPARE_FILE)  # export reads the crop margin there
    summary = {
        "data": str(data.resolve()), "k": k, "seed": seed, "splits": list(splits),
        "folds": [{"fold": fold,
                   "groups": sum(1 for f in fold_of_group if f == fold),
                   "videos": sorted(n for n, f in fold_of_video.items() if f == fold),
                   "real_videos": sum(1 for n, f in fold_of_video.items() if f == fold and crops_of[n]["label"] == "real"),
                   "fake_videos": sum(1 for n, f in fold_of_video.items() if f == fold and crops_of[n]["label"] == "fake"),
                   "crops": sum(len(crops_of[n]["crops"]) for n, f in fold_of_video.items() if f == fold)}
                  for fold in range(k)],
    }
    (out / FOLDS_FILE).write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _link_self_blends(data: Path, out: Path, k: int, fold_of_video: dict, crops_of: dict, landmarks: dict) -> None:
    """prepare --sbi's train/fake/sbi-{real crop stem}_{n}.png go with their real crop, to the
    training side of every fold that trains on that real (a self-blend is never validated on)."""
    fake_dir = data / "train" / "fake"
    crop_video = {crop: name for name, record in crops_of.items() if record["split"] == "train"
                  for crop in record["crops"]}
    marks_path = fake_dir / LANDMARKS_FILE
    marks = json.loads(marks_path.read_text()) if marks_path.is_file() else {}
    for path in sorted(fake_dir.glob(f"{SBI_PREFIX}*.png")):
        real_crop = path.stem[len(SBI_PREFIX):].rsplit("_", 1)[0] + ".png"
        name = crop_video.get(real_crop)
        if name is None or crops_of[name]["label"] != "real":
            continue
        for fold in range(k):
            if fold_of_video[name] != fold:
                _link(path, out / f"fold-{fold}" / "train" / "fake")
                landmarks[(fold, "train", "fake")][path.name] = marks.get(path.name)


# ------------------------------------------------------------------------------------ pooling

def _read_scores(report_dir: Path) -> tuple[list[str], np.ndarray, np.ndarray]:
    path = Path(report_dir) / SCORES_FILE
    try:
        rows = read_scores(path)
    except EvaluationError as exc:
        raise FoldsError(f"{exc}; give `trainer eval` report folders") from None
    if not rows:
        raise FoldsError(f"{path}: no scores (an empty `trainer eval` {SCORES_FILE})")
    return [r[0] for r in rows], np.array([r[2] for r in rows]), np.array([r[3] for r in rows])


def grouped_auc_ci(labels: np.ndarray, scores: np.ndarray, groups: np.ndarray, resamples: int,
                    seed: int, minus: np.ndarray | None = None) -> tuple[float, float] | None:
    """Percentile interval of the AUC over bootstrap resamples of whole videos (a video's frames
    are not independent, so resampling frames would give too narrow an interval). With `minus`
    (a second detector's scores of the same crops): the interval of AUC(scores) - AUC(minus), both
    on each resample, so a paired difference is not judged by two overlapping intervals."""
    from sklearn.metrics import roc_auc_score

    def statistic(chosen: np.ndarray) -> float:
        value = roc_auc_score(labels[chosen], scores[chosen])
        return value if minus is None else value - roc_auc_score(labels[chosen], minus[chosen])

    return grouped_bootstrap_ci(labels, groups, resamples, seed, statistic)


def grouped_bootstrap_ci(labels: np.ndarray, groups: np.ndarray, resamples: int, seed: int,
                         statistic: Callable[[np.ndarray], float]) -> tuple[float, float] | None:
    """95 % percentile interval of `statistic(indices)` over bootstrap resamples of whole groups
    (videos); resamples with one class only are skipped; None when every one was."""
    unique = np.unique(groups)
    index = {g: np.flatnonzero(groups == g) for g in unique}
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(resamples):
        chosen = np.concatenate([index[g] for g in rng.choice(unique, len(unique))])
        if len(np.unique(labels[chosen])) == 2:
            values.append(statistic(chosen))
    if not values:
        return None
    return float(np.quantile(values, 0.025)), float(np.quantile(values, 0.975))


def pool_reports(report_dirs: Sequence[Path], threshold: float = 0.5, resamples: int = BOOTSTRAP_RESAMPLES,
                 seed: int = 0) -> dict:
    """Frame and video AUC (intervals by resampling videos), accuracy at `threshold`, over the
    pooled clean scores of the given `trainer eval` reports, and each report's own figures.
    A crop scored by two reports is an error: folds must not overlap."""
    if len(report_dirs) < 2:
        raise FoldsError("give the evaluation folders of two or more folds")
    names: list[str] = []
    labels, scores, per_fold = [], [], []
    for report in report_dirs:
        crops, y, s = _read_scores(report)
        overlap = set(crops) & set(names)
        if overlap:
            raise FoldsError(f"{report}: scores {len(overlap)} crops another fold scored too "
                             f"(e.g. {sorted(overlap)[0]}); the folds overlap")
        names += crops
        labels.append(y)
        scores.append(s)
        per_fold.append({"report": str(report), "crops": len(crops), "auc": auc_score(y, s)})
    y, s = np.concatenate(labels), np.concatenate(scores)
    videos = np.array([video_id(n) for n in names])
    ids = sorted(set(videos))
    video_label = np.array([y[videos == v][0] for v in ids])
    video_score = np.array([s[videos == v].mean() for v in ids])
    return {
        "folds": per_fold,
        "by_method": by_method(np.array(ids), video_label, video_score, threshold, resamples, seed),
        "frames": {"n": len(y), "real": int((y == 0).sum()), "fake": int((y == 1).sum()), "auc": auc_score(y, s),
                   "auc_ci95": grouped_auc_ci(y, s, videos, resamples, seed),
                   "accuracy": float(((s >= threshold) == y).mean())},
        "videos": {"n": len(ids), "real": int((video_label == 0).sum()), "fake": int((video_label == 1).sum()),
                   "auc": auc_score(video_label, video_score),
                   "auc_ci95": grouped_auc_ci(video_label, video_score, np.array(ids), resamples, seed),
                   "accuracy": float(((video_score >= threshold) == video_label).mean())},
        "threshold": threshold,
        "ci_method": f"bootstrap over videos, {resamples} resamples, percentile, seed {seed}",
    }


def by_method(ids: np.ndarray, labels: np.ndarray, scores: np.ndarray, threshold: float, resamples: int,
               seed: int) -> dict[str, dict]:
    """Per manipulation (the fakes' sub-folder, as `trainer prepare` names them): every real video
    against that method's fake videos. Empty unless the fakes come from two or more methods."""
    methods = np.array([fake_method(v) if label == 1 else None for v, label in zip(ids, labels)], dtype=object)
    named = sorted({m for m in methods if m is not None})
    if len(named) < 2:
        return {}
    result = {}
    for method in named:
        keep = (labels == 0) | (methods == method)
        y, s = labels[keep], scores[keep]
        result[method] = {"fake": int((methods == method).sum()), "real": int((y == 0).sum()), "auc": auc_score(y, s),
                          "auc_ci95": grouped_auc_ci(y, s, ids[keep], resamples, seed),
                          "fakes_right": float((scores[methods == method] >= threshold).mean())}
    return result


def pool_lines(pooled: dict) -> list[str]:
    """What `trainer pool` prints."""
    def ci(part: dict) -> str:
        return f" ({part['auc_ci95'][0]:.3f}-{part['auc_ci95'][1]:.3f})" if part["auc_ci95"] else ""

    lines = [f"fold {i}: {f['crops']} crops, AUC {f['auc']:.3f}" if f["auc"] is not None
             else f"fold {i}: {f['crops']} crops, one class only" for i, f in enumerate(pooled["folds"])]
    for key in ("frames", "videos"):
        part = pooled[key]
        auc = f"AUC {part['auc']:.3f}{ci(part)}" if part["auc"] is not None else "AUC n/a (one class)"
        lines.append(f"pooled {key}: {part['n']} ({part['real']} real, {part['fake']} fake), {auc}, "
                     f"accuracy {part['accuracy']:.3f} at {pooled['threshold']}")
    for method, part in pooled.get("by_method", {}).items():
        auc = f"AUC {part['auc']:.3f}{ci(part)}" if part["auc"] is not None else "AUC n/a (one class)"
        lines.append(f"pooled videos, {method}: {part['fake']} fake against {part['real']} real, {auc}, "
                     f"fakes right {part['fakes_right']:.3f} at {pooled['threshold']}")
    lines.append(f"intervals: {pooled['ci_method']}")
    return lines
