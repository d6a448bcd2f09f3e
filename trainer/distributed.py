"""`trainer fit` in several processes: PyTorch's DistributedDataParallel (DDP), started by torchrun.

    torchrun --nproc-per-node N -m trainer fit ...       N processes on this machine
    trainer fit --nproc N ...                            the same: execs exactly that torchrun command
    torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d --rdzv-endpoint HOST:PORT -m trainer fit ...

A process is in distributed mode when torchrun's WORLD_SIZE is above 1 (with RANK and
LOCAL_RANK); it then joins the process group (NCCL on CUDA, process LOCAL_RANK on GPU
LOCAL_RANK; Gloo on the CPU). Otherwise `Context` is one process and every helper here is the
identity, so a single-process run does exactly what it did before this module.

What the training loop takes from here (trainer/fit.py):
  - `--batch-size` is the global batch: each of the W processes takes batch_size / W of it
    (`Context.share`). Every process draws the same seeded epoch (the class-balanced
    WeightedRandomSampler, or PairedBatchSampler with `--paired`) and `ShardedBatchSampler`
    gives process r the r-th contiguous slice of each global batch, so the W slices of a step
    are exactly the batch one process would have taken. Since the batch and the steps per epoch
    do not depend on W, the learning-rate schedule and a checkpoint mean the same at any W.
  - The detector is wrapped in DDP (`Context.wrap`): gradients are averaged over processes in
    the backward pass, so each process's mean loss over its share averages to the global
    batch's mean loss. Methods attack the unwrapped module (`unwrap`): an attack takes input
    gradients only, and DDP must not expect a parameter all-reduce for it.
  - Batch norm normalises with each process's own share (DDP's default; its running statistics
    are rank 0's, broadcast at every forward); `--sync-bn` converts it to SyncBatchNorm (CUDA
    only: PyTorch has no CPU implementation).
  - Validation: each process scores every W-th crop; labels, scores and losses are gathered, so
    the ROC-AUC is the whole validation set's, not an average of per-process AUCs.
  - Only rank 0 writes (config.json, metrics, TensorBoard, checkpoints) and reports progress.
"""

from __future__ import annotations

import os
import sys
from contextlib import nullcontext
from typing import Any, ContextManager, Iterable, Iterator, Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import Dataset, Sampler, Subset


class Context:
    """This process's place in the run: rank, world size, and the process group once started."""

    def __init__(self, rank: int = 0, world_size: int = 1, local_rank: int = 0):
        self.rank, self.world_size, self.local_rank = rank, world_size, local_rank
        self.backend: str | None = None
        self.device: torch.device | None = None
        self._owns_group = False

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> "Context":
        """From torchrun's RANK, WORLD_SIZE and LOCAL_RANK; one process when WORLD_SIZE is unset or 1."""
        environ = os.environ if environ is None else environ
        world_size = int(environ.get("WORLD_SIZE") or 1)
        if world_size <= 1:
            return cls()
        missing = [name for name in ("RANK", "LOCAL_RANK") if name not in environ]
        if missing:
            raise ValueError(f"WORLD_SIZE={world_size} without {' and '.join(missing)}: start several processes with torchrun")
        return cls(int(environ["RANK"]), world_size, int(environ["LOCAL_RANK"]))

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def start(self, device: torch.device) -> torch.device:
        """Join the process group (unless the caller already did) and return this process's device."""
        if not self.distributed:
            return device
        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise ValueError(f"process {self.rank} has LOCAL_RANK {self.local_rank} but torch sees "
                                 f"{torch.cuda.device_count()} CUDA device(s): start at most one process per GPU")
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
        self.device = device
        if dist.is_initialized():  # a script that set up the group itself, then called fit()
            if (dist.get_rank(), dist.get_world_size()) != (self.rank, self.world_size):
                raise ValueError(f"the process group (rank {dist.get_rank()} of {dist.get_world_size()}) "
                                 f"disagrees with RANK={self.rank} WORLD_SIZE={self.world_size}")
        else:
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                    device_id=device if device.type == "cuda" else None)
            self._owns_group = True
        self.backend = dist.get_backend()
        return device

    def stop(self) -> None:
        if self._owns_group and dist.is_initialized():
            dist.destroy_process_group()
        self._owns_group = False

    # ---------------------------------------------------------------------- data

    def share(self, batch_size: int) -> int:
        """Each process's part of the global batch."""
        if batch_size % self.world_size:
            raise ValueError(f"--batch-size {batch_size} is the global batch, split over {self.world_size} "
                             f"processes: it must be a multiple of {self.world_size}")
        return batch_size // self.world_size

    def shard_batches(self, batches: Sampler[list[int]]) -> Sampler[list[int]]:
        return ShardedBatchSampler(batches, self.rank, self.world_size) if self.distributed else batches

    def shard_dataset(self, dataset: Dataset) -> Dataset:
        """Every world_size-th item from this rank's (no padding: gathered results count each once)."""
        return Subset(dataset, range(self.rank, len(dataset), self.world_size)) if self.distributed else dataset

    # ---------------------------------------------------------------------- models

    def convert_sync_batch_norm(self, model: nn.Module, device: torch.device) -> nn.Module:
        """`--sync-bn`: batch-norm statistics over the global batch (a no-op in one process)."""
        if not self.distributed:
            return model
        if device.type != "cuda":
            raise ValueError("--sync-bn needs CUDA: PyTorch's SyncBatchNorm has no CPU implementation "
                             "(on the CPU, batch norm uses each process's own share)")
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)

    def wrap(self, module: nn.Module) -> nn.Module:
        """`module` in DDP (its parameters and buffers broadcast from rank 0 now, its gradients
        averaged in every backward); the module itself in one process."""
        if not self.distributed:
            return module
        device_ids = [self.device.index] if self.device is not None and self.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=device_ids)

    def sync_buffers(self, module: nn.Module) -> None:
        """Rank 0's buffers (batch-norm running statistics) everywhere: without --sync-bn each
        process's last forward updated its own, and one model is validated and saved."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)

    # ---------------------------------------------------------------------- results

    def sum(self, values: Sequence[float]) -> list[float]:
        """Each value summed over processes (the values themselves in one process)."""
        if not self.distributed:
            return list(values)
        total = torch.tensor([float(v) for v in values], dtype=torch.float64, device=self._tensor_device())
        dist.all_reduce(total)
        return total.tolist()

    def gather_predictions(self, labels: np.ndarray, scores: np.ndarray,
                           mean_loss: float) -> tuple[np.ndarray, np.ndarray, float]:
        """The whole validation set's labels, scores and mean loss from every process's share."""
        if not self.distributed:
            return labels, scores, mean_loss
        parts: list[Any] = [None] * self.world_size
        dist.all_gather_object(parts, (labels, scores, mean_loss * len(labels)))
        count = sum(len(part[0]) for part in parts)
        return (np.concatenate([part[0] for part in parts]), np.concatenate([part[1] for part in parts]),
                sum(part[2] for part in parts) / max(count, 1))

    def gather(self, obj: Any) -> list[Any] | None:
        """Every process's `obj` (tensors moved to the CPU) as a list on rank 0, None elsewhere."""
        if not self.distributed:
            return [obj]
        gathered: list[Any] | None = [None] * self.world_size if self.is_main else None
        dist.gather_object(_to_cpu(obj), gathered, dst=0)
        return gathered

    def _tensor_device(self) -> torch.device:
        return self.device if self.device is not None and self.backend == "nccl" else torch.device("cpu")


