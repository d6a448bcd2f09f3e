"""The training loop: one method step per batch, validation each epoch, resumable checkpoints.

A run directory holds:
    config.json     "fit": the resolved settings (every FitConfig field); the normalisation, the
                    dataset's class counts and library versions. `trainer fit --config
                    RUN/config.json --out NEW` repeats the run
    metrics.jsonl   one JSON line per epoch; metrics.csv the same as a table; tensorboard/ the
                    same scalars as TensorBoard events
    last.pt         everything needed to resume: model, optimizer, scheduler, method state, RNG
                    states, history (plain tensors and values: loads with weights_only=True)
    best.pt         the model at the epoch with the best validation ROC-AUC
    model_epoch_N.pt  every `checkpoint_every` epochs; final.pt at the end
    <artifact>.pt   networks a method trains beside the detector (e.g. unet_attacker.pt)

Under torchrun (several processes: trainer/distributed.py) only rank 0 writes these; config.json
then also holds "distributed" (world size, backend, each rank's seeds) and last.pt each rank's
method and RNG states.
"""

from __future__ import annotations

import csv
import inspect
import json
import math
import os
import random
import time
import tomllib
import types
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score
from torch import nn
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, WeightedRandomSampler

from trainer import distributed
from trainer.data.datasets import FaceCrops, class_counts, eval_transform, list_split, train_transform, verify_images
from trainer.methods import create_method, method_class
from trainer.data.pairing import PairedBatchSampler, find_partners
from trainer.models import Detector, create_model, model_spec
from trainer.models.registry import checkpoint_problem
from forensic.versions import library_versions


class RunError(Exception):
    """A run that cannot be done as asked, described in one line."""


AUGMENTS = ("standard", "uploads", "uploads-no-h264", "none")


@dataclass
class FitConfig:
    data: str
    out: str
    # Validation split from another dataset folder (None: data's own), e.g. train on self-blended
    # LFW faces and select epochs on FaceForensics++ videos the model never trains on.
    val_data: str | None = None
    arch: str = "efficientnet_lite0"
    method: str = "erm"
    init: str | None = None  # None: the architecture's default (random, or offline ImageNet weights)
    epochs: int | None = None  # None: the method's default, else 10
    batch_size: int = 32  # the global batch: with N processes (torchrun) each takes batch_size / N
    epoch_size: int | None = None  # samples drawn per epoch (None: the training set's size), for large sets
    optimizer: str | None = None  # adamw or sgd; None: the method's default, else adamw
    lr: float | None = None  # None: the method's default, else 3e-4 (adamw) / 1e-3 (sgd)
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine (after a linear warm-up) or constant
    warmup_epochs: float = 1.0
    patience: int | None = None  # early stopping: epochs without a better validation AUC
    size: int | None = None  # None: the architecture's input size
    augment: str = "standard"  # one of AUGMENTS: standard (flip, rotation, colour, JPEG, blur), uploads (trainer.data.augment)
    sbi: bool = False  # add self-blended fakes made on the fly from the real training crops
    paired: bool = False  # batches of fakes beside their own reals (trainer.data.pairing)
    # Backbone module paths (e.g. conv_stem, bn1, blocks.0) whose weights and batch-norm
    # statistics stay as initialised: with a few dozen training videos, pretrained early and
    # middle features generalise better than fine-tuned ones.
    freeze: list[str] = field(default_factory=list)
    amp: bool = True  # bfloat16 autocast, on CUDA only
    sync_bn: bool = False  # several processes: batch-norm statistics over the global batch (SyncBatchNorm, CUDA)
    checkpoint_every: int | None = None  # None: the method's default, else 0 (off)
    workers: int = 2
    seed: int = 0
    device: str = "auto"
    options: dict[str, Any] = field(default_factory=dict)  # the method's own options

    def resolved(self) -> "FitConfig":
        """A copy with every None filled: method defaults first, then global ones."""
        values = asdict(self)
        defaults = method_class(self.method).defaults
        for key, value in defaults.items():
            if key == "lr" and values["optimizer"] not in (None, defaults.get("optimizer", "adamw")):
                continue  # a method's rate is for its own optimizer (gradreg's 1e-3 SGD rate is 3x AdamW's)
            if values.get(key) is None:
                values[key] = value
        values["epochs"] = values["epochs"] or 10
        values["optimizer"] = values["optimizer"] or "adamw"
        if values["lr"] is None:
            values["lr"] = 3e-4 if values["optimizer"] == "adamw" else 1e-3
        if values["checkpoint_every"] is None:
            values["checkpoint_every"] = 0
        spec = model_spec(self.arch)
        values["size"] = values["size"] or spec.input_size
        values["init"] = values["init"] or spec.default_init
        return FitConfig(**values)


