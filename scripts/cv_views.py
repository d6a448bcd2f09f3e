"""Fold views for scripts/cv_lite0_160.sh (a default-bundle candidate), from `trainer folds` output:
each fold's training side keeps every FaceForensics++ crop and a seeded draw of DFDC pairs, so
FF++ videos are not drowned by thousands of DFDC pairs (about a quarter of the fakes drawn are
FF++'s instead of a tenth); validation sides are left whole. Also the two other steps of the
recipe that are not trainer commands:

    python scripts/cv_views.py subset DFDC_DIR OUT --pairs 8000   # a seeded draw of pairs.csv, copied
    python scripts/cv_views.py prune FOLDS --pairs 1200
    python scripts/cv_views.py val-views FOLDS VIEWS --pairs 300  # VIEWS/valview-{i}/validation:
                                     # every FF++ validation crop and a draw of DFDC pairs, for fit's
                                     # per-epoch --val-data (the fold's whole validation is scored after)
    python scripts/cv_views.py split-scores EVAL_DIR...   # EVAL_DIR/{ffpp,dfdc}/scores.csv
    python scripts/cv_views.py common FFPP_DIR DFDC_DIR DATA OUT [--splits train]   # DFDC_DIR: all
        # 12,000 pairs. OUT/{ffpp,dfdc}: copies of the FF++ videos and DFDC pairs in DATA's --splits
        # (comma-separated; `none`: not in DATA at all) that the previous default bundle did not
        # train on (its `prepare --split 0.6,0.25,0.15 --seed 0` of all FF++ videos and all 12,000
        # pairs, recomputed), for `trainer prepare` at each detector's own crop geometry. `train`
        # (default): the CV's out-of-fold faces; `validation,none`: faces neither a model trained
        # on DATA's whole training split nor that bundle saw, outside DATA's test split

DFDC crops are the `pair-<stem>` fakes and the reals they name; FF++ crops start with a video
number (`044_...`) or a method (`Deepfakes-044_945_...`).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import shutil
from pathlib import Path

from trainer.data.pairing import PAIR_PREFIX
from trainer.data.prepared_folder import SBI_PREFIX
from trainer.data.sbi import LANDMARKS_FILE
from trainer.data.sources import assign_splits, find_videos, group_videos


def is_ffpp(name: str) -> bool:
    return not name.startswith(PAIR_PREFIX) and (name[0].isdigit() or "-" in name.split("_")[0])


def prune_fold(train: Path, pairs: int, seed: int) -> tuple[int, int]:
    """Remove the links of DFDC pairs beyond a seeded draw of `pairs` from FOLD/train; return
    (pairs kept, pairs removed). A kept pair keeps its real, its fake and the real's self-blends."""
    reals = sorted(p.name for p in (train / "real").glob("*.png") if not is_ffpp(p.name))
    random.Random(seed).shuffle(reals)
    keep = set(reals[:pairs])
    dropped = 0
    for label in ("real", "fake"):
        folder = train / label
        marks_path = folder / LANDMARKS_FILE
        marks = json.loads(marks_path.read_text()) if marks_path.is_file() else {}
        for path in sorted(folder.glob("*.png")):
            name = path.name
            if name.startswith(SBI_PREFIX):
                real = name[len(SBI_PREFIX):].rsplit("_", 1)[0] + ".png"
            elif name.startswith(PAIR_PREFIX):
                real = name[len(PAIR_PREFIX):]
            else:
                real = name
            if not is_ffpp(real) and real not in keep:
                path.unlink()
                marks.pop(name, None)
                dropped += label == "real"
        marks_path.write_text(json.dumps(marks))
    return min(pairs, len(reals)), dropped


