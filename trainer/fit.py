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

import inspect
import json
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import BatchSampler, DataLoader, WeightedRandomSampler

from trainer import distributed
from trainer.checkpoints import rank_states, remove_partials, rng_state, save_atomically, set_rng_state, write_atomically, write_metrics
from trainer.config import AUGMENTS, FitConfig, RunError, resolve_device, resume_differences
from trainer.cpu_memory import retain_freed_memory
from trainer.data.datasets import FaceCrops, class_counts, eval_transform, list_split, verify_images
from trainer.data.pairing import PairedBatchSampler
from trainer.data.training_set import training_set
from trainer.methods import create_method, method_class
from trainer.models import create_model, model_spec
from trainer.models.registry import checkpoint_problem
from trainer.optimization import create_optimizer, create_schedule, freeze_modules
from trainer.validation import auc_key, evaluate
from forensic.versions import library_versions


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
    if device.type == "cpu":
        retain_freed_memory()  # before the data-loading workers fork, so they keep it too
    # Each rank its own augmentation, dropout and attack draws (seed + rank); the batches are
    # drawn from config.seed alone, alike in every rank, which then takes its share.
    seed = config.seed + ctx.rank
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
    spec = model_spec(config.arch)
    # Channels-last: an ERM step costs 1.54x less CPU than in the default layout (oneDNN's convolutions;
    # bench/train_step.py's "erm contiguous" row, BENCHMARKS.md). The saved weights load into either layout.
    model = create_model(config.arch, init=config.init).to(device, memory_format=torch.channels_last)
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
    optimizer = create_optimizer(config, model)

    train_set, train_labels, partners = training_set(train_samples, config.size, config.augment, Path(config.data),
                                                     sbi=config.sbi, paired=config.paired, seed=config.seed)
    counts = {name: train_labels.count(label) for label, name in enumerate(("real", "fake"))}
    # Class-balanced sampling: each batch sees real and fake about equally often.
    sample_weights = torch.tensor([1.0 / counts[("real", "fake")[y]] for y in train_labels], dtype=torch.double)
    per_epoch = config.epoch_size or len(train_set)
    drop_last = per_epoch > config.batch_size
    steps_per_epoch = per_epoch // config.batch_size if drop_last else 1
    if per_epoch < ctx.world_size:
        raise RunError(f"an epoch of {per_epoch} samples cannot be shared by {ctx.world_size} processes")
    scheduler = create_schedule(config, optimizer, steps_per_epoch)
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
        differences = resume_differences(saved_fit, config)
        if differences:
            raise RunError(f"{out}: cannot resume with other settings ({'; '.join(differences)}); only "
                           f"epochs, patience, workers and device may change (leave the rest out to keep the run's)")
        if state["epoch"] >= config.epochs:
            raise RunError(f"{out}: already trained for {state['epoch']} epochs; raise --epochs to train more")
        try:
            model.load_state_dict(distributed.plain_state_dict(state["model"]))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            method_state, saved_rng = rank_states(state, ctx.rank, method.state_dict())
            method.load_state_dict(method_state)
            if saved_rng is not None:  # else this rank's fresh seed + rank
                set_rng_state(saved_rng, device)
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
            remove_partials(out)
        # Atomic: `trainer fit --resume` takes the run's settings from it, so a kill must not tear it.
        write_atomically(out / "config.json", lambda handle: handle.write(json.dumps(run_config, indent=2) + "\n"),
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
                logs = method.step(trained, pixels.to(device, memory_format=torch.channels_last), labels.to(device), optimizer)
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
        improved = auc_key(asdict(metrics)) > auc_key(best)
        if improved:
            best, stale = asdict(metrics), 0
        else:
            stale += 1
        # Every rank's method and RNG states, gathered for rank 0 (a collective: all ranks take part).
        method_states, rng_states = ctx.gather(method.state_dict()), ctx.gather(rng_state(ctx))
        if ctx.is_main:
            write_metrics(out, history)
            for key, value in asdict(metrics).items():
                if key != "epoch" and value is not None:
                    tensorboard.add_scalar(key, value, epoch)
            tensorboard.flush()
            if improved:
                save_atomically({"model": model.state_dict(), "epoch": epoch, "config": run_config}, out / "best.pt")
            if config.checkpoint_every and epoch % config.checkpoint_every == 0:
                save_atomically({"model": model.state_dict(), "epoch": epoch, "config": run_config}, out / f"model_epoch_{epoch}.pt")
            for stem, state_dict in method.artifacts().items():
                save_atomically(state_dict, out / f"{stem}.pt")
            last = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "method": method_states[0], "rng": rng_states[0],
                    "epoch": epoch, "config": run_config, "best": best, "history": history, "stale": stale}
            if ctx.distributed:  # rank r resumes from entry r; "method" and "rng" stay rank 0's
                last.update(world_size=ctx.world_size, method_by_rank=method_states, rng_by_rank=rng_states)
            save_atomically(last, last_path)
        if on_epoch:
            on_epoch(metrics)
    if tensorboard is not None:
        tensorboard.close()
    if best is None:
        raise RunError(f"{out}: already trained for {config.epochs} epochs; raise --epochs to train more")
    if ctx.is_main:
        save_atomically({"model": model.state_dict(), "epoch": history[-1]["epoch"], "config": run_config}, out / "final.pt")
    return best


def _method_options(config: FitConfig) -> dict[str, Any]:
    """The method's options, with `--seed` as its own seed unless an option sets one: runs with
    different seeds must differ in the method's draws too (fgsm-at's, the dual attacker's)."""
    accepted = inspect.signature(method_class(config.method).__init__).parameters
    return {"seed": config.seed, **config.options} if "seed" in accepted else dict(config.options)


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