FIELDS = {f.name for f in fields(FitConfig)}
# Config-file values, checked as the command line checks its options: (kind, smallest allowed).
_INTS = {"epochs": 1, "batch_size": 1, "epoch_size": 1, "patience": 1, "size": 16, "checkpoint_every": 0, "workers": 0, "seed": None}
_FLOATS = {"lr": 0.0, "weight_decay": 0.0, "momentum": 0.0, "warmup_epochs": 0.0}
_STRINGS = ("data", "out", "val_data", "arch", "method", "init", "optimizer", "schedule", "augment", "device")
_BOOLS = ("sbi", "amp", "paired", "sync_bn")
# What --resume may change: how long and where it runs, not what it learns or from what.
RESUMABLE = ("epochs", "patience", "workers", "device", "out")


def load_config_file(path: Path) -> dict[str, Any]:
    """FitConfig values from a TOML, YAML or JSON file (a run's config.json repeats that run)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
        if path.suffix == ".toml":
            values = tomllib.loads(text)
        elif path.suffix in (".yaml", ".yml"):
            try:
                import yaml
            except ImportError:
                raise RunError(f"{path}: reading YAML needs PyYAML (pip install pyyaml); or use .toml") from None
            try:
                values = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise RunError(f"{path}: cannot parse ({' '.join(str(exc).split())})") from None
        elif path.suffix == ".json":
            values = json.loads(text)
            values = values.get("fit", values)
        else:
            raise RunError(f"{path}: config files must be .toml, .yaml or .json")
    except FileNotFoundError:
        raise RunError(f"{path}: no such config file") from None
    except OSError as exc:
        raise RunError(f"{path}: cannot read ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, ValueError) as exc:
        raise RunError(f"{path}: cannot parse ({exc})") from None
    if not isinstance(values, dict):
        raise RunError(f"{path}: expected a table of settings")
    unknown = sorted(set(values) - FIELDS)
    if unknown:
        raise RunError(f"{path}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(FIELDS))}")
    return {key: _checked(path, key, value) for key, value in values.items()}


def _checked(path: Path, key: str, value: Any) -> Any:
    """A config-file value of the right type and range (None keeps the default)."""
    def bad(expected: str) -> RunError:
        return RunError(f"{path}: {key} must be {expected}, not {value!r}")

    if value is None:
        return None
    if key in _INTS:
        if isinstance(value, bool) or not isinstance(value, int) or (_INTS[key] is not None and value < _INTS[key]):
            raise bad("an integer" + (f" >= {_INTS[key]}" if _INTS[key] is not None else ""))
    elif key in _FLOATS:
        try:  # YAML 1.1 reads 3e-4 (no dot) as a string
            number = float(value) if not isinstance(value, bool) else math.nan
        except (TypeError, ValueError):
            number = math.nan
        if not math.isfinite(number) or number < _FLOATS[key]:
            raise bad(f"a number >= {_FLOATS[key]:g}")
        return number
    elif key in _STRINGS and not isinstance(value, str):
        raise bad("a string")
    elif key in _BOOLS and not isinstance(value, bool):
        raise bad("true or false")
    elif key == "freeze" and not (isinstance(value, list) and all(isinstance(item, str) for item in value)):
        raise bad("a list of module paths")
    elif key == "options" and not isinstance(value, dict):
        raise bad("a table of method options")
    return value


@dataclass
class EpochMetrics:
    epoch: int
    lr: float  # the learning rate of the epoch's last step
    train_loss: float
    train_accuracy: float
    val_loss: float
    val_accuracy: float
    val_auc: float | None
    images_per_second: float
    seconds: float


def resolve_device(name: str) -> torch.device:
    """auto (CUDA when torch sees it, else CPU), cpu or cuda; ValueError for the impossible."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"--device must be auto, cpu or cuda, not {name!r}")
    return torch.device(name)


