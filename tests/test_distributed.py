"""`trainer fit` in several processes (trainer/distributed.py): real torchrun, 2 processes, Gloo
on the CPU, one thread each, on 32 px crops the tests make.

The equality tests train `tiny_nobn` (tests/distributed_worker.py: a conv detector without batch
norm or dropout), so that one process on the global batch and two processes on its halves must
agree to rounding: batch norm would normalise each half with its own statistics (SyncBatchNorm,
which would make them agree, has no CPU implementation in PyTorch). One torchrun launch trains
every 2-process job; the single-process references run in this process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import pytest
import torch

from tests.distributed_worker import TINY, register_tiny
from trainer import distributed
from trainer.checkpoints import rank_states
from trainer.config import FitConfig, resume_differences
from trainer.data.synthetic import make_face_dataset
from trainer.fit import fit

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().parent / "distributed_worker.py"
ATOL = 1e-5
# One SGD step of a global batch of 8 (each process 4), no augmentation: the batch is the only draw.
ONE_STEP = {"epochs": 1, "batch_size": 8, "epoch_size": 8, "optimizer": "sgd", "lr": 0.1, "augment": "none",
            "workers": 0, "size": 32, "seed": 3}
# Epoch 1 of two steps, then epoch 2 resumed with --epochs 2 (momentum; the cosine schedule
# recomputed for 2 epochs, as a resume with a larger --epochs does).
TWO_EPOCHS = {**ONE_STEP, "epoch_size": 16, "epochs": 2}
FIRST_EPOCH = {**TWO_EPOCHS, "epochs": 1}
GRADREG = {"r": 1.0, "alpha": 0.5}  # both passes count, and a perturbation large enough to matter
# Two steps each (DDP raises at the second if the first left a reduction unfinished).
METHODS = {"fgsm-at": {"p": 1.0}, "fgsm-rs": {}, "pgd-at": {"steps": 1}, "trades": {"steps": 1},
           "dual-attacker": {"pgd_steps": 1}}


def _config(data: Path, out: Path, **values) -> dict:
    return {"data": str(data), "out": str(out), "arch": TINY, **values}


def _model(run: Path, checkpoint: str = "final") -> dict[str, torch.Tensor]:
    return torch.load(run / f"{checkpoint}.pt", weights_only=True)["model"]


def _close(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)


@pytest.fixture(scope="module")
def tiny_architecture():
    """tiny_nobn in this process's registry for this module only (other tests list the real ones)."""
    from trainer.models import registry

    register_tiny()
    yield TINY
    registry._REGISTRY.pop(TINY, None)


@pytest.fixture(scope="module")
def runs(tiny_architecture, tmp_path_factory) -> dict:
    """Every run: the 2-process ones from one torchrun launch, the references here."""
    root = tmp_path_factory.mktemp("distributed")
    data = root / "data"
    make_face_dataset(data, {"train": 8, "validation": 5}, size=32)
    (data / "validation" / "real" / "astronaut_004_0.png").unlink()  # 9 crops: shares of 5 and 4
    single = lambda name, resume=False, **values: fit(FitConfig(**_config(data, root / name, **values)), resume=resume)

    single("one-erm", **ONE_STEP)
    single("one-gradreg", method="gradreg", options=GRADREG, **ONE_STEP)
    single("one-then-one", **FIRST_EPOCH)
    single("one-then-one", resume=True, **TWO_EPOCHS)
    single("one-then-two", **FIRST_EPOCH)  # epoch 1 here, epoch 2 in two processes

    jobs = [
        {"name": "erm", "config": _config(data, root / "two-erm", **ONE_STEP)},
        {"name": "gradreg", "config": _config(data, root / "two-gradreg", method="gradreg", options=GRADREG, **ONE_STEP)},
        {"name": "first-epoch", "config": _config(data, root / "two-then-one", **FIRST_EPOCH)},
        {"name": "resumed", "config": _config(data, root / "one-then-two", **TWO_EPOCHS), "resume": True},
        *({"name": method, "config": _config(data, root / f"two-{method}", method=method, options=options,
                                             paired=method == "fgsm-rs", **{**ONE_STEP, "epoch_size": 16})}
          for method, options in METHODS.items()),
        {"name": "odd-batch", "config": _config(data, root / "odd", **{**ONE_STEP, "batch_size": 7})},
        {"name": "sync-bn", "config": _config(data, root / "sync-bn", sync_bn=True, **ONE_STEP)},
    ]
    reports = root / "reports"
    reports.mkdir()
    (root / "jobs.json").write_text(json.dumps({"root": str(root), "reports": str(reports), "jobs": jobs}))
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2"]
    completed = subprocess.run(torchrun + [str(WORKER), str(root / "jobs.json")],
                               cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                               timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]

    single("two-then-one", resume=True, **TWO_EPOCHS)  # epoch 2 of the 2-process run, here
    return {"root": root, "data": data,
            "ranks": [json.loads((reports / f"rank-{rank}.json").read_text()) for rank in (0, 1)]}


