"""Shared fixtures: data the tests make themselves (never ../shared)."""

from __future__ import annotations

import hashlib
import json
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from trainer.data.synthetic import make_face_dataset, make_sample_media


@pytest.fixture(scope="session")
def face_dataset(tmp_path_factory) -> Path:
    """A tiny DIR/{train,validation,test}/{real,fake}/ dataset of 64 px astronaut crops."""
    root = tmp_path_factory.mktemp("dataset")
    make_face_dataset(root, {"train": 12, "validation": 4, "test": 4}, size=64)
    return root


@pytest.fixture(scope="session")
def sample_media(tmp_path_factory) -> dict[str, Path]:
    """Real and blended photos and clips, a photo without a face and a corrupt file."""
    folder = tmp_path_factory.mktemp("media")
    return {path.name: path for path in make_sample_media(folder)}


@contextmanager
def _torch_threads(count: int):
    """PyTorch's intra-op thread count set to `count`, restored after."""
    threads = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_lite0_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 2-epoch EfficientNet-Lite0 `trainer fit` run at 64 px and its dataset (4 train, 6 validation
    crops a class): a real run to export, calibrate and combine in seconds."""
    from trainer.config import FitConfig
    from trainer.fit import fit

    root = tmp_path_factory.mktemp("tiny-run")
    data = root / "data"
    make_face_dataset(data, {"train": 4, "validation": 6}, size=64)
    run = root / "run"
    # Lite0 at a high rate: a 1-epoch B0 scores every crop alike, so it could not tell two views apart.
    with _torch_threads(1):  # one_torch_thread's reason; a session fixture cannot use a module one
        fit(FitConfig(data=str(data), out=str(run), arch="efficientnet_lite0", init="random", epochs=2, size=64,
                      batch_size=8, workers=0, device="cpu", lr=3e-3))
    return run, data


@pytest.fixture(scope="module")
def one_torch_thread():
    """One PyTorch intra-op thread for a module (opt in with
    `pytestmark = pytest.mark.usefixtures("one_torch_thread")`): on a shared 2-core machine,
    OpenMP threads spinning against other processes made small-batch work 5-8x slower (223 s
    vs 28 s for test_architectures.py under a load of 5), and MTCNN on small files is quicker
    single-threaded beside ONNX Runtime's threads. Module-wide, so module-scoped fixtures run
    with it too. Restored after the module."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="session")
def reexported_mtcnn_weights(tmp_path_factory) -> Path:
    """A copy of forensic/weights/ whose pnet.onnx is the same network in other bytes (a doc
    string added, as another exporter would differ) and whose mtcnn.json records that file's
    SHA-256: face-detector weights that load, but are not the shipped files."""
    import onnx

    from forensic.mtcnn import RECORD, WEIGHTS

    folder = tmp_path_factory.mktemp("weights") / "weights"
    shutil.copytree(WEIGHTS, folder)
    model = onnx.load(str(folder / "pnet.onnx"))
    model.doc_string = "re-exported for a test"
    onnx.save(model, str(folder / "pnet.onnx"))
    record = json.loads((folder / RECORD).read_text())
    record["networks"]["pnet"]["sha256"] = hashlib.sha256((folder / "pnet.onnx").read_bytes()).hexdigest()
    (folder / RECORD).write_text(json.dumps(record, indent=2))
    return folder
