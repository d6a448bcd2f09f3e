"""forensic.mtcnn: facenet-pytorch's MTCNN in ONNX Runtime and NumPy gives facenet's results.

Two checks of each image: the NumPy pipeline with facenet's own PyTorch networks must equal
facenet-pytorch's `MTCNN.detect` exactly (so resampling, box arithmetic and NMS are facenet's bit
for bit), and with the shipped ONNX networks (what a scan runs) within float rounding: the same
faces, boxes and landmarks within 0.01 px, probabilities within 1e-5.
"""

from __future__ import annotations

import hashlib
import json
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from skimage import data
from torch.nn.functional import interpolate

from forensic.errors import ForensicError
from forensic.mtcnn import MTCNN, NETWORKS, RECORD, WEIGHTS, _integral, _pyramid_level, _regions, batched_nms, nms

pytestmark = pytest.mark.usefixtures("one_torch_thread")
THRESHOLDS = (0.6, 0.7, 0.7)
BOX_TOLERANCE = 0.01  # pixels, boxes and landmarks: ONNX Runtime against PyTorch
PROBABILITY_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def facenet():
    from facenet_pytorch import MTCNN as FacenetMTCNN

    return FacenetMTCNN(keep_all=True, thresholds=list(THRESHOLDS), device="cpu")


def _torch_network(net, channels_last: bool):
    """A facenet network as forensic.mtcnn calls one. facenet feeds P-Net channels-last tensors
    (its pyramid is resampled from a permuted NHWC batch) and R-/O-Net contiguous ones, and
    PyTorch's convolutions round differently in the two layouts."""
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def run(pixels):
        with torch.inference_mode():
            return [t.numpy() for t in net(torch.from_numpy(pixels).contiguous(memory_format=layout))]

    return run


@pytest.fixture(scope="module")
def ported(facenet):
    """The NumPy pipeline with facenet's own PyTorch networks."""
    networks = (_torch_network(facenet.pnet, True), _torch_network(facenet.rnet, False),
                _torch_network(facenet.onet, False))
    return MTCNN(thresholds=THRESHOLDS, networks=networks)


@pytest.fixture(scope="module")
def ours():
    """What a scan runs: the shipped ONNX networks in ONNX Runtime."""
    return MTCNN(thresholds=THRESHOLDS, threads=1)


def _rotated(image, degrees):
    height, width = image.shape[:2]
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), degrees, 1.0)
    return cv2.warpAffine(image, matrix, (width, height), borderMode=cv2.BORDER_REFLECT)


def _frames(path, count=8):
    capture = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < count:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    return np.stack(frames)


def _assert_same(facenet, ported, ours, batch, min_face_size):
    """facenet's faces in `batch`: `ported` gives them exactly, `ours` within the tolerances."""
    facenet.min_face_size = ported.min_face_size = ours.min_face_size = min_face_size
    with torch.inference_mode():
        boxes, probs, points = facenet.detect(batch, landmarks=True)
    exact, close = ported.detect(batch), ours.detect(batch)
    assert len(exact) == len(close) == len(batch)
    faces = 0
    for b, p, pts, (ex_b, ex_p, ex_pts), (our_b, our_p, our_pts) in zip(boxes, probs, points, exact, close):
        if b is None:
            assert ex_b is None and ex_p is None and ex_pts is None
            assert our_b is None and our_p is None and our_pts is None
            continue
        faces += len(b)
        np.testing.assert_array_equal(ex_b, np.asarray(b, dtype=float))  # exactly, not merely close
        np.testing.assert_array_equal(ex_p, np.asarray(p, dtype=float))
        np.testing.assert_array_equal(ex_pts, np.asarray(pts, dtype=float))
        assert our_b is not None and len(our_b) == len(b)
        np.testing.assert_allclose(our_b, np.asarray(b, dtype=float), rtol=0, atol=BOX_TOLERANCE)
        np.testing.assert_allclose(our_p, np.asarray(p, dtype=float), rtol=0, atol=PROBABILITY_TOLERANCE)
        np.testing.assert_allclose(our_pts, np.asarray(pts, dtype=float), rtol=0, atol=BOX_TOLERANCE)
    return faces


@pytest.mark.parametrize("size, degrees", [(512, 0), (256, 0), (700, 0), (384, 15), (512, -30), (300, 90)])
def test_astronaut_rescaled_and_rotated(facenet, ported, ours, size, degrees):
    image = _rotated(cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA), degrees)
    for min_face_size in (12, 20, 40):
        _assert_same(facenet, ported, ours, image[None], min_face_size)


def test_wide_photo_with_several_faces(facenet, ported, ours):
    face = data.astronaut()
    scene = np.concatenate([face, cv2.flip(face, 1), cv2.resize(face, (512, 256))[:, :512]], axis=0)
    scene = cv2.resize(scene, (480, 720), interpolation=cv2.INTER_AREA)
    assert _assert_same(facenet, ported, ours, scene[None], 12) >= 2


