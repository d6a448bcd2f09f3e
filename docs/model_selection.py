"""How the default bundle's members were chosen: identity-grouped cross-validation on the
FaceForensics++ train + validation videos (never the test split).

Twelve validation videos (three identity groups) proved too few to rank candidates: the model
they picked scored 0.815 validation frame AUC and 0.585 on the test split. This script measures
on all 72 train + validation videos instead:

1. Linear probes (scikit-learn logistic regression, balanced classes, flip-augmented) on frozen
   EfficientNet-Lite0 ImageNet features pooled after blocks 2-6 and after the head convolution
   (mean, std or both over the spatial map), scored out-of-fold with 6-fold cross-validation
   grouped by identity (GroupKFold over trainer.data.sources.group_videos): no identity is ever
   scored by a probe that saw it. The `blocks.4 mean` probe is the `efficientnet_lite0_mid`
   member's architecture.
2. Optionally a run trained without any FaceForensics++ face (`--sbi-run`, the self-blended
   LFW member): all 72 videos are held out for it, and it is averaged with each probe's
   out-of-fold scores (z-scored logits, equal weights) to see whether the two are complementary.

Frame AUC over all out-of-fold crops, the mean and spread of the per-fold AUCs, video AUC
(mean logit of a video's crops) and the AUC of each manipulation method against the reals.

    python docs/model_selection.py --data build/default/data [--sbi-run build/default/sbi-lfw]

13 min of CPU time (21 min wall on the 2-core machine while other jobs ran); feature extraction dominates.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler
from torch.utils.data import DataLoader

from trainer.data.datasets import FaceCrops, eval_transform, list_split
from trainer.export.bundle import load_run_model
from trainer.models import create_model
from trainer.data.sources import group_videos

TAPS = ("blocks.2", "blocks.3", "blocks.4", "blocks.5", "blocks.6", "head")
STATS = ("mean", "std", "both")
C_VALUES = (0.003, 0.03, 0.3)
FOLDS = 6
METHODS = ("Deepfakes", "Face2Face", "FaceSwap")


def frozen_features(loader: DataLoader) -> dict[str, np.ndarray]:
    """{tap}/{flip}: (N, 2C) spatial mean and std of each tap, for the crops and their mirror images."""
    detector = create_model("efficientnet_lite0").eval()  # offline ImageNet weights
    backbone = detector.backbone
    out: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for pixels, _ in loader:
            for flip in (0, 1):
                x = ((pixels.flip(3) if flip else pixels) - detector.mean) / detector.std
                h = backbone.bn1(backbone.conv_stem(x))
                maps = {}
                for index, block in enumerate(backbone.blocks):
                    h = block(h)
                    maps[f"blocks.{index}"] = h
                maps["head"] = backbone.bn2(backbone.conv_head(h))
                for tap in TAPS:
                    pooled = torch.cat([maps[tap].mean((2, 3)), maps[tap].std((2, 3))], 1)
                    out.setdefault(f"{tap}/{flip}", []).append(pooled.numpy())
    return {key: np.concatenate(parts) for key, parts in out.items()}


def select(features: dict[str, np.ndarray], tap: str, flip: int, stats: str) -> np.ndarray:
    pooled = features[f"{tap}/{flip}"]
    half = pooled.shape[1] // 2
    return {"mean": pooled[:, :half], "std": pooled[:, half:], "both": pooled}[stats]


def out_of_fold(features, labels, groups, tap: str, stats: str, c: float) -> tuple[np.ndarray, list[float]]:
    """Out-of-fold decision values of a flip-augmented probe, and each fold's AUC."""
    plain, mirrored = select(features, tap, 0, stats), select(features, tap, 1, stats)
    scores, fold_aucs = np.zeros(len(labels)), []
    for train, held_out in GroupKFold(n_splits=FOLDS).split(plain, labels, groups):
        x = np.concatenate([plain[train], mirrored[train]])
        y = np.concatenate([labels[train], labels[train]])
        scaler = StandardScaler().fit(x)
        probe = LogisticRegression(C=c, max_iter=5000, class_weight="balanced").fit(scaler.transform(x), y)
        scores[held_out] = probe.decision_function(scaler.transform(plain[held_out]))
        fold_aucs.append(roc_auc_score(labels[held_out], scores[held_out]))
    return scores, fold_aucs


