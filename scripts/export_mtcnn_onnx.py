"""Export MTCNN's three networks (facenet-pytorch's P-Net, R-Net and O-Net with its shipped
weights) to the ONNX files forensic/weights/ holds, which forensic.mtcnn runs in ONNX Runtime so
that a scan never imports PyTorch. Run once, when the weights or the exporter change:

    .venv/bin/pip install -c constraints.txt -e '.[mtcnn-export]'   # facenet-pytorch (also in .[test])
    .venv/bin/python scripts/export_mtcnn_onnx.py [--out forensic/weights] [--opset 17]

P-Net takes any batch, height and width; R-Net (24 x 24) and O-Net (48 x 48) any batch. Each
file is checked against the PyTorch network it came from on random inputs (largest difference
printed) before it is written. OUT/mtcnn.json records the versions, opset, source weights'
and files' SHA-256; OUT/LICENSE.facenet-pytorch the weights' licence (MIT).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import io
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch

try:
    from facenet_pytorch.models.mtcnn import ONet, PNet, RNet
except ModuleNotFoundError as missing:  # an optional dependency: a scan runs the exported files
    if (missing.name or "").split(".")[0] != "facenet_pytorch":
        raise
    raise SystemExit("error: facenet-pytorch is not installed; exporting MTCNN needs the mtcnn-export extra: "
                     ".venv/bin/pip install -c constraints.txt -e '.[mtcnn-export]'") from None

ROOT = Path(__file__).resolve().parent.parent
NETWORKS = {
    # name: (module, example input, dynamic axes of the input, output names)
    "pnet": (PNet, (2, 3, 37, 53), {0: "batch", 2: "height", 3: "width"}, ["regression", "probability"]),
    "rnet": (RNet, (5, 3, 24, 24), {0: "batch"}, ["regression", "probability"]),
    "onet": (ONet, (5, 3, 48, 48), {0: "batch"}, ["regression", "landmarks", "probability"]),
}
CHECK_SHAPES = {"pnet": [(1, 3, 12, 12), (3, 3, 97, 64), (1, 3, 720, 405)],
                "rnet": [(1, 3, 24, 24), (700, 3, 24, 24)], "onet": [(1, 3, 48, 48), (130, 3, 48, 48)]}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def export(name: str, opset: int) -> tuple[bytes, float]:
    module, example, axes, outputs = NETWORKS[name]
    net = module(pretrained=True).eval()
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(net, torch.zeros(example), buffer, input_names=["pixels"], output_names=outputs,
                          dynamic_axes={"pixels": axes, **{o: {0: "batch"} for o in outputs}},
                          opset_version=opset, dynamo=False)
    model = buffer.getvalue()
    onnx.checker.check_model(onnx.load_from_string(model))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in CHECK_SHAPES[name]:
        pixels = torch.rand(shape, generator=generator) * 2 - 1
        with torch.no_grad():
            expected = [t.numpy() for t in net(pixels)]
        got = session.run(None, {"pixels": pixels.numpy()})
        for e, g in zip(expected, got):
            assert e.shape == g.shape, (name, shape, e.shape, g.shape)
            worst = max(worst, float(np.abs(e - g).max()))
    if worst > 1e-4:
        raise SystemExit(f"{name}: ONNX Runtime differs from PyTorch by {worst}")
    return model, worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "forensic" / "weights")
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args()
    torch.set_num_threads(1)
    args.out.mkdir(parents=True, exist_ok=True)
    package = Path(importlib.metadata.distribution("facenet-pytorch").locate_file("facenet_pytorch"))
    record = {
        "source": "facenet-pytorch's MTCNN (facenet_pytorch/data/{pnet,rnet,onet}.pt), "
                  "https://github.com/timesler/facenet-pytorch, MIT License (LICENSE.facenet-pytorch)",
        "exported_by": "scripts/export_mtcnn_onnx.py (torch.onnx.export, TorchScript exporter)",
        "versions": {p: importlib.metadata.version(p) for p in ("facenet-pytorch", "torch", "onnx", "onnxruntime-gpu")},
        "python": sys.version.split()[0],
        "opset": args.opset,
        "networks": {},
    }
    for name in NETWORKS:
        model, worst = export(name, args.opset)
        (args.out / f"{name}.onnx").write_bytes(model)
        record["networks"][name] = {
            "file": f"{name}.onnx", "sha256": sha256(model),
            "weights_sha256": sha256((package / "data" / f"{name}.pt").read_bytes()),
            "max_abs_difference_from_pytorch": worst,
        }
        print(f"{name}.onnx: {len(model):,} bytes, largest difference from PyTorch {worst:.2e}")
    licence = next(f for f in importlib.metadata.distribution("facenet-pytorch").files if f.name.startswith("LICENSE"))
    shutil.copyfile(licence.locate(), args.out / "LICENSE.facenet-pytorch")
    (args.out / "mtcnn.json").write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