def test_images_without_a_face(facenet, ported, ours):
    for image in (data.coffee(), np.full((240, 320, 3), 128, np.uint8), data.chelsea()):
        _assert_same(facenet, ported, ours, image[None], 20)


def test_a_batch_of_video_frames(facenet, ported, ours, sample_media):
    frames = _frames(sample_media["astronaut_pan.mp4"])
    assert len(frames) >= 4
    assert _assert_same(facenet, ported, ours, frames, 20) >= len(frames)
    assert _assert_same(facenet, ported, ours, frames, 12) >= len(frames)


def test_area_resampling_is_torchs():
    """The pyramid and the crops: torch's interpolate(mode="area") bit for bit, shrinking and
    enlarging, on uint8 batches (OpenCV's integral) and float ones (NumPy's)."""
    rng = np.random.default_rng(0)
    for _ in range(60):
        batch, height, width = rng.integers(1, 3), rng.integers(1, 160), rng.integers(1, 160)
        images = rng.integers(0, 256, (batch, height, width, 3)).astype(np.uint8)
        pixels = torch.as_tensor(images).permute(0, 3, 1, 2).float()
        size = (int(rng.integers(1, 2 * height + 1)), int(rng.integers(1, 2 * width + 1)))
        expected = interpolate(pixels, size=size, mode="area").permute(0, 2, 3, 1).numpy()
        for table in (_integral(images), _integral(images.astype(np.float32))):
            np.testing.assert_array_equal(_pyramid_level(table, size), expected)
        count = 9
        image = rng.integers(0, batch, count)
        top, left = rng.integers(0, height, count), rng.integers(0, width, count)
        rows, columns = rng.integers(1, height - top + 1), rng.integers(1, width - left + 1)
        for crop in (24, 48):
            got = _regions(_integral(images), image, top, left, rows, columns, crop)
            for k in range(count):
                region = pixels[image[k], :, top[k] : top[k] + rows[k], left[k] : left[k] + columns[k]]
                want = interpolate(region[None], size=(crop, crop), mode="area")[0].permute(1, 2, 0).numpy()
                np.testing.assert_array_equal(got[k], want)


def test_onnx_networks_are_facenets(facenet, ours):
    generator = torch.Generator().manual_seed(0)
    cases = [(facenet.pnet, ours.pnet, (2, 3, 61, 45)), (facenet.pnet, ours.pnet, (1, 3, 12, 12)),
             (facenet.rnet, ours.rnet, (37, 3, 24, 24)), (facenet.onet, ours.onet, (7, 3, 48, 48))]
    for theirs, mine, shape in cases:
        pixels = torch.rand(shape, generator=generator) * 2 - 1
        with torch.inference_mode():
            expected = [t.numpy() for t in theirs(pixels)]
        got = mine(pixels.numpy())
        assert [g.shape for g in got] == [e.shape for e in expected]
        for g, e in zip(got, expected):
            np.testing.assert_allclose(g, e, rtol=0, atol=1e-5)


def test_the_onnx_files_are_the_recorded_export_of_facenets_weights():
    """forensic/weights/mtcnn.json names the files' and the source weights' SHA-256 (the weights
    those of the facenet-pytorch installed), the versions that exported them, and the licence."""
    from importlib.metadata import distribution

    record = json.loads((WEIGHTS / "mtcnn.json").read_text())
    package = distribution("facenet-pytorch").locate_file("facenet_pytorch")
    assert record["versions"]["facenet-pytorch"] == distribution("facenet-pytorch").version
    assert {"torch", "onnx"} <= set(record["versions"])
    for name, entry in record["networks"].items():
        assert hashlib.sha256((WEIGHTS / entry["file"]).read_bytes()).hexdigest() == entry["sha256"]
        assert hashlib.sha256((package / "data" / f"{name}.pt").read_bytes()).hexdigest() == entry["weights_sha256"]
    assert "MIT License" in (WEIGHTS / "LICENSE.facenet-pytorch").read_text()


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_detector_is_named_by_the_files_it_loaded_and_refuses_a_changed_one(ours, reexported_mtcnn_weights, tmp_path):
    """MTCNN's identity (what a report records) holds the SHA-256 of each ONNX file it loaded;
    a file that does not match mtcnn.json, a missing one or a broken record is refused in one
    line naming the file."""
    assert ours.identity == {"name": "MTCNN", "weights": "facenet-pytorch 2.5.3, exported to ONNX", "networks": [
        {"name": name, "file": f"{name}.onnx", "sha256": _sha256(WEIGHTS / f"{name}.onnx")} for name in NETWORKS]}
    other = MTCNN(threads=1, weights=reexported_mtcnn_weights).identity
    assert other["networks"][0]["sha256"] == _sha256(reexported_mtcnn_weights / "pnet.onnx") != ours.identity["networks"][0]["sha256"]
    assert other["networks"][1:] == ours.identity["networks"][1:]

    tampered = tmp_path / "weights"
    shutil.copytree(WEIGHTS, tampered)
    rnet = tampered / "rnet.onnx"
    rnet.write_bytes(rnet.read_bytes() + b"\0")
    recorded = json.loads((WEIGHTS / RECORD).read_text())["networks"]["rnet"]["sha256"]
    refusals = [(f"{rnet}: SHA-256 {_sha256(rnet)[:12]}… does not match mtcnn.json's {recorded[:12]}…; "
                 "the face detector's weights were modified or are corrupt")]
    with pytest.raises(ForensicError) as refused:
        MTCNN(weights=tampered)
    rnet.unlink()
    refusals.append(f"{rnet}: the face detector's rnet is missing")
    with pytest.raises(ForensicError) as missing:
        MTCNN(weights=tampered)
    (tampered / RECORD).write_text('{"networks": {}}')
    refusals.append(f"{tampered / RECORD}: not a face detector record (KeyError: 'versions')")
    with pytest.raises(ForensicError) as malformed:
        MTCNN(weights=tampered)
    assert [str(refused.value), str(missing.value), str(malformed.value)] == refusals


