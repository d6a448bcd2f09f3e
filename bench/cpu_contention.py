"""Two PyTorch training jobs on one CPU machine: how much each slows the other under libgomp's default
spin-waiting (a waiting thread spins for a while before it sleeps) and under settings that spin less.

    .venv/bin/python bench/cpu_contention.py [--steps 8] [--batch 16] [--size 224]
                                             [--setting default OMP_WAIT_POLICY=PASSIVE default+OMP_WAIT_POLICY=PASSIVE ...]

Each job is its own process (as two `trainer fit` runs, or a fit and an eval, are) training
EfficientNet-Lite0 from random weights with AdamW on random pixels: one warm-up step, then --steps timed
steps. For each setting (an environment variable given to both jobs; `default`: none; `A+B`: A for the
first job, B for the second), prints seconds per step of one job alone (under the first) and of each of
two at once, as ratios to one job alone by default (two jobs one after the other take x2). Prints only;
BENCHMARKS.md keeps the figures with the command.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

THREAD_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")


def job(steps: int, batch: int, size: int) -> None:
    import timm
    import torch

    model = timm.create_model("efficientnet_lite0", num_classes=1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    pixels, labels = torch.rand(batch, 3, size, size), torch.rand(batch, 1).round()
    seconds = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(pixels), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seconds.append(time.perf_counter() - start)
    print(f"{sum(seconds[1:]) / steps:.3f}")


def environment(setting: str) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in THREAD_VARIABLES}
    if setting != "default":
        name, value = setting.split("=", 1)
        env[name] = value
    return env


def run(settings: list[str], args: argparse.Namespace) -> list[float]:
    """Seconds per step of one job per setting, all at once."""
    command = [sys.executable, __file__, "--job", "--steps", str(args.steps), "--batch", str(args.batch),
               "--size", str(args.size)]
    jobs = [subprocess.Popen(command, env=environment(setting), stdout=subprocess.PIPE, text=True) for setting in settings]
    return [float(j.communicate()[0]) for j in jobs]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--setting", nargs="+",
                        default=["default", "OMP_WAIT_POLICY=PASSIVE", "default+OMP_WAIT_POLICY=PASSIVE"])
    parser.add_argument("--job", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.job:
        job(args.steps, args.batch, args.size)
        return
    print(f"{os.cpu_count()} cores; Lite0 at {args.size} px, batch {args.batch}, {args.steps} steps a job")
    baseline = None
    for setting in args.setting:
        pair = setting.split("+") if "+" in setting else [setting, setting]
        alone = run(pair[:1], args)[0]
        baseline = baseline or alone
        both = run(pair, args)
        print(f"{setting}: alone {alone:.3f} s a step (x{alone / baseline:.2f}); two at once {both[0]:.3f} and "
              f"{both[1]:.3f} s a step (x{both[0] / baseline:.2f} and x{both[1] / baseline:.2f})")


if __name__ == "__main__":
    main()
