"""The training loop: one method step per batch, validation each epoch, resumable checkpoints.

A run directory holds:
    config.json     the run's settings, dataset counts and library versions
    metrics.jsonl   one JSON line per epoch (train loss/accuracy, validation loss/accuracy/AUC)
    last.pt         model + optimizer + epoch, to resume from (a state dict, loads with weights_only)
    best.pt         the model at the epoch with the best validation AUC
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch.utils.data import DataLoader, WeightedRandomSampler

from trainer.data import FaceCrops, class_counts, eval_transform, list_split, train_transform, verify_images
from trainer.methods import create_method
from trainer.models import create_model, model_spec
from trainer.versions import library_versions


class RunError(Exception):
    """A run directory that cannot be used as asked, described in one line."""


@dataclass
class FitConfig:
    data: str
    out: str
    arch: str = "efficientnet_lite0"
    method: str = "erm"
    epochs: int = 10
    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 1e-4
    size: int | None = None  # None: the architecture's input size
    pretrained: bool | None = None  # None: offline ImageNet weights when the architecture has them
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    extra: dict = field(default_factory=dict)


@dataclass
class EpochMetrics:
    epoch: int
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_auc: float | None
    seconds: float


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RunError("--device cuda was asked for but torch sees no CUDA device")
    return torch.device(name)


@torch.no_grad()
def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[float, float, float | None, np.ndarray, np.ndarray]:
    """Loss, accuracy at 0.5, ROC-AUC (None when one class is absent), labels and fake-probabilities."""
    model.eval()
    losses, labels, scores = [], [], []
    for pixels, y in loader:
        logits = model(pixels.to(device))
        losses.append(F.cross_entropy(logits, y.to(device), reduction="sum").item())
        scores.append(logits.softmax(1)[:, 1].cpu().numpy())
        labels.append(y.numpy())
    y_true, y_score = np.concatenate(labels), np.concatenate(scores)
    accuracy = float(((y_score >= 0.5).astype(int) == y_true).mean())
    auc = float(roc_auc_score(y_true, y_score)) if len(set(y_true.tolist())) == 2 else None
    return sum(losses) / len(y_true), accuracy, auc, y_true, y_score


def _is_better(candidate: EpochMetrics, best: dict | None) -> bool:
    if best is None:
        return True
    key = lambda m: (m["val_auc"] if m["val_auc"] is not None else -1.0, -m["val_loss"])  # noqa: E731
    return key(asdict(candidate)) > key(best)


def fit(config: FitConfig, resume: bool = False, on_progress: Callable[[str, int, int], None] | None = None,
        on_epoch: Callable[[EpochMetrics], None] | None = None) -> dict:
    """Train as `config` says; return the best epoch's metrics.

    `on_progress(phase, done, total)` is called per batch and `on_epoch(metrics)` per epoch,
    so a CLI can draw progress without the loop knowing about terminals.
    """
    out = Path(config.out)
    last_path = out / "last.pt"
    if last_path.exists() and not resume:
        raise RunError(f"{out}: already holds a run (last.pt); pass --resume to continue it or choose another --out")
    if resume and not last_path.exists():
        raise RunError(f"{out}: nothing to resume (no last.pt)")

    spec = model_spec(config.arch)
    size = config.size or spec.input_size
    train_samples = list_split(Path(config.data), "train")
    val_samples = list_split(Path(config.data), "validation")
    verify_images(train_samples + val_samples)

    device = _device(config.device)
    torch.manual_seed(config.seed)
    model = create_model(config.arch, pretrained=config.pretrained).to(device)
    method = create_method(config.method, **config.extra)
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)

    start_epoch, best, history = 1, None, []
    if resume:
        state = torch.load(last_path, map_location=device, weights_only=True)
        saved = state["config"]
        for key in ("arch", "method", "size"):
            if saved.get(key) != (size if key == "size" else getattr(config, key)):
                raise RunError(f"{out}: cannot resume: this run was trained with {key}={saved.get(key)!r}")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_epoch, best, history = state["epoch"] + 1, state["best"], state["history"]

    counts = class_counts(train_samples)
    # Class-balanced sampling: each batch sees real and fake about equally often.
    sample_weights = torch.tensor([1.0 / counts[("real", "fake")[s.label]] for s in train_samples], dtype=torch.double)
    val_loader = DataLoader(FaceCrops(val_samples, eval_transform(size)), batch_size=config.batch_size, num_workers=config.workers)

    out.mkdir(parents=True, exist_ok=True)
    run_config = {
        **asdict(config),
        "size": size,
        "init": spec.pretrained_source if (config.pretrained is not False and spec.pretrained_source) else "random",
        "mean": list(spec.mean),
        "std": list(spec.std),
        "counts": {"train": counts, "validation": class_counts(val_samples)},
        "versions": library_versions(),
    }
    (out / "config.json").write_text(json.dumps(run_config, indent=2) + "\n")

    for epoch in range(start_epoch, config.epochs + 1):
        started = time.perf_counter()
        # Seeded per epoch so a resumed run draws the same batches as an uninterrupted one.
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        sampler = WeightedRandomSampler(sample_weights, num_samples=len(train_samples), generator=generator)
        train_loader = DataLoader(FaceCrops(train_samples, train_transform(size)), batch_size=config.batch_size,
                                  sampler=sampler, num_workers=config.workers, drop_last=len(train_samples) > config.batch_size)
        model.train()
        totals, seen = {"loss": 0.0, "accuracy": 0.0}, 0
        for i, (pixels, labels) in enumerate(train_loader):
            logs = method.step(model, pixels.to(device), labels.to(device), optimizer)
            for key in totals:
                totals[key] += logs[key] * len(labels)
            seen += len(labels)
            if on_progress:
                on_progress(f"epoch {epoch}/{config.epochs}", i + 1, len(train_loader))
        val_loss, val_accuracy, val_auc, _, _ = evaluate(model, val_loader, device)
        metrics = EpochMetrics(epoch, totals["loss"] / seen, totals["accuracy"] / seen, val_loss, val_accuracy, val_auc,
                               round(time.perf_counter() - started, 2))
        history.append(asdict(metrics))
        with open(out / "metrics.jsonl", "a") as log:
            log.write(json.dumps(asdict(metrics)) + "\n")
        if _is_better(metrics, best):
            best = asdict(metrics)
            torch.save({"model": model.state_dict(), "epoch": epoch, "config": run_config}, out / "best.pt")
        state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "config": run_config, "best": best, "history": history}
        torch.save(state, out / "last.tmp")
        (out / "last.tmp").replace(last_path)  # atomic: an interrupted save never corrupts last.pt
        if on_epoch:
            on_epoch(metrics)
    if best is None:
        raise RunError(f"{out}: already trained for {config.epochs} epochs; raise --epochs to train more")
    return best
