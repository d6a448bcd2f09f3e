"""GPU figures on a lent machine, from one run (issue 15, goal 6): what the machine offers forensic
and trainer, the bundle's model stage on each ONNX Runtime provider that runs there, and the
seconds per training step of each method on the GPU (bench/train_step.py's figures).

    python bench/gpu.py [--device cuda] [--bundle exports/default] [--crops 512]

Runs on a CPU-only machine too (then it says what is missing and measures the CPU). Prints only;
BENCHMARKS.md keeps the figures with the command.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def environment() -> None:
    import onnxruntime as ort
    import timm
    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none visible to torch"
    print(f"machine: {os.cpu_count()} CPU cores; GPU: {gpu}")
    print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), timm {timm.__version__}, "
          f"onnxruntime {ort.__version__}: providers {ort.get_available_providers()}")
    for package in ("av", "textual", "facenet_pytorch"):
        print(f"{package}: {'present' if importlib.util.find_spec(package) else 'missing'}")


def model_stage(bundle_dir: Path, crops: int) -> None:
    """Crops per second through the bundle's models (ONNX Runtime), batch 32 and 128, per provider."""
    from forensic.bundle import load_bundle
    from forensic.inference import EnsembleRunner, cuda_usable

    if not any(bundle_dir.glob("*.onnx")):  # scripts/gpu_travel.sh holds the graphs back so that a training call fits what travels
        print(f"model stage: not measured - {bundle_dir} has no graphs here (held back from the call?)")
        return
    bundle = load_bundle(bundle_dir)
    size = bundle.manifest["input"]["size"]
    pixels = np.random.default_rng(0).random((crops, 3, size, size), dtype=np.float32)
    devices = ["cpu"] + (["cuda"] if cuda_usable() else [])
    if "cuda" not in devices:
        print("model stage on the GPU: not measured - ONNX Runtime here has no usable CUDA provider")
    for device in devices:
        for batch in (32, 128):
            runner = EnsembleRunner(bundle, device=device, batch_size=batch)
            runner.predict_pixels(pixels[:batch])  # warm-up (CUDA: kernels chosen, memory taken)
            start = time.perf_counter()
            runner.predict_pixels(pixels)
            seconds = time.perf_counter() - start
            print(f"model stage {device} ({runner.providers[0]}), batch {batch}: {crops / seconds:,.0f} crops/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="where the training steps run (cuda or cpu)")
    parser.add_argument("--bundle", type=Path, default=ROOT / "exports" / "default")
    parser.add_argument("--crops", type=int, default=512)
    args = parser.parse_args()
    environment()
    model_stage(args.bundle, args.crops)
    sys.stdout.flush()
    # Each method's training step, Lite0 at 224 px (scripts/gpu_train.sh's size), the GPU run's batch.
    subprocess.run([sys.executable, str(ROOT / "bench" / "train_step.py"), "--device", args.device,
                    "--batch", "128", "--size", "224", "--repeats", "3"], check=False)


if __name__ == "__main__":
    main()