@torch.no_grad()
def predict(model: torch.nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, np.ndarray, float]:
    """Labels, P(fake) and mean cross-entropy over a loader, with the model in eval mode."""
    model.eval()
    losses, labels, scores = [], [], []
    for pixels, y in loader:
        logits = model(pixels.to(device)).float()
        losses.append(F.cross_entropy(logits, y.to(device), reduction="sum").item())
        scores.append(logits.softmax(1)[:, 1].cpu().numpy())
        labels.append(y.numpy())
    y_true, y_score = np.concatenate(labels), np.concatenate(scores)
    return y_true, y_score, sum(losses) / len(y_true)


def evaluate(model: torch.nn.Module, loader: DataLoader, device: torch.device,
             ctx: distributed.Context | None = None) -> tuple[float, float, float | None]:
    """Loss, accuracy at P(fake) >= 0.5, ROC-AUC (None when one class is absent). With a
    distributed `ctx`, the loader holds this process's share and the figures are the whole set's."""
    if ctx is None or len(loader.dataset):
        y_true, y_score, loss = predict(model, loader, device)
    else:  # a process whose share of a validation set smaller than the world is empty
        y_true, y_score, loss = np.zeros(0, int), np.zeros(0, np.float32), 0.0
    if ctx is not None:
        y_true, y_score, loss = ctx.gather_predictions(y_true, y_score, loss)
    accuracy = float(((y_score >= 0.5).astype(int) == y_true).mean())
    auc = float(roc_auc_score(y_true, y_score)) if len(set(y_true.tolist())) == 2 else None
    return loss, accuracy, auc


def _auc_key(metrics: dict | None) -> tuple[float, float]:
    if metrics is None:
        return (-math.inf, -math.inf)
    return (metrics["val_auc"] if metrics["val_auc"] is not None else -1.0, -metrics["val_loss"])


