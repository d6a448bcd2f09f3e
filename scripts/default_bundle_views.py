"""Views of a `trainer prepare` dataset of FF++ videos and DFDC pairs, made of symbolic links,
for the default bundle's recipe (`make default-bundle`):

    VIEWS/ffpp/{validation,test}/{real,fake}   the FF++ crops (video names are numbers), and
    VIEWS/dfdc/{validation,test}/{real,fake}   the DFDC pairs (pair-* fakes and their reals),
                                               so each source is evaluated with its own counts;
    VIEWS/ffmix/train, /validation             every FF++ training crop plus a seeded draw of
                                               DFDC training pairs (the fine-tuning stage,
                                               weighted towards FF++), validated on FF++.

    python scripts/default_bundle_views.py DATA VIEWS [--pairs 1500]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
from pathlib import Path


def is_ffpp(name: str) -> bool:
    return not name.startswith("pair-") and (name[0].isdigit() or "-" in name)


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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path)
    parser.add_argument("views", type=Path)
    parser.add_argument("--pairs", type=int, default=1500, help="DFDC training pairs in the ffmix view")
    args = parser.parse_args()
    data, views = args.data, args.views
    for split in ("validation", "test"):
        for label in ("real", "fake"):
            for path in sorted((data / split / label).glob("*.png")):
                link(path, views / ("ffpp" if is_ffpp(path.name) else "dfdc") / split / label)
    keep = ffmix_training_crops(data, args.pairs)
    mix = views / "ffmix"
    for label, names in keep.items():
        for name in names:
            link(data / "train" / label / name, mix / "train" / label)
        marks = json.loads((data / "train" / label / "landmarks.json").read_text())
        (mix / "train" / label / "landmarks.json").write_text(json.dumps({n: marks[n] for n in names if n in marks}))
        for path in sorted((views / "ffpp" / "validation" / label).iterdir()):
            link(path, mix / "validation" / label)
    shutil.copy(data / "prepare.json", mix / "prepare.json")  # export reads the crops' margin from it
    print(f"views in {views}: ffmix train {len(keep['real'])} real / {len(keep['fake'])} fake crops")


if __name__ == "__main__":
    main()
