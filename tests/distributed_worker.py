"""Run by tests/test_distributed.py under torchrun (2 processes, Gloo, one thread each): trains
the jobs of a JSON file with `trainer.fit.fit`, in order, in one process group, and writes what
this rank saw to REPORTS/rank-R.json: each job's best metrics or error, and every file this rank
created, wrote, renamed or removed under the runs' root (an audit hook: rank 0 alone may write).
Not collected by pytest (no test_ prefix).

    torchrun --standalone --nproc-per-node 2 tests/distributed_worker.py JOBS.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from torch import nn

TINY = "tiny_nobn"


def _tiny_backbone(imagenet: bool = False) -> nn.Module:
    backbone = nn.Sequential()
    backbone.add_module("stem", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU()))
    backbone.add_module("shallow", nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.ReLU()))
    backbone.add_module("deep", nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                                              nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2)))
    return backbone


def register_tiny() -> str:
    """A 32 px conv detector without batch norm or dropout (so one process on the global batch and
    two processes on its halves agree to rounding), registered once per process."""
    from trainer.models import model_spec
    from trainer.models.registry import register_model

    try:
        model_spec(TINY)
    except KeyError:
        register_model(TINY, shallow_layer="shallow", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
                       input_size=32, imagenet=False)(_tiny_backbone)
    return TINY


def _audit_writes(root: str, writes: list[str]):
    """An audit hook recording every write-like file operation under `root`."""
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
    state = {"on": True}

    def hook(event: str, args: tuple) -> None:
        if not state["on"]:
            return
        if event == "open":
            path, mode, flags = args
            writing = any(c in mode for c in "wax+") if isinstance(mode, str) else bool((flags or 0) & write_flags)
            paths = [path] if writing else []
        elif event in ("os.mkdir", "os.remove", "os.rmdir", "os.truncate"):
            paths = [args[0]]
        elif event in ("os.rename", "os.replace", "os.link", "os.symlink"):
            paths = [args[0], args[1]]
        else:
            return
        for path in paths:
            if isinstance(path, (str, bytes, os.PathLike)) and os.fsdecode(path).startswith(root):
                writes.append(f"{event} {os.fsdecode(path)}")

    sys.addaudithook(hook)
    return state


def main(jobs_file: str) -> None:
    torch.set_num_threads(1)
    import torch.distributed as dist

    from trainer.config import FitConfig, RunError
    from trainer.fit import fit

    spec = json.loads(Path(jobs_file).read_text())
    rank = int(os.environ["RANK"])
    dist.init_process_group("gloo")  # fit() joins this group rather than starting its own
    register_tiny()
    writes: list[str] = []
    audit = _audit_writes(spec["root"], writes)
    results = {}
    for job in spec["jobs"]:
        try:
            results[job["name"]] = {"best": fit(FitConfig(**job["config"]), resume=job.get("resume", False))}
        except RunError as exc:
            results[job["name"]] = {"error": str(exc)}
    audit["on"] = False
    dist.destroy_process_group()
    report = Path(spec["reports"]) / f"rank-{rank}.json"
    report.write_text(json.dumps({"rank": rank, "results": results, "writes": writes}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1])