class ShardedBatchSampler(Sampler[list[int]]):
    """Process `rank`'s contiguous share of each batch of `batches` (a batch sampler every process
    builds alike from the same seed): the shares of one step together are the global batch.
    A batch that does not divide by `world_size` (only the one short batch of an epoch smaller than
    --batch-size) loses its last len % world_size items, so that every share is the same size.
    `set_epoch` is passed on to `batches`."""

    def __init__(self, batches: Sampler[list[int]], rank: int, world_size: int):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
        self.batches, self.rank, self.world_size = batches, rank, world_size

    def set_epoch(self, epoch: int) -> None:
        if hasattr(self.batches, "set_epoch"):
            self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[list[int]]:
        for batch in self.batches:
            share = len(batch) // self.world_size
            if share == 0:
                raise ValueError(f"a batch of {len(batch)} cannot be shared by {self.world_size} processes")
            yield list(batch)[self.rank * share:(self.rank + 1) * share]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DDP (the model itself when it is not wrapped)."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def world_size_of(model: nn.Module | None) -> int:
    """How many processes average `model`'s gradients (1 unless it is wrapped in DDP)."""
    if isinstance(model, DistributedDataParallel):
        return dist.get_world_size(model.process_group)
    return 1


def all_reduce_sum(tensor: torch.Tensor, model: nn.Module) -> torch.Tensor:
    """`tensor` summed over the processes that share DDP-wrapped `model` (in place; returned)."""
    if isinstance(model, DistributedDataParallel):
        dist.all_reduce(tensor, group=model.process_group)
    return tensor


def no_sync(model: nn.Module) -> ContextManager:
    """DDP's no_sync(): backward passes inside keep their gradients local (accumulated in .grad)
    until the next backward outside, which all-reduces the sum. A no-op for a plain module."""
    return model.no_sync() if isinstance(model, DistributedDataParallel) else nullcontext()


def plain_state_dict(state: dict[str, Any]) -> dict[str, Any]:
    """A state dict without DDP's `module.` prefix (checkpoints hold the unwrapped module's, but
    one saved from a DDP-wrapped model elsewhere loads too)."""
    if state and all(key.startswith("module.") for key in state):
        return {key[len("module."):]: value for key, value in state.items()}
    return state


def rank_from_environment() -> int:
    """torchrun's RANK (0 outside torchrun), for deciding who prints."""
    return Context.from_environment().rank


def launch_arguments(argv: Sequence[str]) -> list[str]:
    """A `trainer fit` command line without its --nproc option (what each process runs)."""
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc":
            skip = True
        elif not arg.startswith("--nproc="):
            args.append(arg)
    return args


def torchrun_command(nproc: int, trainer_args: Iterable[str]) -> list[str]:
    """`torchrun --standalone --nproc-per-node N -m trainer ARGS`, run by this Python
    (torchrun sets OMP_NUM_THREADS=1 in each process unless it is set)."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={int(nproc)}",
            "-m", "trainer", *trainer_args]


def _to_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {key: _to_cpu(value) for key, value in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(value) for value in obj)
    return obj