@pytest.mark.parametrize("method", ["erm", "gradreg"])
def test_a_step_in_two_processes_is_one_process_step_on_the_global_batch(runs, method):
    root = runs["root"]
    assert _close(_model(root / f"two-{method}"), _model(root / f"one-{method}")) < ATOL
    two, one = (json.loads((root / f"{prefix}-{method}" / "metrics.jsonl").read_text()) for prefix in ("two", "one"))
    # Validation over all 9 crops (shares of 5 and 4, gathered), not an average of two AUCs.
    assert two["val_auc"] == pytest.approx(one["val_auc"], abs=1e-6)
    assert two["val_loss"] == pytest.approx(one["val_loss"], abs=1e-6)
    assert two["train_loss"] == pytest.approx(one["train_loss"], abs=1e-5)
    assert two["train_accuracy"] == one["train_accuracy"]


def test_gradreg_differs_from_erm_beyond_the_tolerance(runs):
    """So the gradreg equality above checks the perturbation (its norm is summed over processes)."""
    root = runs["root"]
    assert _close(_model(root / "one-gradreg"), _model(root / "one-erm")) > 100 * ATOL


@pytest.mark.parametrize("run", ["two-then-one", "one-then-two"])
def test_a_checkpoint_resumes_across_world_sizes(runs, run):
    """2 processes then 1, and 1 then 2, train what 1 process does in both epochs: the model, the
    momentum buffers and the schedule carry over (the global batch and steps do not depend on
    the number of processes)."""
    root = runs["root"]
    got = torch.load(root / run / "last.pt", weights_only=True)
    want = torch.load(root / "one-then-one" / "last.pt", weights_only=True)
    assert got["epoch"] == want["epoch"] == 2
    assert _close(got["model"], want["model"]) < ATOL
    assert not any(key.startswith("module.") for key in got["model"])
    for a, b in zip(got["optimizer"]["state"].values(), want["optimizer"]["state"].values()):
        assert torch.allclose(a["momentum_buffer"], b["momentum_buffer"], atol=ATOL)
    assert got["scheduler"]["last_epoch"] == want["scheduler"]["last_epoch"] == 4
    assert [row["epoch"] for row in got["history"]] == [1, 2]
    assert ("world_size" in got) == (run == "one-then-two")  # written by 2 processes, or by 1


def test_every_method_trains_in_two_processes(runs):
    root = runs["root"]
    for method in METHODS:
        assert "best" in runs["ranks"][0]["results"][method], runs["ranks"][0]["results"][method]
        last = torch.load(root / f"two-{method}" / "last.pt", weights_only=True)
        assert last["world_size"] == 2 and len(last["method_by_rank"]) == 2
        first, second = last["method_by_rank"]
        # Attack draws: each rank its own generator (seed + rank).
        assert not torch.equal(first["generator"], second["generator"]), method
        assert torch.equal(first["generator"], last["method"]["generator"])
        record = json.loads((root / f"two-{method}" / "config.json").read_text())["distributed"]
        assert record["world_size"] == 2 and record["backend"] == "gloo" and record["batch_size_per_process"] == 4
        assert [s["method"] for s in record["seeds"]] == [3, 4]
        assert [s["torch_numpy_python"] for s in record["seeds"]] == [3, 4]
    # The dual attacker's U-Net trains in sync: both ranks hold the same one after their different shares.
    first, second = torch.load(root / "two-dual-attacker" / "last.pt", weights_only=True)["method_by_rank"]
    assert all(torch.equal(first["unet"][k], second["unet"][k]) for k in first["unet"])
    assert (root / "two-dual-attacker" / "unet_attacker.pt").is_file()


def test_only_rank_0_writes(runs):
    root = runs["root"]
    assert runs["ranks"][1]["writes"] == []
    # The audit hook sees rank 0's writes: config, metrics, TensorBoard, checkpoints (atomic renames).
    written = "\n".join(runs["ranks"][0]["writes"])
    for name in ("config.json", "metrics.jsonl", "tensorboard/events", "last.pt.partial", "final.pt", "unet_attacker.pt"):
        assert name in written, name
    assert "os.replace" in written or "os.rename" in written
    for run in ("two-erm", "two-gradreg", "two-dual-attacker"):
        assert len(list((root / run / "tensorboard").iterdir())) == len(list((root / "one-erm" / "tensorboard").iterdir()))
        lines = (root / run / "metrics.jsonl").read_text().splitlines()
        assert len(lines) == json.loads(lines[-1])["epoch"]


