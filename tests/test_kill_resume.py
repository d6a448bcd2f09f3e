"""SIGKILL a real `trainer fit` mid-run, `--resume` it, and get the uninterrupted run's results.

Two `python -m trainer fit` processes with the same settings (CPU, one thread, --workers 0,
--seed 5) start together: one runs to the end; the other is killed with SIGKILL as soon as its
last.pt exists, i.e. after epoch 1 was saved and while epoch 2 trains (or, on a slow machine,
later; the test reads which epoch last.pt holds). `--resume` then restarts from that checkpoint:
the model, AdamW and scheduler states, the torch/NumPy/Python RNG states saved after that epoch's
validation, and the history. Each epoch draws its batches from a generator seeded by seed and
epoch, and with one thread on the CPU every operation is deterministic, so the resumed run is the
uninterrupted one bit for bit: the same per-epoch losses, accuracies and AUCs (only the timings
differ) and exactly equal final weights. Augmentation and dropout draw from the restored global
RNG, so a resume that failed to restore it would show here.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from trainer.data.synthetic import make_face_dataset

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 3
TIMED = ("images_per_second", "seconds")  # wall-clock figures: the only ones allowed to differ


def _command(data: Path, out: Path, *extra: str) -> list[str]:
    # efficientnet_lite0 from random weights at 48 px (at 32 its last blocks see 1x1 maps): the
    # standard augmentation and the classifier's dropout both draw from the global RNG.
    return [sys.executable, "-m", "trainer", "fit", "--data", str(data), "--out", str(out),
            "--arch", "efficientnet_lite0", "--init", "random", "--size", "48", "--batch-size", "8",
            "--epoch-size", "48", "--epochs", str(EPOCHS), "--workers", "0", "--device", "cpu",
            "--seed", "5", *extra]


def _start(command: list[str], log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    with open(log, "w") as handle:  # a file, not a pipe: the progress bar must never block on it
        return subprocess.Popen(command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _untimed(rows: list[dict]) -> list[dict]:
    return [{key: value for key, value in row.items() if key not in TIMED} for row in rows]


def test_sigkill_then_resume_matches_the_uninterrupted_run(tmp_path):
    data = tmp_path / "data"
    make_face_dataset(data, {"train": 12, "validation": 6}, size=48)
    whole, killed = tmp_path / "whole", tmp_path / "killed"

    reference = _start(_command(data, whole), tmp_path / "whole.log")
    victim = _start(_command(data, killed), tmp_path / "killed.log")
    try:
        deadline = time.monotonic() + 120
        while not (killed / "last.pt").exists():  # renamed into place whole: it exists only complete
            assert victim.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no last.pt after 120 s"
            time.sleep(0.02)
        victim.send_signal(signal.SIGKILL)
        assert victim.wait(timeout=30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    assert not (killed / "final.pt").exists(), "the run ended before it was killed"
    saved_epoch = torch.load(killed / "last.pt", map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= saved_epoch < EPOCHS

    # What a kill inside a save leaves (the kill above usually falls between saves): the
    # resume must read the whole last.pt beside them and remove them.
    for name in ("last.pt.partial", "best.pt.partial", "metrics.jsonl.partial"):
        (killed / name).write_bytes(b"PK\x03\x04 torn")
    resumed = _start(_command(data, killed, "--resume"), tmp_path / "resumed.log")
    assert resumed.wait(timeout=180) == 0, (tmp_path / "resumed.log").read_text()[-3000:]
    assert reference.wait(timeout=180) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    assert f"epoch {saved_epoch + 1}: train loss" in (tmp_path / "resumed.log").read_text()
    assert f"epoch {saved_epoch}: train loss" not in (tmp_path / "resumed.log").read_text()

    # Every epoch's figures, those trained after the kill included, are the uninterrupted run's.
    expected, got = _metrics(whole), _metrics(killed)
    assert [row["epoch"] for row in got] == list(range(1, EPOCHS + 1))
    assert _untimed(got) == _untimed(expected)
    assert all(row["val_auc"] is not None for row in got)
    for name in ("final.pt", "last.pt", "best.pt"):
        a = torch.load(whole / name, map_location="cpu", weights_only=True)["model"]
        b = torch.load(killed / name, map_location="cpu", weights_only=True)["model"]
        assert a.keys() == b.keys()
        assert all(torch.equal(a[key], b[key]) for key in a), name
    last = torch.load(killed / "last.pt", map_location="cpu", weights_only=True)
    assert last["epoch"] == EPOCHS and len(last["history"]) == EPOCHS
    # Nothing half-written is left behind, whether or not the kill fell inside a save.
    assert not [p.name for p in killed.iterdir() if p.name.endswith(".partial")]
    json.loads((killed / "config.json").read_text())


def test_a_save_reaches_the_disk_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
    """fsync the new file, then os.replace, then fsync the folder (or a power cut can leave
    an empty file under the final name, or the old name)."""
    from trainer import checkpoints

    calls: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd: int) -> None:
        calls.append("fsync folder" if os.path.isdir(f"/proc/self/fd/{fd}") else "fsync file")
        real_fsync(fd)

    def replace(source, target) -> None:
        calls.append(f"replace {Path(source).name} {Path(target).name}")
        real_replace(source, target)

    monkeypatch.setattr(checkpoints.os, "fsync", fsync)
    monkeypatch.setattr(checkpoints.os, "replace", replace)
    (tmp_path / "last.pt").write_bytes(b"old")
    checkpoints.save_atomically({"x": torch.ones(2)}, tmp_path / "last.pt")
    assert calls == ["fsync file", "replace last.pt.partial last.pt", "fsync folder"]
    assert torch.equal(torch.load(tmp_path / "last.pt", weights_only=True)["x"], torch.ones(2))
    calls.clear()
    checkpoints.write_metrics(tmp_path, [{"epoch": 1, "val_auc": 0.5}])
    assert calls == ["fsync file", "replace metrics.jsonl.partial metrics.jsonl", "fsync folder",
                     "fsync file", "replace metrics.csv.partial metrics.csv", "fsync folder"]
    assert (tmp_path / "metrics.csv").read_bytes() == b"epoch,val_auc\r\n1,0.5\r\n"  # as before: csv, newline=""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "metrics.csv", "metrics.jsonl"]
