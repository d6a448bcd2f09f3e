"""Bring `trainer fit` runs back from a lent GPU machine within what a call returns (8 files of
16 MiB): each run becomes one file holding its best and last epochs' weights in float16 (batch-norm
statistics kept in float32), its config.json and metrics.jsonl; here it becomes a run folder
again, which `trainer eval` and `trainer export` read like any other.

    python scripts/gpu_checkpoints.py shrink RUNS_DIR OUT_DIR     (there: RUNS_DIR/NAME -> OUT_DIR/NAME.pt)
    python scripts/gpu_checkpoints.py restore FILE.pt RUN_DIR     (here)

The restored weights are the float16-rounded ones: what is evaluated and exported here is that
model, not the float32 one the GPU machine held.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch


def half_precision(weights: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """float16 weights; batch-norm statistics stay float32 (a variance can underflow float16)."""
    return {key: value.half() if value.is_floating_point() and "running_" not in key else value
            for key, value in weights.items()}


def _epoch_state(path: Path) -> dict | None:
    if not path.is_file():
        return None
    state = torch.load(path, map_location="cpu", weights_only=True)
    return {"model": half_precision(state["model"]), "epoch": state.get("epoch"), "config": state.get("config")}


def shrink(runs: Path, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for run in sorted(p for p in runs.iterdir() if p.is_dir()):
        best, last = _epoch_state(run / "best.pt"), _epoch_state(run / "last.pt")
        if best is None:
            print(f"{run.name}: no finished epoch, nothing to bring back")
            continue
        metrics = run / "metrics.jsonl"
        torch.save({"best": best, "last": last or best, "config_json": (run / "config.json").read_text(),
                    "metrics_jsonl": metrics.read_text() if metrics.is_file() else ""}, out / f"{run.name}.pt")
        print(f"{run.name}: best epoch {best['epoch']}, last epoch {(last or best)['epoch']} -> {out / run.name}.pt")


def restore(file: Path, run: Path) -> None:
    packed = torch.load(file, map_location="cpu", weights_only=True)
    run.mkdir(parents=True, exist_ok=True)
    for name in ("best", "last"):
        state = packed[name]
        weights = {key: value.float() if value.is_floating_point() else value for key, value in state["model"].items()}
        torch.save({"model": weights, "epoch": state["epoch"], "config": state["config"]}, run / f"{name}.pt")
    (run / "config.json").write_text(packed["config_json"])
    (run / "metrics.jsonl").write_text(packed["metrics_jsonl"])
    print(f"{run}: best epoch {packed['best']['epoch']}, last epoch {packed['last']['epoch']}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    shrink_parser = commands.add_parser("shrink")
    shrink_parser.add_argument("runs", type=Path)
    shrink_parser.add_argument("out", type=Path)
    restore_parser = commands.add_parser("restore")
    restore_parser.add_argument("file", type=Path)
    restore_parser.add_argument("run", type=Path)
    args = parser.parse_args()
    if args.command == "shrink":
        shrink(args.runs, args.out)
    else:
        restore(args.file, args.run)


if __name__ == "__main__":
    main()
