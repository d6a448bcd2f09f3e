"""Folder scanning: files/s against `forensic scan --workers N`, from one run.

Makes a folder of face photos (scikit-image's astronaut, each shifted and recoloured a little
so no two files are alike), then times the whole `forensic scan FOLDER --workers N --quiet`
command (start-up included, as a pipeline pays it) for each N.

    .venv/bin/python bench/scan_workers.py [--files 96] [--workers 1,2]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from trainer.data.synthetic import astronaut


def make_folder(folder: Path, count: int) -> None:
    image, _ = astronaut()
    rng = np.random.default_rng(0)
    for i in range(count):
        shifted = np.roll(image, (int(rng.integers(-20, 20)), int(rng.integers(-20, 20))), axis=(0, 1))
        tinted = np.clip(shifted.astype(np.int16) + rng.integers(-12, 12, size=3), 0, 255).astype(np.uint8)
        Image.fromarray(tinted).save(folder / f"face_{i:04d}.jpg", quality=90)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=96)
    parser.add_argument("--workers", default="1,2")
    args = parser.parse_args()
    forensic = Path(sys.executable).with_name("forensic")
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "faces"
        folder.mkdir()
        make_folder(folder, args.files)
        base = None
        print(f"{args.files} face photos (512x512 JPEG), {os.cpu_count()} cores")
        for workers in (int(w) for w in args.workers.split(",")):
            start = time.perf_counter()
            subprocess.run([str(forensic), "scan", str(folder), "--workers", str(workers), "--quiet",
                            "--json", str(Path(tmp) / f"report{workers}.json")], check=True)
            seconds = time.perf_counter() - start
            rate = args.files / seconds
            base = base or rate
            print(f"--workers {workers}: {seconds:6.1f} s, {rate:5.1f} files/s (x{rate / base:.2f})")


if __name__ == "__main__":
    main()
