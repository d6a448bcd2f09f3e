"""`trainer eval`: a trained run or an exported bundle on a dataset split → clean metrics,
adversarial robustness, gradient-masking checks, common corruptions and heatmaps, written as a
report folder.

What is scored (trainer.evaluation.scorers): a `trainer fit` run's PyTorch model (P(fake) =
softmax of its logits), or a bundle exactly as `forensic scan` scores face crops
(forensic.inference's EnsembleRunner: the calibrated weighted ensemble). The attacks and the
collection loop work on either through the same small scorer interface.

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

The steps, each described in its module of trainer.evaluation: every batch is scored clean,
under each attack of trainer.attacks.suite and under each corruption (sweep; with `--save-adv`,
adversarial examples are kept: adversarial); then the clean metrics at frame and video level
(metrics), robust accuracy and AUC per attack and the worst case over attacks (summary), the
gradient-masking checks (masking), heatmaps of a sample of crops (heatmaps), and the report
folder: metrics.json, CSV files, plots and index.html (report).

`--limit N` evaluates a seeded, class-stratified random subset of N crops (each class keeps its
share of the split, at least one crop each): crops are drawn, not videos, so a video may keep
only some of its crops. Results are reproducible for a given seed, subset and batch size (the
per-batch attack and noise seeds derive from the seed and the batch index).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader
from torchvision.transforms import v2

from forensic.bundle import load_bundle
from forensic.versions import library_versions
from trainer.attacks.square import SQUARE_P_INIT, SQUARE_QUERIES
from trainer.attacks.suite import BLACK_BOX, DEFAULT_ATTACKS, AttackSpec, load_unet_attack
from trainer.data.corruptions import DEFAULT_CORRUPTIONS, Corruption
from trainer.data.datasets import CLASSES, FaceCrops, Sample, list_split, scan_crop
from trainer.evaluation.adversarial import AdversarialSaver
from trainer.evaluation.errors import EvaluationError
from trainer.evaluation.heatmaps import HEATMAPS_PER_CELL, write_heatmaps
from trainer.evaluation.metrics import BOOTSTRAP_RESAMPLES, RUN_THRESHOLD, video_id
from trainer.evaluation.report import SCHEMA, write_report
from trainer.evaluation.scorers import BundleScorer, Scorer, TorchScorer
from trainer.evaluation.summary import summarise
from trainer.evaluation.sweep import Progress, collect
from trainer.config import resolve_device


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
                          "temperature": bundle.temperature,
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
