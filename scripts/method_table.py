"""The table of `scripts/method_comparison.sh OUT`: per training method, the CPU seconds it
trained, its clean accuracy and PGD-10 accuracy at each ε on the same crops, and the PGD-10
accuracy it gained over the starting model per hour of training (at 0.25/255 and 1/255):

    python scripts/method_table.py OUT_DIR METHOD...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

def scores(eval_dir: Path) -> dict[str, float]:
    metrics = json.loads((eval_dir / "metrics.json").read_text())
    row = {"clean": metrics["clean"]["frame"]["accuracy"], "auc": metrics["clean"]["frame"]["auc"]}
    for attack in metrics["attacks"]["results"]:
        row[attack["eps_text"]] = attack["accuracy"]
    return row


def training(run_dir: Path) -> tuple[float, int]:
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    config = json.loads((run_dir / "config.json").read_text())
    return sum(epoch["seconds"] for epoch in epochs), config["fit"]["epoch_size"] * len(epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("methods", nargs="+", help="in the table's order (method_comparison.sh passes its list)")
    args = parser.parse_args()
    out = args.out
    start = scores(out / "start-eval")
    eps_texts = [key for key in start if key not in ("clean", "auc")]
    print("| method | training s (2 cores) | samples | clean acc / AUC | " + " | ".join(f"PGD-10 {e}" for e in eps_texts)
          + " | PGD-10 accuracy gained per CPU-hour, 0.25/255 and 1/255 |")
    print("|---" * (5 + len(eps_texts)) + "|")
    print(f"| start (no training) | 0 | 0 | {start['clean']:.3f} / {start['auc']:.3f} | "
          + " | ".join(f"{start[e]:.3f}" for e in eps_texts) + " | - |")
    for method in args.methods:
        if not (out / f"{method}-eval" / "metrics.json").exists():
            continue
        row = scores(out / f"{method}-eval")
        seconds, samples = training(out / method)
        gains = [(row[e] - start[e]) / (seconds / 3600) for e in ("0.25/255", "1/255")]
        print(f"| {method} | {seconds:.0f} | {samples:,} | {row['clean']:.3f} / {row['auc']:.3f} | "
              + " | ".join(f"{row[e]:.3f}" for e in eps_texts) + f" | {gains[0]:+.3f}, {gains[1]:+.3f} |")


if __name__ == "__main__":
    main()