def test_the_export_script_names_the_extra_when_facenet_pytorch_is_missing(monkeypatch):
    for name in [name for name in sys.modules if name.split(".")[0] == "facenet_pytorch"] + ["facenet_pytorch"]:
        monkeypatch.setitem(sys.modules, name, None)  # as where it is not installed: importing it fails
    with pytest.raises(SystemExit) as stopped:
        runpy.run_path(str(Path(__file__).resolve().parents[1] / "scripts" / "export_mtcnn_onnx.py"))
    assert stopped.value.code == ("error: facenet-pytorch is not installed; exporting MTCNN needs the mtcnn-export "
                                  "extra: .venv/bin/pip install -c constraints.txt -e '.[mtcnn-export]'")


@pytest.mark.parametrize("count", [0, 1, 40, 900, 1500])
def test_nms_is_torchvisions(count):
    from torchvision.ops import batched_nms as tv_batched_nms
    from torchvision.ops import nms as tv_nms

    generator = torch.Generator().manual_seed(count)
    corners = torch.rand(count, 2, generator=generator) * 200
    sizes = torch.rand(count, 2, generator=generator) * 40 + 1
    boxes = torch.cat([corners, corners + sizes], dim=1).floor()  # integer boxes: exact ties of IoU
    scores = (torch.rand(count, generator=generator) * 20).floor() / 20  # ties of score
    idxs = torch.randint(0, 3, (count,), generator=generator)
    for threshold in (0.3, 0.5, 0.7):
        np.testing.assert_array_equal(nms(boxes.numpy(), scores.numpy(), threshold), tv_nms(boxes, scores, threshold).numpy())
        ours = batched_nms(boxes.numpy(), scores.numpy(), idxs.numpy(), threshold)
        theirs = tv_batched_nms(boxes, scores, idxs, threshold).numpy()
        if boxes.numel() <= 4000:
            np.testing.assert_array_equal(ours, theirs)
        else:  # the same boxes by score; equal scores in torch's unstable sort's order, which depends
            # on the CPU (x86-simd-sort with AVX-512), in ours by index
            np.testing.assert_array_equal(np.sort(ours), np.sort(theirs))
            np.testing.assert_array_equal(scores.numpy()[ours], scores.numpy()[theirs])
            assert len(np.unique(scores.numpy()[ours])) < len(ours)  # (ties do reach this case)


def _imported(importtime_log: str) -> set[str]:
    """The modules a `python -X importtime` run imported, from its log."""
    return {line.rsplit("|", 1)[1].strip() for line in importtime_log.splitlines()
            if line.startswith("import time:") and "|" in line} - {"imported package"}


def _torch_modules(modules) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in ("torch", "torchvision", "facenet_pytorch"))


def test_a_one_image_scan_imports_no_torch(sample_media, tmp_path):
    """A real `forensic scan` process of one photo finds the face without importing PyTorch
    (with a GPU, --device auto imports it to load CUDA, so there the scan asks for the CPU)."""
    from forensic.inference import cuda_device_present

    report = tmp_path / "r.json"
    device = ["--device", "cpu"] if cuda_device_present() else []
    done = subprocess.run([sys.executable, "-X", "importtime", "-m", "forensic", "scan", str(sample_media["astronaut.png"]),
                           "--json", str(report), "--quiet", *device], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    modules = _imported(done.stderr)
    assert {"forensic.scan", "forensic.mtcnn", "onnxruntime"} <= modules  # the log is read right
    assert not _torch_modules(modules)
    [result] = json.loads(report.read_text())["files"]
    assert len(result["frames"][0]["faces"]) == 1 and result["frames"][0]["faces"][0]["detection_probability"] > 0.99


def test_detecting_and_following_import_no_torch():
    code = (
        "import sys, numpy as np; from skimage import data; import forensic.scan, forensic.cli, forensic.tracking; "
        "from forensic.faces import FaceDetector; detector = FaceDetector(); "
        "faces = detector.detect([data.astronaut()])[0]; assert faces, 'no face'; "
        "detector.refine(data.astronaut(), [faces[0].box]); "
        "print('\\n'.join(sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=300)
    assert not _torch_modules(done.stdout.split())
