"""Mirror averaging (horizontal-flip test-time augmentation) measured out of sample: a run's or a
bundle's P(fake) for every crop of a split as given and mirrored left-right, scored by `trainer
eval` (the mirror is one more condition beside the clean crops, applied to the crops as the model
sees them), then the two averaged:

    OUT/scores.csv            crop, video, label, clean, mirror   (with trainer eval's report beside it)
    OUT/mirror-averaged.csv   crop, video, label, clean = (clean + mirror) / 2

so that `compare_scores.py OUT/mirror-averaged.csv --vs OUT/scores.csv` pairs the averaged scores
with the plain ones, e.g. over a candidate's five folds:

    python scripts/mirror_scores.py --run build/d224-gr05/cv/fold-0 --data build/d224-gr05/folds/fold-0 \\
        --split validation --out build/mirror/fold-0          (and folds 1-4)
    python scripts/compare_scores.py build/mirror/fold-{0,1,2,3,4}/mirror-averaged.csv \\
        --vs build/mirror/fold-{0,1,2,3,4}/scores.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

from forensic.errors import ForensicError
from trainer.data.corruptions import Corruption
from trainer.data.datasets import DatasetError
from trainer.evaluation.errors import EvaluationError
from trainer.evaluation.evaluate import EvalSettings, evaluate_bundle, evaluate_run
from trainer.evaluation.report import SCORES_FILE, read_scores
from trainer.export.errors import ExportError

MIRROR = Corruption("mirror", lambda images, seed: np.ascontiguousarray(images[:, :, ::-1]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    subject = parser.add_mutually_exclusive_group(required=True)
    subject.add_argument("--run", type=Path, help="a `trainer fit` run folder")
    subject.add_argument("--bundle", type=Path, help="an exported bundle, scored as forensic scan scores crops")
    parser.add_argument("--checkpoint", default="last", help="the run's checkpoint (default last, as the folds are scored)")
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--limit", type=int, default=None, help="a seeded class-stratified subset of N crops")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    settings = EvalSettings(split=args.split, limit=args.limit, attacks=(), black_box=None, learned_attacks=False,
                            corruptions=(MIRROR,), heatmaps_per_cell=0, device=args.device)
    try:
        if args.run:
            evaluate_run(args.run, args.data, args.out, settings, checkpoint=args.checkpoint)
        else:
            evaluate_bundle(args.bundle, args.data, args.out, settings)
    except (EvaluationError, DatasetError, ExportError, ForensicError, OSError, ValueError) as exc:  # one line each, as trainer eval
        sys.exit(f"mirror_scores.py: {exc}")
    scores = args.out / SCORES_FILE
    given, mirrored = read_scores(scores, "clean"), read_scores(scores, MIRROR.name)
    with open(args.out / "mirror-averaged.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["crop", "video", "label", "clean"])
        for (crop, video, label, clean), (_, _, _, mirror) in zip(given, mirrored):
            writer.writerow([crop, video, label, (clean + mirror) / 2])
    print(f"{len(given)} crops: {scores} (clean, mirror), {args.out / 'mirror-averaged.csv'}")


if __name__ == "__main__":
    main()