def test_what_cannot_be_split_is_refused_on_every_rank(runs):
    for report in runs["ranks"]:
        assert "multiple of 2" in report["results"]["odd-batch"]["error"]
        assert "SyncBatchNorm has no CPU implementation" in report["results"]["sync-bn"]["error"]


def test_trainer_fit_nproc_runs_itself_under_torchrun(runs, tmp_path):
    """`trainer fit --nproc 2`: a real architecture (batch norm per process), rank 0 alone reports."""
    out = tmp_path / "run"
    completed = subprocess.run(
        [sys.executable, "-m", "trainer", "fit", "--nproc", "2", "--data", str(runs["data"]), "--out", str(out),
         "--arch", "efficientnet_lite0_stats", "--init", "random", "--size", "32", "--batch-size", "8",
         "--epoch-size", "8", "--epochs", "1", "--workers", "0", "--augment", "none", "--device", "cpu"],
        cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-4000:]
    assert completed.stderr.count("epoch 1: train loss") == 1
    assert completed.stderr.count("best epoch 1") == 1
    config = json.loads((out / "config.json").read_text())
    assert config["distributed"]["world_size"] == 2 and "nproc" not in config["fit"]
    assert (out / "final.pt").is_file()


# ------------------------------------------------------------------ units, without processes

def test_shards_of_each_global_batch_are_disjoint_and_make_it_whole():
    from torch.utils.data import BatchSampler, WeightedRandomSampler

    def global_batches():
        sampler = WeightedRandomSampler(torch.ones(20, dtype=torch.double), 24, generator=torch.Generator().manual_seed(1))
        return BatchSampler(sampler, 8, drop_last=True)

    shards = [list(distributed.ShardedBatchSampler(global_batches(), rank, 4)) for rank in range(4)]
    for step, batch in enumerate(global_batches()):
        assert sum((shard[step] for shard in shards), []) == batch
        assert all(len(shard[step]) == 2 for shard in shards)
    assert len(distributed.ShardedBatchSampler(global_batches(), 0, 4)) == 3


def test_context_comes_from_torchruns_environment():
    assert not distributed.Context.from_environment({}).distributed
    assert not distributed.Context.from_environment({"WORLD_SIZE": "1", "RANK": "0"}).distributed
    ctx = distributed.Context.from_environment({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (ctx.rank, ctx.world_size, ctx.local_rank, ctx.is_main) == (3, 4, 1, False)
    assert ctx.share(32) == 8
    with pytest.raises(ValueError, match="multiple of 4"):
        ctx.share(30)
    with pytest.raises(ValueError, match="LOCAL_RANK"):
        distributed.Context.from_environment({"WORLD_SIZE": "2", "RANK": "0"})


def test_nproc_becomes_the_same_command_under_torchrun():
    args = distributed.launch_arguments(["fit", "--data", "d", "--nproc", "4", "--out", "o", "--nproc=2", "--resume"])
    assert args == ["fit", "--data", "d", "--out", "o", "--resume"]
    command = distributed.torchrun_command(4, args)
    assert command[:5] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=4"]
    assert command[5:] == ["-m", "trainer", *args]


def test_state_dicts_load_with_or_without_ddps_prefix():
    state = {"backbone.weight": torch.ones(1), "mean": torch.zeros(1)}
    assert distributed.plain_state_dict({f"module.{k}": v for k, v in state.items()}) == state
    assert distributed.plain_state_dict(state) is state


def test_a_rank_the_checkpoint_has_no_state_for_takes_rank_0s_with_its_own_generator():
    own, fresh = torch.ByteTensor([1]), torch.ByteTensor([2])
    state = {"method": {"generator": own, "unet": 1}, "rng": {"torch": 0}}
    assert rank_states(state, 0, {"generator": fresh}) == (state["method"], state["rng"])
    method_state, rng_state = rank_states(state, 1, {"generator": fresh})
    assert method_state == {"generator": fresh, "unet": 1} and rng_state is None
    by_rank = {**state, "method_by_rank": [{"generator": own}, {"generator": fresh}], "rng_by_rank": [{}, {"torch": 1}]}
    assert rank_states(by_rank, 1, {}) == ({"generator": fresh}, {"torch": 1})


def test_fit_config_records_sync_bn_and_old_runs_without_it_still_resume():
    config = FitConfig(data="d", out="o")
    saved = {key: value for key, value in asdict(config).items() if key != "sync_bn"}
    assert resume_differences(saved, config) == []
    assert resume_differences({**saved, "sync_bn": True}, config) == ["sync_bn True → False"]
