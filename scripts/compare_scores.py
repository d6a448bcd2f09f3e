"""Two detectors' clean scores on the crops both scored (`trainer eval` scores.csv files), per
source, with AUC intervals from resampling videos (a DFDC pair's crops are one video each) and
the interval of the paired difference (both AUCs on each resample of the same videos):

    python scripts/compare_scores.py A_SCORES.csv... --vs B_SCORES.csv... [--names A B] [--condition 'h264 crf=35']

`--condition` compares the scores under one of `trainer eval`'s corruptions instead (a column of
scores.csv), and also each side's AUC drop from clean and the paired difference of the two drops.
`--aggregate` and `--vs-aggregate` say how each side's video scores pool its crops (`forensic scan`'s
--aggregate: mean unless told), so one detector's scores can be compared with themselves pooled two ways.

Files on one side are pooled (e.g. the folds' out-of-fold scores). Files joined by "+" are
members of an equal-weight ensemble: their scores of the same crops are averaged (mean P(fake)),
over the crops all of them scored. `--calibration MANIFEST` averages A's members as that bundle does:
each member's score through its manifest entry's temperature and bias and the bundle's temperature
(forensic's own `member_probability`), members in the manifest's order.

With FF++ videos and DFDC pairs both present, it ends with the model card's rule, the mean of the
FF++ video AUC and the DFDC AUC, for each side and as a paired difference (each resample draws FF++
videos and DFDC pairs apart, as many of each as there are).

Used for the default bundle's model card: the new recipe's out-of-fold scores against the
previous bundle's scores on FF++ videos and DFDC pairs neither was trained on.
"""

from __future__ import annotations

import argparse
import json
from functools import partial
from pathlib import Path

import numpy as np

from forensic import AGGREGATIONS
from forensic.identities import aggregate
from forensic.inference import member_probability
from trainer.evaluation.errors import EvaluationError
from trainer.evaluation.folds import by_method, grouped_auc_ci, grouped_bootstrap_ci
from trainer.evaluation.metrics import auc_score
from trainer.evaluation.report import read_scores

from default_bundle_views import is_ffpp  # a sibling script: `python scripts/...` puts scripts/ on the path


def read_file(path: str, condition: str = "clean") -> dict[str, tuple[str, int, float]]:
    """One scores.csv's scores under `condition`; a file that is missing or not `trainer eval`'s scores
    (or has no such condition) ends the script with one line."""
    try:
        return {crop: (video, label, score) for crop, video, label, score in read_scores(Path(path), condition)}
    except EvaluationError as error:
        raise SystemExit(f"error: {error}") from None


def read(paths: list[str], calibration: Path | None = None, condition: str = "clean") -> dict[str, tuple[str, int, float]]:
    """Scores by crop; an entry "X+Y" is the mean of X's and Y's scores, through each member's
    calibration when a bundle manifest is given (its models in the same order as the members)."""
    members_calibration = member_calibrations(calibration) if calibration else None
    rows = {}
    for path in paths:
        members = [read_file(member, condition) for member in path.split("+")]
        if members_calibration and len(members_calibration[0]) != len(members):
            raise SystemExit(f"error: {calibration} has {len(members_calibration[0])} models for {len(members)} "
                             f"'+'-joined score files")
        crops = sorted(set(members[0]).intersection(*members[1:]))
        scores = np.array([[member[crop][2] for crop in crops] for member in members])  # (members, crops)
        if members_calibration:
            models, bundle_temperature = members_calibration
            scores = np.stack([recalibrated(row, t, bias, bundle_temperature) for row, (t, bias) in zip(scores, models)])
        for crop, mean in zip(crops, scores.mean(axis=0)):
            video, label, _ = members[0][crop]
            rows[crop] = (video, label, float(mean))
    return rows


def recalibrated(scores: np.ndarray, temperature: float = 1.0, bias: float = 0.0,
                 bundle_temperature: float = 1.0) -> np.ndarray:
    """P(fake) at temperature 1 (a run's scores) through a member's and a bundle's calibration, by
    the scan's own function (forensic.inference.member_probability)."""
    p = np.clip(scores, 1e-7, 1 - 1e-7)
    return member_probability(np.log(p / (1 - p)), temperature, bias, bundle_temperature)