def split_scores(eval_dir: Path) -> dict[str, int]:
    """EVAL_DIR/scores.csv -> EVAL_DIR/ffpp/scores.csv and EVAL_DIR/dfdc/scores.csv (for `trainer pool`)."""
    with open(eval_dir / "scores.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows, fields = list(reader), reader.fieldnames
    counts = {}
    for source in ("ffpp", "dfdc"):
        chosen = [r for r in rows if is_ffpp(Path(r["crop"]).name) == (source == "ffpp")]
        (eval_dir / source).mkdir(exist_ok=True)
        with open(eval_dir / source / "scores.csv", "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(chosen)
        counts[source] = len(chosen)
    return counts


def subset_pairs(src: Path, out: Path, pairs: int, seed: int) -> int:
    """A seeded draw of `pairs` rows of SRC/pairs.csv, their images copied to OUT (prepare refuses
    links that lead outside the folder it reads)."""
    with open(src / "pairs.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows, fields = list(reader), reader.fieldnames
    random.Random(seed).shuffle(rows)
    rows = sorted(rows[:pairs], key=lambda row: row["real"])
    for row in rows:
        for key in ("real", "fake"):
            target = out / row[key]
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.is_file():
                shutil.copyfile(src / row[key], target)
    with open(out / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return len(rows)


def val_view(validation: Path, view: Path, pairs: int, seed: int) -> tuple[int, int]:
    """VIEW/validation/{real,fake}: links to every FF++ crop of `validation` and a seeded draw of
    its DFDC pairs; returns (reals, fakes)."""
    reals = sorted(p.name for p in (validation / "real").glob("*.png") if not is_ffpp(p.name))
    random.Random(seed).shuffle(reals)
    keep = set(reals[:pairs])
    counts = []
    for label in ("real", "fake"):
        folder = view / "validation" / label
        folder.mkdir(parents=True, exist_ok=True)
        for path in sorted((validation / label).glob("*.png")):
            real = path.name[len(PAIR_PREFIX):] if path.name.startswith(PAIR_PREFIX) else path.name
            target = folder / path.name
            if (is_ffpp(path.name) or real in keep) and not target.is_symlink():
                os.symlink(os.path.realpath(path), target)
        counts.append(sum(1 for _ in folder.glob("*.png")))
    return counts[0], counts[1]


def common_sources(ffpp: Path, dfdc: Path, data: Path, out: Path, splits: tuple[str, ...] = ("train",)) -> tuple[int, int]:
    """See `common` in the module docstring; returns (FF++ videos, DFDC pairs) copied."""
    previous = {}
    for number, source in enumerate((ffpp, dfdc)):
        groups = group_videos(find_videos(source, number), None)
        previous.update({v.name: split for group, split in zip(groups, assign_splits(groups, (0.6, 0.25, 0.15), 0))
                         for v in group})
    assignment = json.loads((data / "prepare.json").read_text())["assignment"]
    chosen = [name for name, split in previous.items() if split != "train" and assignment.get(name, "none") in splits]
    videos = [name for name in chosen if is_ffpp(name)]
    for name in videos:
        method, _, stem = name.rpartition("-")
        relative = Path("fake", method, f"{stem}.mp4") if method else Path("real", f"{name}.mp4")
        (out / "ffpp" / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ffpp / relative, out / "ffpp" / relative)
    reals = {name for name in chosen if not is_ffpp(name) and not name.startswith(PAIR_PREFIX)}
    with open(dfdc / "pairs.csv", newline="") as handle:
        reader = csv.DictReader(handle)
        rows, fields = [r for r in reader if Path(r["real"]).stem in reals], reader.fieldnames
    for row in rows:
        for key in ("real", "fake"):
            (out / "dfdc" / row[key]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(dfdc / row[key], out / "dfdc" / row[key])
    with open(out / "dfdc" / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    return len(videos), len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["subset", "prune", "val-views", "split-scores", "common"])
    parser.add_argument("folders", type=Path, nargs="+")
    parser.add_argument("--pairs", type=int, default=None, help="DFDC pairs (subset 8000, prune 1200, val-views 300)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--splits", default="train", help="common: DATA's splits to draw from (`none`: not in DATA)")
    args = parser.parse_args()
    if args.step == "split-scores":
        for folder in args.folders:
            print(folder, split_scores(folder))
    elif args.step == "common":
        videos, pairs = common_sources(*args.folders, tuple(args.splits.split(",")))
        print(f"{videos} FF++ videos and {pairs} DFDC pairs copied to {args.folders[3]}")
    elif args.step == "subset":
        src, out = args.folders
        print(f"{subset_pairs(src, out, args.pairs or 8000, args.seed)} pairs copied to {out}")
    elif args.step == "prune":
        for fold in sorted(args.folders[0].glob("fold-*")):
            kept, dropped = prune_fold(fold / "train", args.pairs or 1200, args.seed)
            print(f"{fold.name}: {kept} DFDC pairs kept, {dropped} dropped from train")
    else:
        folds, views = args.folders
        for i, fold in enumerate(sorted(folds.glob("fold-*"))):
            # seeded by the fold number, as the views of the measured runs were made
            reals, fakes = val_view(fold / "validation", views / f"valview-{i}", args.pairs or 300, i)
            print(f"valview-{i}: {reals} real, {fakes} fake crops")


if __name__ == "__main__":
    main()