def run_logits(run_dir: Path, loader: DataLoader) -> np.ndarray:
    """fake − real logit of a run's final checkpoint for every crop."""
    model = load_run_model(run_dir, "final").model
    with torch.no_grad():
        return np.concatenate([(z[:, 1] - z[:, 0]).numpy() for z in (model(pixels) for pixels, _ in loader)])


def summary(name: str, scores: np.ndarray, labels, videos, methods, fold_aucs=None) -> str:
    names = sorted(set(videos))
    video_scores = [scores[videos == v].mean() for v in names]
    video_labels = [labels[videos == v][0] for v in names]
    per_method = []
    for method in METHODS:
        keep = (methods == "real") | (methods == method)
        per_method.append(f"{method} {roc_auc_score(labels[keep], scores[keep]):.3f}")
    folds = f"folds {np.mean(fold_aucs):.3f}±{np.std(fold_aucs):.3f}  " if fold_aucs else ""
    return (f"{name:42s} frames {roc_auc_score(labels, scores):.3f}  {folds}"
            f"videos {roc_auc_score(video_labels, video_scores):.3f}  " + "  ".join(per_method))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, required=True, help="trainer prepare output (FF++ crops)")
    parser.add_argument("--sbi-run", type=Path, help="a run trained without FF++ faces, averaged with the probes")
    args = parser.parse_args()

    samples = list_split(args.data, "train") + list_split(args.data, "validation")
    labels = np.array([s.label for s in samples])
    videos = np.array([re.sub(r"_\d+_\d+$", "", s.path.stem) for s in samples])  # {video}_{frame}_{face}
    video_names = sorted(set(videos))
    # Group by the FF++ stem (044_945), not the crop prefix: "Face2Face" holds a digit of its own.
    stems = sorted({v.split("-")[-1] for v in video_names})
    group_of_stem = {stem: g for g, members in enumerate(group_videos(stems)) for stem in members}
    group_of = {v: group_of_stem[v.split("-")[-1]] for v in video_names}
    groups = np.array([group_of[v] for v in videos])
    methods = np.array([v.split("-")[0] if "-" in v else "real" for v in videos])
    print(f"{len(samples)} crops ({(labels == 0).sum()} real / {(labels == 1).sum()} fake) of "
          f"{len(video_names)} videos in {len(set(groups))} identity groups; {FOLDS}-fold grouped CV")

    loader = DataLoader(FaceCrops(samples, eval_transform(224)), batch_size=32)
    features = frozen_features(loader)
    # The three probes the model card pairs with the SBI member: the lite0_mid member's own
    # architecture (blocks.4 mean) and the two best-scoring other taps.
    paired = {("blocks.4", "mean", 0.03), ("blocks.3", "both", 0.03), ("blocks.5", "both", 0.003)}
    paired_scores: dict[str, np.ndarray] = {}
    for tap in TAPS:
        for stats in STATS:
            for c in C_VALUES:
                scores, folds = out_of_fold(features, labels, groups, tap, stats, c)
                name = f"probe {tap} {stats} C={c}"
                print(summary(name, scores, labels, videos, methods, folds), flush=True)
                if (tap, stats, c) in paired:
                    paired_scores[name] = scores
    if args.sbi_run:
        sbi = run_logits(args.sbi_run, loader)
        print(summary(f"{args.sbi_run.name} (no FF++ training face)", sbi, labels, videos, methods))
        z = lambda a: (a - a.mean()) / a.std()  # noqa: E731
        for name, scores in paired_scores.items():
            print(summary(f"mean of {args.sbi_run.name} and {name}", (z(sbi) + z(scores)) / 2, labels, videos, methods))


if __name__ == "__main__":
    main()
