"""Where each source would put the decision threshold, and what given thresholds do on each
(`trainer eval` scores.csv files, pooled; FF++ and DFDC crops told apart by name):

    python scripts/threshold_by_source.py SCORES.csv... [--temperature T | --calibration MANIFEST]
                                          [--at 0.41 0.5 0.6] [--aggregate mean|confident|max] [--best]

Scores are P(fake) at temperature 1 (a run's, as `trainer eval RUN` writes them); --temperature
applies a bundle's calibration to them first (P = sigmoid(logit / T)), so that out-of-fold scores
of the fold models can be read at the bundle's threshold; for an ensemble, files joined by "+" with
--calibration MANIFEST average the members as that bundle does (`compare_scores.py`'s). A video's score is its calibrated crops'
`--aggregate` (mean unless told, as `forensic scan`; `confident` is the DFDC winner's strategy, by
the scan's own function). Per source: the AUC, the equal-error threshold,
then at each --at threshold the share of reals and of fakes called right and their mean (balanced
accuracy); last, the mean of the sources' balanced accuracies (FF++ frames and DFDC pairs).
--best adds the threshold, on a grid of 0.01, where that mean is highest (the first of equals).

Used for the default bundle's model card: the FF++ folds and the DFDC validation pairs disagree on
where the threshold belongs.
"""

from __future__ import annotations

import argparse
from functools import partial
from pathlib import Path

import numpy as np

from forensic import AGGREGATIONS
from forensic.identities import aggregate
from trainer.evaluation.metrics import auc_score, equal_error_rate

from compare_scores import read, recalibrated, source_arrays  # sibling scripts: `python scripts/...` puts scripts/ on the path
from default_bundle_views import is_ffpp

SOURCES = (("FF++ frames", True, False), ("FF++ videos", True, True), ("DFDC pairs", False, False))


def shares_right(labels: np.ndarray, scores: np.ndarray, threshold: float) -> tuple[float, float]:
    """The share of reals below `threshold` and of fakes at or above it."""
    return float((scores[labels == 0] < threshold).mean()), float((scores[labels == 1] >= threshold).mean())


def balanced_accuracy(labels: np.ndarray, scores: np.ndarray, threshold: float) -> float:
    """Mean of the share of reals and of fakes called right at `threshold`."""
    return float(np.mean(shares_right(labels, scores, threshold)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scores", nargs="+")
    calibration = parser.add_mutually_exclusive_group()
    calibration.add_argument("--temperature", type=float, default=1.0)
    calibration.add_argument("--calibration", type=Path, help="a bundle's manifest.json, for '+'-joined members")
    parser.add_argument("--at", type=float, nargs="+", default=[0.5])
    parser.add_argument("--best", action="store_true",
                        help="also the threshold (grid 0.01) with the highest mean balanced accuracy over the sources")
    parser.add_argument("--aggregate", choices=AGGREGATIONS, default="mean",
                        help="how a video's crop scores combine (forensic scan's --aggregate)")
    args = parser.parse_args()
    # Per crop, before a video's crops are averaged, as a scan calibrates each face.
    if args.calibration:
        rows = read(args.scores, args.calibration)
    else:
        rows = {crop: (video, label, float(recalibrated(np.array(score), bundle_temperature=args.temperature)))
                for crop, (video, label, score) in read(args.scores).items()}
    balanced: dict[float, list[float]] = {t: [] for t in args.at}
    grid = np.round(np.arange(0.01, 1.0, 0.01), 2)
    grid_balanced = np.zeros_like(grid)
    sources = 0
    for source, ffpp, video_level in SOURCES:
        crops = sorted(c for c in rows if is_ffpp(c) == ffpp)
        if not crops:
            continue
        labels, scores, _ = source_arrays(crops, rows, video_level, pool=partial(aggregate, how=args.aggregate))
        eer = equal_error_rate(labels, scores)
        where = f"equal-error threshold {eer[1]:.3f} (EER {eer[0]:.3f})" if eer else "one class only"
        auc = auc_score(labels, scores)
        print(f"{source:12}: n {len(labels)} ({int((labels == 0).sum())} real), "
              f"AUC {'n/a' if auc is None else f'{auc:.3f}'}, {where}")
        for threshold in args.at:
            real, fake = shares_right(labels, scores, threshold)
            both = (real + fake) / 2
            print(f"{source:12}   at {threshold:.3f}: reals right {real:.3f}, fakes right {fake:.3f}, "
                  f"balanced {both:.3f}")
            if not video_level:
                balanced[threshold].append(both)
        if not video_level and len(np.unique(labels)) == 2:
            sources += 1
            grid_balanced += [balanced_accuracy(labels, scores, t) for t in grid]
    for threshold, values in balanced.items():
        print(f"at {threshold:.3f}: mean balanced accuracy over {len(values)} sources {np.mean(values):.3f}")
    if args.best and sources:
        best = int(np.argmax(grid_balanced))
        print(f"best threshold {grid[best]:.2f}: mean balanced accuracy over {sources} sources "
              f"{grid_balanced[best] / sources:.3f}")


if __name__ == "__main__":
    main()
