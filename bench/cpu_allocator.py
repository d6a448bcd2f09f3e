"""CPU training steps with glibc's default malloc against `retain_freed_memory()` (trainer/cpu_memory.py,
which `trainer fit` calls on the CPU), from one run:

    .venv/bin/python bench/cpu_allocator.py [--arch efficientnet_lite0] [--size 224] [--batch 32]
                                            [--steps 4] [--rounds 2] [--threads N]

Each setting runs in its own process (malloc's settings are process-wide): a model from
`--init random`, AdamW, the same random batch; three warm-up steps, then `--steps` timed steps. The
two take turns for `--rounds` rounds so background load hits them alike. Printed per step: user
and kernel CPU seconds (getrusage, all threads), page faults, wall seconds; then the ratios.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = """
import json, resource, sys, time, torch
from trainer.cpu_memory import retain_freed_memory
from trainer.models import create_model
settings = json.loads(sys.argv[1])
if settings["threads"]:
    torch.set_num_threads(settings["threads"])
retained = retain_freed_memory() if settings["retain"] else False
torch.manual_seed(0)
model = create_model(settings["arch"], init="random").train()
optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
pixels = torch.rand(settings["batch"], 3, settings["size"], settings["size"])
labels = torch.arange(settings["batch"]) % 2
def step():
    optimizer.zero_grad()
    torch.nn.functional.cross_entropy(model(pixels), labels).backward()
    optimizer.step()
for _ in range(3):  # warm-up: the heap grows to the step's working set once
    step()
start, wall = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
for _ in range(settings["steps"]):
    step()
end, n = resource.getrusage(resource.RUSAGE_SELF), settings["steps"]
print(json.dumps({"retained": retained, "user": (end.ru_utime - start.ru_utime) / n,
                  "kernel": (end.ru_stime - start.ru_stime) / n, "faults": (end.ru_minflt - start.ru_minflt) / n,
                  "wall": (time.perf_counter() - wall) / n, "peak_mib": end.ru_maxrss / 1024}))
"""


def run(settings: dict) -> dict:
    result = subprocess.run([sys.executable, "-c", CHILD, json.dumps(settings)], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="efficientnet_lite0")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's choice)")
    args = parser.parse_args()
    base = {"arch": args.arch, "size": args.size, "batch": args.batch, "steps": args.steps, "threads": args.threads}
    results: dict[str, list[dict]] = {"glibc default": [], "retain_freed_memory": []}
    for _ in range(args.rounds):
        for label, retain in (("glibc default", False), ("retain_freed_memory", True)):
            results[label].append(run({**base, "retain": retain}))
    print(f"{args.arch}, {args.size} px, batch {args.batch}, AdamW, {args.steps} steps x {args.rounds} rounds "
          f"(best round shown), threads {args.threads or 'default'}")
    best = {label: min(runs, key=lambda r: r["user"] + r["kernel"]) for label, runs in results.items()}
    for label, r in best.items():
        print(f"{label:>20}: user {r['user']:.2f} s + kernel {r['kernel']:.2f} s CPU per step, "
              f"{r['faults']:,.0f} page faults, wall {r['wall']:.2f} s, peak RSS {r['peak_mib']:,.0f} MiB"
              + ("" if label == "glibc default" or r["retained"] else " (NOT applied on this platform)"))
    old, new = best["glibc default"], best["retain_freed_memory"]
    print(f"CPU per step x{(old['user'] + old['kernel']) / (new['user'] + new['kernel']):.2f} less, "
          f"wall x{old['wall'] / new['wall']:.2f} faster")


if __name__ == "__main__":
    main()
