"""Views of a `trainer prepare` dataset of FF++ videos and DFDC pairs, made of symbolic links,
for the default bundle's recipe (`make default-bundle`):

    python scripts/default_bundle_views.py views DATA VIEWS [--pairs 1500]

    VIEWS/ffpp/{validation,test}/{real,fake}   the FF++ crops (video names are numbers), and
    VIEWS/dfdc/{validation,test}/{real,fake}   the DFDC pairs (pair-* fakes and their reals),
                                               so each source is evaluated with its own counts;
    VIEWS/ffpp-prepared                        a `trainer prepare` folder of the FF++ videos only
                                               (every split), for `trainer folds`;
    VIEWS/dfdc-train/{train,validation}        the DFDC training pairs, validated (and a bundle
                                               calibrated) on VIEWS/dfdc/validation;
    VIEWS/ffmix/train, /validation             every FF++ training crop plus a seeded draw of
                                               DFDC training pairs, validated on FF++.

    python scripts/default_bundle_views.py add-pairs FOLDS DATA [--pairs 1500]

adds the ffmix view's DFDC training pairs to the training side of every fold of a `trainer folds`
folder, so each fold's model keeps seeing DFDC while it learns FF++ (no fold validates on them).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path

from trainer.data.pairing import PAIR_PREFIX
from trainer.data.prepared_folder import DONE_FILE, PREPARE_FILE, append_done, read_records
from trainer.data.sbi import LANDMARKS_FILE


def is_ffpp(name: str) -> bool:
    """Whether a prepared crop comes from an FF++ video (`000_003`-style names) rather than a DFDC pair."""
    return not name.startswith(PAIR_PREFIX) and (name[0].isdigit() or "-" in name.split("_")[0])


def link(source: Path, folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / source.name
    if not target.is_symlink():
        os.symlink(source.resolve(), target)


def ffmix_training_crops(data: Path, pairs: int) -> dict[str, list[str]]:
    """The ffmix view's training crop names per class: every FF++ crop and `pairs` seeded DFDC pairs."""
    reals = sorted(p.name for p in (data / "train" / "real").glob("*.png"))
    dfdc = [name for name in reals if not is_ffpp(name)]
    random.Random(0).shuffle(dfdc)
    chosen = set(dfdc[:pairs])
    return {"real": [n for n in reals if is_ffpp(n) or n in chosen],
            "fake": [p.name for p in sorted((data / "train" / "fake").glob("*.png"))
                     if is_ffpp(p.name) or p.name[len("pair-"):] in chosen]}


def link_crops(data: Path, split: str, label: str, names: list[str], folder: Path) -> None:
    """Link DATA/split/label/NAME for each name into FOLDER and add their landmarks to its landmarks.json."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        link(data / split / label / name, folder)
    known = json.loads((data / split / label / LANDMARKS_FILE).read_text())
    marks_path = folder / LANDMARKS_FILE
    marks = json.loads(marks_path.read_text()) if marks_path.is_file() else {}
    marks.update({name: known.get(name) for name in names})
    marks_path.write_text(json.dumps(marks))


def ffpp_prepared(data: Path, out: Path) -> int:
    """OUT: DATA's record (.done) of its FF++ videos only, beside links to DATA's split folders,
    which `trainer folds` reads as a prepared folder of FF++ alone; returns the videos kept."""
    out.mkdir(parents=True, exist_ok=True)
    kept = [record for record in read_records(data).values() if is_ffpp(record["video"])]
    (out / DONE_FILE).unlink(missing_ok=True)
    for record in kept:
        append_done(out / DONE_FILE, record)
    shutil.copy(data / PREPARE_FILE, out / PREPARE_FILE)
    for split in ("train", "validation", "test"):
        if not (out / split).is_symlink():
            os.symlink((data / split).resolve(), out / split)
    return len(kept)


def make_views(data: Path, views: Path, pairs: int) -> None:
    for split in ("validation", "test"):
        for label in ("real", "fake"):
            for path in sorted((data / split / label).glob("*.png")):
                link(path, views / ("ffpp" if is_ffpp(path.name) else "dfdc") / split / label)
    keep = ffmix_training_crops(data, pairs)
    mix = views / "ffmix"
    for label, names in keep.items():
        link_crops(data, "train", label, names, mix / "train" / label)
        for path in sorted((views / "ffpp" / "validation" / label).iterdir()):
            link(path, mix / "validation" / label)
    shutil.copy(data / PREPARE_FILE, mix / PREPARE_FILE)  # export reads the crops' margin from it
    print(f"{views}/ffmix: train {len(keep['real'])} real / {len(keep['fake'])} fake crops")

    dfdc = views / "dfdc-train"
    for label in ("real", "fake"):
        names = [p.name for p in sorted((data / "train" / label).glob("*.png")) if not is_ffpp(p.name)]
        link_crops(data, "train", label, names, dfdc / "train" / label)
        print(f"{dfdc}: train {len(names)} {label} crops")
    if not (dfdc / "validation").is_symlink():
        os.symlink((views / "dfdc" / "validation").resolve(), dfdc / "validation")
    shutil.copy(data / PREPARE_FILE, dfdc / PREPARE_FILE)
    print(f"{views}/ffpp-prepared: {ffpp_prepared(data, views / 'ffpp-prepared')} FF++ videos")


def add_pairs(folds: Path, data: Path, pairs: int) -> None:
    dfdc = {label: [n for n in names if not is_ffpp(n)] for label, names in ffmix_training_crops(data, pairs).items()}
    for fold in sorted(folds.glob("fold-*")):
        for label, names in dfdc.items():
            link_crops(data, "train", label, names, fold / "train" / label)
        print(f"{fold.name}: {len(dfdc['real'])} DFDC training pairs added to train")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    steps = parser.add_subparsers(dest="step", required=True)
    views = steps.add_parser("views", help="DATA VIEWS: every view above")
    views.add_argument("data", type=Path)
    views.add_argument("views", type=Path)
    folds = steps.add_parser("add-pairs", help="FOLDS DATA: the ffmix DFDC pairs on every fold's training side")
    folds.add_argument("folds", type=Path)
    folds.add_argument("data", type=Path)
    for step in (views, folds):
        step.add_argument("--pairs", type=int, default=1500, help="DFDC training pairs drawn (seeded)")
    args = parser.parse_args()
    if args.step == "views":
        make_views(args.data, args.views, args.pairs)
    else:
        add_pairs(args.folds, args.data, args.pairs)


if __name__ == "__main__":
    main()
