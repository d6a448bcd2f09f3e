"""Pack the default bundle's fine-tuning data small enough to travel to a lent GPU machine.

What travels there is the working tree plus what a call carries, 64 MiB in all. The tracked tree alone is
over that (the shipped bundle's four graphs and the stage-1 checkpoint, 80 MB), so `scripts/gpu_travel.sh hold`
keeps those back for the call; the rest is about 4 MB. The crops go as JPEG (4:2:0, quality 80 by default:
the 224-px ffmix view's crops take 36 MiB, under the issue's 40) rather than PNG:

    PACK/train/{real,fake}       the ffmix view's training crops (every FF++ training crop and
                                 `--pairs` seeded DFDC training pairs, as
                                 scripts/default_bundle_views.py draws them, by its function), with landmarks.json
    PACK/validation/{real,fake}  every third FF++ validation crop (for the run's own per-epoch AUC
                                 only; the candidates are ranked afterwards on this machine, on
                                 every validation crop, as PNG)
    PACK/prepare.json            the dataset's record (export reads the crops' margin from it)
    PACK/init.pt                 the stage-1 checkpoint's weights, float16 except batch-norm
                                 statistics (half the size; `trainer fit --init` takes it)

Research-licensed crops: PACK lives under build/ (git-ignored) and is never committed.

    python scripts/gpu_pack.py build/d224/data checkpoints/dfdc-stage1-lite0-224-e5.pt build/gpu/pack
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import torch
from PIL import Image

# Siblings in scripts/ (on sys.path when a script runs): one selection and one float16 rule.
from default_bundle_views import ffmix_training_crops, is_ffpp
from gpu_checkpoints import half_precision


def write_jpegs(source: Path, names: list[str], target: Path, quality: int) -> int:
    target.mkdir(parents=True, exist_ok=True)
    marks_file = source / "landmarks.json"
    marks = json.loads(marks_file.read_text()) if marks_file.exists() else {}
    renamed = {}
    size = 0
    for name in names:
        jpeg = target / (Path(name).stem + ".jpg")
        with Image.open(source / name) as image:
            image.convert("RGB").save(jpeg, "JPEG", quality=quality, subsampling=2)
        size += jpeg.stat().st_size
        if name in marks:
            renamed[jpeg.name] = marks[name]
    (target / "landmarks.json").write_text(json.dumps(renamed))
    return size


def half_weights(checkpoint: Path, target: Path) -> None:
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    torch.save({"model": half_precision(state.get("model", state))}, target)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("data", type=Path, help="the `trainer prepare` dataset (build/d224/data)")
    parser.add_argument("init", type=Path, help="the stage-1 checkpoint (checkpoints/dfdc-stage1-lite0-224-e5.pt)")
    parser.add_argument("pack", type=Path)
    parser.add_argument("--pairs", type=int, default=1500, help="DFDC training pairs (the ffmix view's 1,500)")
    parser.add_argument("--quality", type=int, default=80,
                        help="JPEG quality (80: the 224-px ffmix view's crops in 36 MiB)")
    args = parser.parse_args()
    if args.pack.exists():
        shutil.rmtree(args.pack)
    total = 0
    for label, names in ffmix_training_crops(args.data, args.pairs).items():
        total += write_jpegs(args.data / "train" / label, names, args.pack / "train" / label, args.quality)
        print(f"train {label}: {len(names)} crops")
    for label in ("real", "fake"):
        names = sorted(p.name for p in (args.data / "validation" / label).glob("*.png") if is_ffpp(p.name))[::3]
        total += write_jpegs(args.data / "validation" / label, names, args.pack / "validation" / label, args.quality)
        print(f"validation {label}: {len(names)} FF++ crops")
    print(f"crops: {total / 2**20:.1f} MiB (JPEG quality {args.quality})")
    shutil.copy(args.data / "prepare.json", args.pack / "prepare.json")
    half_weights(args.init, args.pack / "init.pt")
    total += (args.pack / "init.pt").stat().st_size + (args.pack / "prepare.json").stat().st_size
    print(f"{args.pack}: {total / 2**20:.1f} MiB")


if __name__ == "__main__":
    main()
