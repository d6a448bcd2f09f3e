"""A run folder's files and what resumes from them: atomic writes (a crash, SIGKILL or power cut
leaves the previous file or the new one, never a torn one), metrics.jsonl and metrics.csv, the
RNG states last.pt keeps, and which of last.pt's per-rank states a process resumes from."""

from __future__ import annotations

import csv
import json
import os
import random
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from trainer import distributed


class CheckpointError(ValueError):
    """A run's checkpoint that is missing or unusable, in one line naming the file."""


def read_run_checkpoint(run_dir: Path, checkpoint: str) -> dict[str, Any]:
    """RUN_DIR/CHECKPOINT.pt as `trainer fit` saved it (never unpickled: weights_only=True),
    checked to hold a fit config and model weights."""
    path = Path(run_dir) / f"{checkpoint}.pt"
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint (is {run_dir} a `trainer fit` run folder?)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        state["config"]["fit"]["arch"], state["model"]  # noqa: B018 - a fit checkpoint has both
    except Exception as exc:  # unreadable, not a checkpoint
        first = (str(exc).splitlines() or [""])[0]
        raise CheckpointError(f"{path}: not a usable `trainer fit` checkpoint ({type(exc).__name__}: {first})") from None
    return state


def rng_state(ctx: distributed.Context | None = None) -> dict[str, Any]:
    """The torch, NumPy, Python and CUDA generators' states as tensors and plain values (last.pt
    loads with weights_only=True)."""
    state = {"torch": torch.get_rng_state(), "numpy": torch.tensor(np.random.get_state()[1].astype(np.int64)),
             "numpy_pos": int(np.random.get_state()[2]), "python": random.getstate()[1],
             "python_version": random.getstate()[0]}
    if ctx is not None and ctx.distributed and ctx.device.type == "cuda":
        state["cuda_device"] = torch.cuda.get_rng_state(ctx.device)  # its own GPU's (all would touch every GPU)
    elif torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()  # dropout and drop-path on the GPU
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None) -> None:
    """Restore what rng_state saved (a GPU's generator only on a CUDA `device`)."""
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_pos"]))
    random.setstate((state["python_version"], tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "cuda_device" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda_device"], device)


def rank_states(state: dict, rank: int, fresh_method_state: dict) -> tuple[dict, dict | None]:
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


def save_atomically(obj: Any, path: Path) -> None:
    """torch.save `obj` to `path` so that a crash, SIGKILL or power cut leaves the previous file or
    the new one, never a torn one (--resume reads last.pt)."""
    write_atomically(path, lambda handle: torch.save(obj, handle))


def write_atomically(path: Path, write: Callable[[Any], None], binary: bool = True) -> None:
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


def remove_partials(out: Path) -> None:
    """Remove the PATH.partial files a killed run left (its last.pt, the previous one, stays whole)."""
    for partial in out.glob("*.partial"):
        partial.unlink(missing_ok=True)


def write_metrics(out: Path, history: list[dict]) -> None:
    """Rewrite metrics.jsonl and metrics.csv from the history (so a resumed run never repeats a line)."""
    write_atomically(out / "metrics.jsonl", lambda handle: handle.write("".join(json.dumps(row) + "\n" for row in history)),
                     binary=False)

    def write_csv(handle) -> None:
        writer = csv.DictWriter(handle, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)

    write_atomically(out / "metrics.csv", write_csv, binary=False)
