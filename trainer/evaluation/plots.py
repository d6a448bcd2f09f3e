"""The report's PNG plots: accuracy against ε per attack, ROC curves (clean and the worst attack),
corruptions, score histograms per class and the confusion matrix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sklearn.metrics import roc_curve

from trainer.data.datasets import CLASSES
from trainer.evaluation.sweep import Collected


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