def _eval_mode_only(module: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(module, False)


def freeze_modules(model: Detector, paths: list[str]) -> int:
    """Fix the parameters of these backbone modules and keep them in eval mode (batch norm uses
    its running statistics, drop-path is off) whatever `model.train()` asks; return how many
    parameters stay trainable."""
    for path in paths:
        try:
            module = model.backbone.get_submodule(path)
        except AttributeError:
            raise RunError(f"--freeze {path}: the backbone has no module {path!r}") from None
        module.requires_grad_(False)
        # An instance attribute wins over nn.Module.train, which calls child.train(mode) recursively.
        module.train = types.MethodType(_eval_mode_only, module)
        module.eval()
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _optimizer(config: FitConfig, model: torch.nn.Module) -> torch.optim.Optimizer:
    parameters = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "adamw":
        return torch.optim.AdamW(parameters, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return torch.optim.SGD(parameters, lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    raise RunError(f"unknown optimizer {config.optimizer!r}: use adamw or sgd")


def _schedule(config: FitConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    total = max(1, config.epochs * steps_per_epoch)
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total // 5)
    if config.schedule not in ("cosine", "constant"):
        raise RunError(f"unknown schedule {config.schedule!r}: use cosine or constant")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _rng_state(ctx: distributed.Context | None = None) -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": torch.tensor(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2]), "python": random.getstate()[1],
             "python_version": random.getstate()[0]}
    if ctx is not None and ctx.distributed and ctx.device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(ctx.device)  # its own GPU's (all would touch every GPU)
    elif torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()  # dropout and drop-path on the GPU
    return state


def _set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "cuda_device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)


def _method_options(config: FitConfig) -> dict[str, Any]:
    """The method's options, with `--seed` as its own seed unless an option sets one: runs with
    different seeds must differ in the method's draws too (fgsm-at's, the dual attacker's)."""
    accepted = inspect.signature(method_class(config.method).__init__).parameters
    return {"seed": config.seed, **config.options} if "seed" in accepted else dict(config.options)


def _resume_differences(saved: dict[str, Any], config: FitConfig) -> list[str]:
    """The settings that differ from the run being resumed, other than those --resume may change."""
    current = asdict(config)
    # A setting added after the run was made (e.g. sync_bn) counts as its default there.
    defaults = {f.name: f.default for f in fields(FitConfig) if f.default is not MISSING}

    def same(key: str) -> bool:
        if key in ("data", "val_data") and saved.get(key) and current[key]:
            return Path(saved[key]).absolute() == Path(current[key]).absolute()  # runs made before paths were stored absolute
        return saved.get(key, defaults.get(key)) == current[key]

    return [f"{key} {saved.get(key)!r} → {current[key]!r}" for key in sorted(current)
            if key not in RESUMABLE and not same(key)]


def _save_atomically(obj: Any, path: Path) -> None:
    """torch.save `obj` to `path` so that a crash, SIGKILL or power cut leaves the previous file or
    the new one, never a torn one (--resume reads last.pt)."""
    _write_atomically(path, lambda handle: torch.save(obj, handle))


def _write_atomically(path: Path, write: Callable[[Any], None], binary: bool = True) -> None:
    """Call `write(handle)` on PATH.partial (same folder, so the rename stays on one file system),
    flush it to disk, rename it over `path`, then flush the folder so the rename itself survives
    a power cut. Without the first fsync a rename can reach the disk before the data does (ext4
    and XFS delayed allocation) and a crash leaves an empty or partial file under the final name."""
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb" if binary else "w", **({} if binary else {"encoding": "utf-8", "newline": ""})) as handle:
        write(handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(partial, path)
    if os.name == "posix":  # Windows cannot open a folder; its rename is durable by itself (MoveFileEx)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)


def _remove_partials(out: Path) -> None:
    """Remove the PATH.partial files a killed run left (its last.pt, the previous one, stays whole)."""
    for partial in out.glob("*.partial"):
        partial.unlink(missing_ok=True)


def _train_transform(config: FitConfig, size: int):
    if config.augment in ("uploads", "uploads-no-h264"):
        from trainer.data.augment import uploads_transform

        return uploads_transform(size, with_h264=config.augment == "uploads")
    return train_transform(size) if config.augment == "standard" else eval_transform(size)


def _train_set(config: FitConfig, samples, size: int):
    """The training dataset, its labels, and each fake's real partner (index -> index) for --paired."""
    transform = _train_transform(config, size)
    crops = FaceCrops(samples, transform)
    partners = find_partners(samples) if config.paired else {}
    if not config.sbi:
        return crops, [s.label for s in samples], partners
    from trainer.data.sbi import SelfBlendedFakes, load_landmarks

    real_indices = [i for i, s in enumerate(samples) if s.label == 0]
    reals = [samples[i] for i in real_indices]
    landmarks = load_landmarks(Path(config.data) / "train" / "real")
    blended = SelfBlendedFakes(reals, transform, landmarks=landmarks, seed=config.seed)
    # a self-blend's partner is the real it was blended from
    partners.update({len(samples) + k: i for k, i in enumerate(real_indices)})
    return ConcatDataset([crops, blended]), [s.label for s in samples] + [1] * len(reals), partners


def fit(config: FitConfig, resume: bool = False,
        on_progress: Callable[[str, int, int, dict[str, float]], None] | None = None,
        on_epoch: Callable[[EpochMetrics], None] | None = None) -> dict:
    """Train as `config` says; return the best epoch's metrics.

    `on_progress(phase, done, total, logs)` is called per batch and `on_epoch(metrics)` per epoch,
    so a CLI can draw progress without the loop knowing about terminals. Under torchrun this is
    one of several processes (trainer/distributed.py): only rank 0 calls them and writes.
    """
    try:
        ctx = distributed.Context.from_environment()
    except ValueError as exc:
        raise RunError(str(exc)) from None
    try:
        return _fit(config, ctx, resume, on_progress if ctx.is_main else None, on_epoch if ctx.is_main else None)
    finally:
        ctx.stop()


def _fit(config: FitConfig, ctx: distributed.Context, resume: bool,
         on_progress: Callable[[str, int, int, dict[str, float]], None] | None,
         on_epoch: Callable[[EpochMetrics], None] | None) -> dict:
    out = Path(config.out)
    last_path = out / "last.pt"
    if last_path.exists() and not resume:
        raise RunError(f"{out}: already holds a run (last.pt); pass --resume to continue it or choose another --out")
    if resume and not last_path.exists():
        raise RunError(f"{out}: nothing to resume (no last.pt)")
    config = config.resolved()
    if config.augment not in AUGMENTS:
        raise RunError(f"unknown augment {config.augment!r}: use {', '.join(AUGMENTS)}")

    train_samples = list_split(Path(config.data), "train")
    val_samples = list_split(Path(config.val_data or config.data), "validation")
    verify_images(train_samples + val_samples)
    try:
        device = ctx.start(resolve_device(config.device))  # several processes: joins the group, its own GPU
        batch_size = ctx.share(config.batch_size)  # this process's part of the global batch
    except ValueError as exc:
        raise RunError(str(exc)) from None
    # Each rank its own augmentation, dropout and attack draws (seed + rank); the batches are
    # drawn from config.seed alone, alike in every rank, which then takes its share.
    seed = config.seed + ctx.rank
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    spec = model_spec(config.arch)
    model = create_model(config.arch, init=config.init).to(device)
    if config.sync_bn:
        try:  # before freezing: conversion makes new modules, and the frozen ones must keep eval mode
            model = ctx.convert_sync_batch_norm(model, device)
        except ValueError as exc:
            raise RunError(str(exc)) from None
    method_options = _method_options(config)
    try:
        method = create_method(config.method, **_rank_seeded(method_options, ctx.rank))
    except TypeError as exc:
        raise RunError(f"--method {config.method}: {exc}") from None
    trainable = freeze_modules(model, config.freeze)
    if trainable == 0:
        raise RunError(f"--freeze {','.join(config.freeze)}: leaves no parameter to train")
    method.setup(model, device)
    optimizer = _optimizer(config, model)

    train_set, train_labels, partners = _train_set(config, train_samples, config.size)
    counts = {name: train_labels.count(label) for label, name in enumerate(("real", "fake"))}
    # Class-balanced sampling: each batch sees real and fake about equally often.
    sample_weights = torch.tensor([1.0 / counts[("real", "fake")[y]] for y in train_labels], dtype=torch.double)
    per_epoch = config.epoch_size or len(train_set)
    drop_last = per_epoch > config.batch_size
    steps_per_epoch = per_epoch // config.batch_size if drop_last else 1
    if per_epoch < ctx.world_size:
        raise RunError(f"an epoch of {per_epoch} samples cannot be shared by {ctx.world_size} processes")
    scheduler = _schedule(config, optimizer, steps_per_epoch)
    val_loader = DataLoader(ctx.shard_dataset(FaceCrops(val_samples, eval_transform(config.size))),
                            batch_size=batch_size, num_workers=config.workers)

    start_epoch, best, history, stale = 1, None, [], 0
    if resume:
        # On the CPU first: RNG states must stay CPU tensors; the optimizer moves its own state.
        try:
            state = torch.load(last_path, map_location="cpu", weights_only=True)
            saved_fit = state["config"]["fit"]
        except Exception as exc:  # junk, truncated, a pickle weights_only refuses, another file's layout
            first = checkpoint_problem(exc)
            raise RunError(f"{last_path}: not a resumable `trainer fit` checkpoint ({first})") from None
        differences = _resume_differences(saved_fit, config)
        if differences:
            raise RunError(f"{out}: cannot resume with other settings ({'; '.join(differences)}); only "
                           f"epochs, patience, workers and device may change (leave the rest out to keep the run's)")
        if state["epoch"] >= config.epochs:
            raise RunError(f"{out}: already trained for {state['epoch']} epochs; raise --epochs to train more")
        try:
            model.load_state_dict(distributed.plain_state_dict(state["model"]))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            method_state, rng_state = _rank_states(state, ctx.rank, method.state_dict())
            method.load_state_dict(method_state)
            if rng_state is not None:  # else this rank's fresh seed + rank
                _set_rng_state(rng_state, device)
            start_epoch, best, history, stale = state["epoch"] + 1, state["best"], state["history"], state["stale"]
        except Exception as exc:
            first = checkpoint_problem(exc)
            raise RunError(f"{last_path}: does not match this run ({first})") from None
    trained = ctx.wrap(model)  # DDP in several processes (rank 0's weights broadcast), else the model
    if ctx.distributed:
        method.distribute(ctx.wrap)

    run_config = {"fit": asdict(config), "mean": list(spec.mean), "std": list(spec.std),
                  "counts": {"train": counts, "train_files": class_counts(train_samples),
                             "validation": class_counts(val_samples)},
                  "versions": library_versions()}
    if ctx.distributed:
        run_config["distributed"] = _distributed_record(config, ctx, batch_size, method_options.get("seed"))
    tensorboard = None
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        if resume:
            _remove_partials(out)
        # Atomic: `trainer fit --resume` takes the run's settings from it, so a kill must not tear it.
        _write_atomically(out / "config.json", lambda handle: handle.write(json.dumps(run_config, indent=2) + "\n"),
                          binary=False)
        from torch.utils.tensorboard import SummaryWriter

        tensorboard = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=start_epoch)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")

    for epoch in range(start_epoch, config.epochs + 1):
        if config.patience is not None and stale >= config.patience:
            break
        started = time.perf_counter()
        # Seeded per epoch so a resumed run draws the same batches as an uninterrupted one.
        generator = torch.Generator().manual_seed(config.seed * 100_003 + epoch)
        for dataset in getattr(train_set, "datasets", []):
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
        if config.paired:
            batches = PairedBatchSampler([i for i, y in enumerate(train_labels) if y == 1], partners,
                                         [i for i, y in enumerate(train_labels) if y == 0], config.batch_size,
                                         steps_per_epoch, seed=config.seed)
            batches.set_epoch(epoch)
        else:
            sampler = WeightedRandomSampler(sample_weights, num_samples=per_epoch, generator=generator)
            batches = BatchSampler(sampler, config.batch_size, drop_last)
        # The global batches; with several processes each takes its share of every one.
        loader = DataLoader(train_set, batch_sampler=ctx.shard_batches(batches), num_workers=config.workers)
        trained.train()
        totals, seen = {"loss": 0.0, "accuracy": 0.0}, 0
        for i, (pixels, labels) in enumerate(loader):
            with autocast:
                logs = method.step(trained, pixels.to(device), labels.to(device), optimizer)
            learning_rate = optimizer.param_groups[0]["lr"]  # the one this step used
            scheduler.step()
            for key in totals:
                totals[key] += logs[key] * len(labels)
            seen += len(labels)
            if on_progress:
                rate = seen * ctx.world_size / (time.perf_counter() - started)
                on_progress(f"epoch {epoch}/{config.epochs}", i + 1, len(loader), {**logs, "img/s": rate})
        train_seconds = time.perf_counter() - started
        totals["loss"], totals["accuracy"], seen = ctx.sum([totals["loss"], totals["accuracy"], seen])
        ctx.sync_buffers(model)
        val_loss, val_accuracy, val_auc = evaluate(model, val_loader, device, ctx)
        metrics = EpochMetrics(epoch, learning_rate, totals["loss"] / seen, totals["accuracy"] / seen,
                               val_loss, val_accuracy, val_auc, round(seen / train_seconds, 2),
                               round(time.perf_counter() - started, 2))
        history.append(asdict(metrics))
        improved = _auc_key(asdict(metrics)) > _auc_key(best)
        if improved:
            best, stale = asdict(metrics), 0
        else:
            stale += 1
        # Every rank's method and RNG states, gathered for rank 0 (a collective: all ranks take part).
        method_states, rng_states = ctx.gather(method.state_dict()), ctx.gather(_rng_state(ctx))
        if ctx.is_main:
            _write_metrics(out, history)
            for key, value in asdict(metrics).items():
                if key != "epoch" and value is not None:
                    tensorboard.add_scalar(key, value, epoch)
            tensorboard.flush()
            if improved:
                _save_atomically({"model": model.state_dict(), "epoch": epoch, "config": run_config}, out / "best.pt")
            if config.checkpoint_every and epoch % config.checkpoint_every == 0:
                _save_atomically({"model": model.state_dict(), "epoch": epoch, "config": run_config}, out / f"model_epoch_{epoch}.pt")
            for stem, state_dict in method.artifacts().items():
                _save_atomically(state_dict, out / f"{stem}.pt")
            last = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "method": method_states[0], "rng": rng_states[0],
                    "epoch": epoch, "config": run_config, "best": best, "history": history, "stale": stale}
            if ctx.distributed:  # rank r resumes from entry r; "method" and "rng" stay rank 0's
                last.update(world_size=ctx.world_size, method_by_rank=method_states, rng_by_rank=rng_states)
            _save_atomically(last, last_path)
        if on_epoch:
            on_epoch(metrics)
    if tensorboard is not None:
        tensorboard.close()
    if best is None:
        raise RunError(f"{out}: already trained for {config.epochs} epochs; raise --epochs to train more")
    if ctx.is_main:
        _save_atomically({"model": model.state_dict(), "epoch": history[-1]["epoch"], "config": run_config}, out / "final.pt")
    return best


def _rank_states(state: dict, rank: int, fresh_method_state: dict) -> tuple[dict, dict | None]:
    """The method and RNG states rank `rank` resumes from: its own when the checkpoint holds them
    (written by as many processes or more), else rank 0's method state with this rank's own fresh
    generator (seeded seed + rank, so ranks do not repeat each other's attack draws) and no RNG state
    (the global generators keep their seed + rank). Rank 0 always gets "method" and "rng"."""
    method_by_rank, rng_by_rank = state.get("method_by_rank") or [], state.get("rng_by_rank") or []
    if rank == 0:
        return state["method"], state["rng"]
    if rank < len(method_by_rank):
        return method_by_rank[rank], rng_by_rank[rank]
    method_state = dict(state["method"])
    if "generator" in method_state and "generator" in fresh_method_state:
        method_state["generator"] = fresh_method_state["generator"]
    return method_state, None


def _rank_seeded(method_options: dict[str, Any], rank: int) -> dict[str, Any]:
    """The method's options with seed + rank: each rank draws its own attack starts and subsets."""
    if rank and "seed" in method_options:
        return {**method_options, "seed": int(method_options["seed"]) + rank}
    return method_options


def _distributed_record(config: FitConfig, ctx: distributed.Context, batch_size: int,
                        method_seed: int | None) -> dict[str, Any]:
    """config.json's "distributed": how the run was split, and each rank's seeds."""
    return {"world_size": ctx.world_size, "backend": ctx.backend, "batch_size_per_process": batch_size,
            "sync_bn": config.sync_bn, "batch_seed": config.seed,
            "seeds": [{"rank": rank, "torch_numpy_python": config.seed + rank,
                       "method": None if method_seed is None else int(method_seed) + rank}
                      for rank in range(ctx.world_size)]}


def _write_metrics(out: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl and metrics.csv from the history (so a resumed run never repeats a line)."""
    _write_atomically(out / "metrics.jsonl", lambda handle: handle.write("".join(json.dumps(row) + "\n" for row in history)),
                      binary=False)

    def write_csv(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)

    _write_atomically(out / "metrics.csv", write_csv, binary=False)