def member_calibrations(manifest: Path) -> tuple[list[tuple[float, float]], float]:
    """A bundle manifest's (temperature, bias) per model, in its order, and the bundle's temperature
    (each missing value at the manifest's default)."""
    try:
        bundle = json.loads(manifest.read_text())
        models = [(float(model.get("temperature", 1.0)), float(model.get("bias", 0.0))) for model in bundle["models"]]
        return models, float(bundle.get("temperature", 1.0))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
        raise SystemExit(f"error: {manifest}: not a readable bundle manifest ({error})") from None


def source_arrays(crops: list[str], rows: dict, video_level: bool,
                  pool=np.mean) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels, scores and video ids of `crops`; with video_level, one score per video (`pool` of
    its crops' scores: their mean unless told)."""
    videos = np.array([rows[c][0] for c in crops])
    labels = np.array([rows[c][1] for c in crops])
    scores = np.array([rows[c][2] for c in crops])
    if video_level:
        ids = sorted(set(videos))
        labels = np.array([labels[videos == v][0] for v in ids])
        scores = np.array([pool(scores[videos == v]) for v in ids])
        videos = np.array(ids)
    return labels, scores, videos


def figures(labels: np.ndarray, scores: np.ndarray, videos: np.ndarray) -> str:
    interval = grouped_auc_ci(labels, scores, videos, 1000, 0)
    spread = f" ({interval[0]:.3f}-{interval[1]:.3f})" if interval else ""
    return f"AUC {auc_score(labels, scores):.3f}{spread}, n {len(labels)} ({int((labels == 0).sum())} real)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("a", nargs="+")
    parser.add_argument("--vs", nargs="+", required=True)
    parser.add_argument("--names", nargs=2, default=["A", "B"])
    parser.add_argument("--calibration", type=Path, help="a bundle's manifest.json: A's members averaged as it does")
    parser.add_argument("--vs-calibration", type=Path, help="the same for B's members")
    parser.add_argument("--aggregate", choices=AGGREGATIONS, default="mean",
                        help="how A's video scores pool its crops (forensic scan's --aggregate)")
    parser.add_argument("--vs-aggregate", choices=AGGREGATIONS, default="mean",
                        help="the same for B")
    parser.add_argument("--by-method", action="store_true",
                        help="also each FF++ manipulation's fake videos against all real ones (as `trainer pool`)")
    parser.add_argument("--condition", default="clean",
                        help="compare under this `trainer eval` corruption (a scores.csv column, e.g. 'h264 crf=35')")
    args = parser.parse_args()
    a, b = read(args.a, args.calibration, args.condition), read(args.vs, args.vs_calibration, args.condition)
    clean = (read(args.a, args.calibration), read(args.vs, args.vs_calibration)) if args.condition != "clean" else None
    pools = [partial(aggregate, how=how) for how in (args.aggregate, args.vs_aggregate)]
    common = sorted(set(a) & set(b))
    by_source = {}
    for source, video_level in (("FF++ frames", False), ("FF++ videos", True), ("DFDC pairs", False)):
        crops = [c for c in common if is_ffpp(c) == source.startswith("FF++")]
        if not crops:
            continue
        (labels, a_scores, videos), (_, b_scores, _) = (source_arrays(crops, rows, video_level, pool)
                                                        for rows, pool in zip((a, b), pools))
        by_source[source] = (labels, a_scores, b_scores, videos)
        label = source if clean is None else f"{source}, {args.condition}"
        for name, scores in zip(args.names, (a_scores, b_scores)):
            print(f"{label:12} {name:>10}: {figures(labels, scores, videos)}")
        difference = auc_score(labels, a_scores) - auc_score(labels, b_scores)
        interval = grouped_auc_ci(labels, a_scores, videos, 1000, 0, minus=b_scores)
        spread = f" ({interval[0]:+.3f} to {interval[1]:+.3f}, paired, resampling videos)" if interval else ""
        print(f"{label:12} {'difference':>10}: {args.names[0]} - {args.names[1]} {difference:+.3f}{spread}")
        if clean is not None:
            a_clean, b_clean = (source_arrays(crops, rows, video_level, pool)[1] for rows, pool in zip(clean, pools))
            print_drops(label, args.names, labels, videos, (a_clean, a_scores), (b_clean, b_scores))
        if args.by_method and source == "FF++ videos":
            print_by_method(labels, videos, dict(zip(args.names, (a_scores, b_scores))))
    if "FF++ videos" in by_source and "DFDC pairs" in by_source:
        print_rule(args.names, by_source["FF++ videos"], by_source["DFDC pairs"],
                   "" if clean is None else f", {args.condition}")


def print_rule(names: list[str], ffpp: tuple, dfdc: tuple, condition: str, resamples: int = 1000,
               seed: int = 0) -> None:
    """The mean of the FF++ video AUC and the DFDC AUC for each side, and A's minus B's with a 95 %
    interval over resamples that draw each source's videos apart (stratified: every resample has as
    many FF++ videos and DFDC pairs as the data)."""
    def rule(side: int, chosen: tuple[np.ndarray, np.ndarray]) -> float:
        return (auc_score(ffpp[0][chosen[0]], ffpp[side][chosen[0]]) + auc_score(dfdc[0][chosen[1]], dfdc[side][chosen[1]])) / 2

    if any(len(np.unique(source[0])) < 2 for source in (ffpp, dfdc)):
        return  # a source with one class has no AUC
    everything = (np.arange(len(ffpp[0])), np.arange(len(dfdc[0])))
    for side, name in enumerate(names, start=1):
        print(f"{'rule' + condition:12} {name:>10}: mean of FF++ videos and DFDC AUC {rule(side, everything):.4f}")
    rng, differences = np.random.default_rng(seed), []
    for _ in range(20 * resamples):  # resamples with one class in a source are drawn again, within reason
        if len(differences) == resamples:
            break
        chosen = tuple(rng.integers(0, len(source[0]), len(source[0])) for source in (ffpp, dfdc))
        if all(len(np.unique(source[0][c])) == 2 for source, c in zip((ffpp, dfdc), chosen)):
            differences.append(rule(1, chosen) - rule(2, chosen))
    spread = " (no interval: too few videos of a class to resample)"
    if differences:
        low, high = np.quantile(differences, [0.025, 0.975])
        spread = f" ({low:+.4f} to {high:+.4f}, paired, resampling each source)"
    print(f"{'rule' + condition:12} {'difference':>10}: {names[0]} - {names[1]} "
          f"{rule(1, everything) - rule(2, everything):+.4f}{spread}")


def print_drops(label: str, names: list[str], labels: np.ndarray, videos: np.ndarray,
                a: tuple[np.ndarray, np.ndarray], b: tuple[np.ndarray, np.ndarray]) -> None:
    """Each side's AUC drop from clean to the condition, and the paired interval of A's drop minus B's."""
    def drop(side: tuple[np.ndarray, np.ndarray], chosen: np.ndarray) -> float:
        return auc_score(labels[chosen], side[0][chosen]) - auc_score(labels[chosen], side[1][chosen])

    everything = np.arange(len(labels))
    for name, side in zip(names, (a, b)):
        print(f"{label} {name:>10}: AUC drop from clean {drop(side, everything):+.3f}")
    interval = grouped_bootstrap_ci(labels, videos, 1000, 0, lambda chosen: drop(a, chosen) - drop(b, chosen))
    spread = f" ({interval[0]:+.3f} to {interval[1]:+.3f}, paired, resampling videos)" if interval else ""
    print(f"{label} {'difference':>10}: drop {names[0]} - drop {names[1]} "
          f"{drop(a, everything) - drop(b, everything):+.3f}{spread}")


def print_by_method(labels: np.ndarray, videos: np.ndarray, scores: dict[str, np.ndarray]) -> None:
    for name, side in scores.items():
        for method, part in by_method(videos, labels, side, 0.5, 1000, 0).items():
            interval = f" ({part['auc_ci95'][0]:.3f}-{part['auc_ci95'][1]:.3f})" if part["auc_ci95"] else ""
            print(f"{method[:12]:12} {name:>10}: AUC {part['auc']:.3f}{interval}, "
                  f"{part['fake']} fake against {part['real']} real videos")


if __name__ == "__main__":
    main()
