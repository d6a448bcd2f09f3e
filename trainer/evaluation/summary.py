"""The report's numbers from the collected scores: clean metrics (frame and video level), each
attack's robust accuracy, AUC and success rate with the worst case over attacks, the
gradient-masking checks and each corruption's accuracy and AUC with their drop from clean.
"""

from __future__ import annotations

from trainer.attacks.suite import UNET_FILE
from trainer.evaluation.errors import EvaluationError
from trainer.evaluation.masking import CHECK_NAMES, gradient_masking_checks
from trainer.evaluation.metrics import BOOTSTRAP_RESAMPLES, binary_metrics, condition_metrics, video_scores
from trainer.evaluation.sweep import Collected


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
