"""Seconds per training step of each training method on one batch, from one run (the machine is
noisy, so the ratios to ERM taken in the same run matter more than the absolute numbers).

    .venv/bin/python bench/train_step.py [--arch efficientnet_lite0] [--batch 16] [--size 128]
                                         [--repeats 5] [--device cpu] [--threads N]

Every method trains its own copy of the same randomly initialised model (AdamW) on the same
batch; after one warm-up step each, the methods take turns step by step (so background load
hits them alike) for `--repeats` rounds; the best and the mean step of each are printed. Every
model and batch is channels-last, as `trainer fit` trains, but "erm contiguous" (PyTorch's
default layout), whose ratio to ERM is what the layout buys. On
CPU the figure is the process's CPU time per step (steadier than wall time when other jobs
share the cores; with --threads 1 it is the compute itself), the best wall time beside it.
fgsm-at with p=0.3 draws clean or adversarial per step, so its mean (over about
`--mixed-steps` steps) is the figure to read, beside (1 − f) · erm + f · (fgsm-at p=1) for the
share f of those steps that were adversarial (0.3 in expectation). Last, where dual-attacker's
step goes: PGD, the attacker's update, the detector's update on the tripled batch. On CUDA the
steps run under bfloat16 autocast, as `trainer fit` trains there, and the figure is wall time.
"""

from __future__ import annotations

import argparse
import copy
import platform
import time

import torch

from trainer.methods import create_method
from trainer.models import create_model

THEORY = {"gradreg": 2.0}  # forward+backward passes per step, relative to ERM


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mixed-steps", type=int, default=10)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's choice); 1 is steadier on a shared machine")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    device = torch.device(args.device)
    torch.manual_seed(0)
    # Channels-last, as `trainer fit` trains; "erm contiguous" is ERM in PyTorch's default layout, for the ratio.
    base = create_model(args.arch, init="random").to(device, memory_format=torch.channels_last)
    generator = torch.Generator().manual_seed(0)
    pixels = torch.rand(args.batch, 3, args.size, args.size, generator=generator).to(device, memory_format=torch.channels_last)
    labels = (torch.arange(args.batch) % 2).to(device)

    methods = {
        "erm": ("erm", {}),
        "gradreg": ("gradreg", {}),
        "fgsm-at p=1": ("fgsm-at", {"p": 1.0}),
        "fgsm-rs": ("fgsm-rs", {}),
        "pgd-at": ("pgd-at", {}),
        "trades": ("trades", {}),
        "dual-attacker": ("dual-attacker", {}),
    }
    runs = {}
    for label, (name, options) in methods.items():
        model = copy.deepcopy(base).train()
        method = create_method(name, **options)
        method.setup(model, device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
        runs[label] = (model, method, optimizer)
    contiguous = copy.deepcopy(base).to(memory_format=torch.contiguous_format).train()
    runs["erm contiguous"] = (contiguous, create_method("erm"), torch.optim.AdamW(contiguous.parameters(), lr=1e-4))

    def timed(work) -> tuple[float, float, object]:
        """(wall seconds, CPU seconds of this process, result)."""
        if device.type == "cuda":
            torch.cuda.synchronize()
        wall, cpu = time.perf_counter(), time.process_time()
        result = work()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - wall, time.process_time() - cpu, result

    # As `trainer fit` trains: bfloat16 autocast on CUDA.
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")

    def one_step(label: str) -> tuple[float, float, dict]:
        model, method, optimizer = runs[label]

        inputs = pixels.contiguous() if label == "erm contiguous" else pixels

        def step():
            with autocast:
                return method.step(model, inputs, labels, optimizer)
        return timed(step)

    model = copy.deepcopy(base).train()
    mixed = create_method("fgsm-at", p=0.3)
    runs["fgsm-at p=0.3"] = (model, mixed, torch.optim.AdamW(model.parameters(), lr=1e-4))
    per_round = {label: 1 for label in runs}
    per_round["fgsm-at p=0.3"] = -(-args.mixed_steps // args.repeats)

    times: dict[str, list[float]] = {label: [] for label in runs}  # the figure: CPU time on CPU, wall on GPU
    walls: dict[str, list[float]] = {label: [] for label in runs}
    adversarial = 0
    for label in runs:
        one_step(label)  # warm-up
    for _ in range(args.repeats):
        for label in runs:
            for _ in range(per_round[label]):
                wall, cpu, logs = one_step(label)
                times[label].append(cpu if device.type == "cpu" else wall)
                walls[label].append(wall)
                if label == "fgsm-at p=0.3":
                    adversarial += int(logs["adversarial_fraction"])
    best = {label: min(values) for label, values in times.items()}
    mean = {label: sum(values) / len(values) for label, values in times.items()}
    best_wall = {label: min(values) for label, values in walls.items()}

    # Where dual-attacker's time goes (best of `repeats` each, on its own model and U-Net).
    from trainer.attacks.white_box import pgd

    model, dual, optimizer = runs["dual-attacker"]

    def best_of(work) -> float:
        return min(timed(work)[1 if device.type == "cpu" else 0] for _ in range(args.repeats))

    erm_step = create_method("erm")
    tripled = torch.cat([pixels] * 3), torch.cat([labels] * 3)
    parts = {
        f"PGD, {dual.pgd_steps} steps": best_of(lambda: pgd(model, pixels, labels, dual.pgd_eps, dual.pgd_steps,
                                                               generator=dual.generator)),
        "attacker update (U-Net + detector fwd/bwd)": best_of(lambda: dual.attacker_step(model, pixels, labels)),
        "U-Net forward alone (no grad)": best_of(lambda: torch.no_grad()(dual.unet)(pixels)),
        f"detector update on 3 x {args.batch}": best_of(lambda: erm_step.step(model, *tripled, optimizer)),
    }

    print(f"{args.arch} init random, batch {args.batch}, {args.size} px, {device}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads, {platform.machine()}")
    print(f"{args.repeats} rounds after a warm-up, the methods taking turns; fgsm-at p=0.3: "
          f"{len(times['fgsm-at p=0.3'])} steps, {adversarial} of them adversarial")
    kind = "CPU" if device.type == "cpu" else "wall"
    print(f"{kind} seconds per step{' (process time: steadier than wall time on a shared machine)' if kind == 'CPU' else ''}")
    print(f"{'method':<16} {'best s/step':>11} {'x erm':>7} {'mean s/step':>12} {'x erm':>7} {'best wall s':>12}")
    for label in ("erm", "erm contiguous", "gradreg", "fgsm-at p=1", "fgsm-at p=0.3", "fgsm-rs", "pgd-at", "trades", "dual-attacker"):
        note = f"  theory {THEORY[label]:.1f}x" if label in THEORY else ""
        if label == "fgsm-at p=0.3":
            fraction = adversarial / len(times[label])  # the draws' actual share (0.3 in expectation)
            expected = (1 - fraction) * mean["erm"] + fraction * mean["fgsm-at p=1"]
            note = f"  expected from the means: {expected / mean['erm']:.2f}x"
        print(f"{label:<16} {best[label]:>11.3f} {best[label] / best['erm']:>6.2f}x "
              f"{mean[label]:>12.3f} {mean[label] / mean['erm']:>6.2f}x {best_wall[label]:>12.3f}{note}")
    print(f"dual-attacker parts (best of each, {kind} s):")
    for label, seconds in parts.items():
        print(f"  {label:<44} {seconds:>7.3f}  ({seconds / best['erm']:.2f}x an erm step)")

if __name__ == "__main__":
    main()
