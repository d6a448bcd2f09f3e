"""Versions of the libraries a result depends on, recorded in runs and manifests."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

# No facenet-pytorch: nothing runs it (its MTCNN weights run as ONNX files, which reports
# identify by their SHA-256 in `face_detector`); it is needed only to re-export them.
PACKAGES = ("deepfake-forensics", "torch", "torchvision", "timm", "onnx", "onnxruntime-gpu", "onnxruntime",
            "numpy", "opencv-python-headless", "av", "pillow", "scikit-learn", "scipy", "matplotlib")


def library_versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in PACKAGES:
        try:
            found[package] = version(package)
        except PackageNotFoundError:
            continue
    return found
