"""`trainer average`: several runs of one architecture, fine-tuned from the same start, as one
model whose weights are their uniform average (a "model soup", Wortsman et al., ICML 2022; timm's
avg_checkpoints.py does the same for one run's epochs). It costs one model's time and size per
crop where an ensemble of the runs costs all of theirs; whether it keeps the ensemble's accuracy
is an empirical question for each recipe (runs that start from different weights do not average).

OUT gets one checkpoint under each of the names export and eval take (best.pt, last.pt and
final.pt are hard links to one file) and config.json. Its config is the first run's with
"averaged": the runs, checkpoints, epochs and data it was made from, which `trainer export`
copies into the bundle's manifest. Floating-point tensors (weights, batch-norm running means
and variances) are averaged; integer ones (batch-norm's batch counters) are the first run's.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import torch

from trainer.checkpoints import CheckpointError, read_run_checkpoint, save_atomically, write_atomically

CHECKPOINT_NAMES = ("best", "last", "final")
# Settings that must agree for averaged weights to be one model that sees crops as each run did.
SAME_SETTINGS = ("arch", "size")


class AverageError(Exception):
    """Runs that cannot be averaged, or an OUT that would be overwritten, in one line."""


def average_runs(runs: Sequence[Path], out: Path, checkpoint: str = "last") -> dict:
    """Write OUT (see the module docstring) and return its config."""
    if len(runs) < 2:
        raise AverageError("averaging needs at least two runs")
    if checkpoint not in CHECKPOINT_NAMES:
        raise AverageError(f"--checkpoint must be one of {', '.join(CHECKPOINT_NAMES)}, not {checkpoint!r}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise AverageError(f"{out}: exists and is not empty; choose another --out")
    try:
        states = [read_run_checkpoint(run, checkpoint) for run in runs]
    except CheckpointError as exc:
        raise AverageError(str(exc)) from None
    first = states[0]
    for run, state in zip(runs[1:], states[1:]):
        for key in SAME_SETTINGS:
            if state["config"]["fit"][key] != first["config"]["fit"][key]:
                raise AverageError(f"{run}: {key} {state['config']['fit'][key]!r} differs from "
                                   f"{runs[0]}'s {first['config']['fit'][key]!r}")
        for key in ("mean", "std"):
            if state["config"].get(key) != first["config"].get(key):
                raise AverageError(f"{run}: input normalisation ({key}) differs from {runs[0]}'s")
        shapes = {name: tuple(t.shape) for name, t in state["model"].items()}
        if shapes != {name: tuple(t.shape) for name, t in first["model"].items()}:
            raise AverageError(f"{run}: its weights' names or shapes differ from {runs[0]}'s")

    averaged = {}
    for name, tensor in first["model"].items():
        if tensor.is_floating_point():
            total = torch.stack([state["model"][name].double() for state in states]).mean(dim=0)
            averaged[name] = total.to(tensor.dtype)
        else:
            averaged[name] = tensor.clone()
    config = {**first["config"], "averaged": {
        "runs": [str(run) for run in runs], "checkpoint": checkpoint,
        "epochs": [state["epoch"] for state in states],
        "data": [state["config"]["fit"]["data"] for state in states]}}
    out.mkdir(parents=True, exist_ok=True)
    save_atomically({"model": averaged, "epoch": max(state["epoch"] for state in states), "config": config},
                    out / "final.pt")
    for name in ("best", "last"):
        os.link(out / "final.pt", out / f"{name}.pt")
    write_atomically(out / "config.json", lambda handle: handle.write(json.dumps(config, indent=2) + "\n"), binary=False)
    return config
