"""A bundle's AUC on a split's crops re-encoded with H.264 in two forms: as the consecutive frames
of clips of --batch crops (sorted by name, so mostly one video's frames in order, as `trainer
eval`'s h264 corruption does) and one crop at a time (an intra frame each, as the `uploads`
training augmentation does). Tells whether a CRF's drop comes from the form of the encoding or
its strength:

    python scripts/h264_forms.py --bundle exports/default --data build/d224/views/ffpp --split test [--crf 23 35]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import roc_auc_score

from forensic.bundle import load_bundle
from forensic.inference import EnsembleRunner
from trainer.data.corruptions import h264


def read_crop(path: Path, size: int) -> np.ndarray:
    """A crop at the bundle's input size (the re-encoding is of what the model sees)."""
    image = Image.open(path).convert("RGB")
    return np.asarray(image if image.size == (size, size) else image.resize((size, size), Image.BICUBIC))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=Path("exports/default"))
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", default="test")
    parser.add_argument("--crf", type=int, nargs="+", default=[23, 35])
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    files = [path for label in ("real", "fake") for path in sorted((args.data / args.split / label).glob("*.png"))]
    labels = np.array([0 if path.parent.name == "real" else 1 for path in files])
    bundle = load_bundle(args.bundle)
    crops = np.stack([read_crop(path, bundle.input_size) for path in files])
    runner = EnsembleRunner(bundle, device="cpu")

    def auc(images: np.ndarray) -> float:
        scores = runner.predict_pixels(images.astype(np.float32).transpose(0, 3, 1, 2) / 255).ensemble
        return float(roc_auc_score(labels, scores))

    clean = auc(crops)
    print(f"{len(files)} crops ({int((labels == 0).sum())} real), clean AUC {clean:.3f}")
    for crf in args.crf:
        clips = np.concatenate([h264(crops[i:i + args.batch], crf=crf) for i in range(0, len(crops), args.batch)])
        alone = np.concatenate([h264(crops[i:i + 1], crf=crf) for i in range(len(crops))])
        as_clip, one_by_one = auc(clips), auc(alone)
        print(f"H.264 CRF {crf}: clips of {args.batch} {as_clip:.3f} (drop {clean - as_clip:.3f}), "
              f"one crop at a time {one_by_one:.3f} (drop {clean - one_by_one:.3f})")


if __name__ == "__main__":
    main()
