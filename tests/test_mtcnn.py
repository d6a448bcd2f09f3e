"""forensic.mtcnn: facenet-pytorch's MTCNN without torchvision gives facenet's own results."""

from __future__ import annotations

import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch
from skimage import data

from forensic.mtcnn import MTCNN, batched_nms, nms

pytestmark = pytest.mark.usefixtures("one_torch_thread")
THRESHOLDS = (0.6, 0.7, 0.7)


@pytest.fixture(scope="module")
def facenet():
    from facenet_pytorch import MTCNN as FacenetMTCNN

    return FacenetMTCNN(keep_all=True, thresholds=list(THRESHOLDS), device="cpu")


@pytest.fixture(scope="module")
def ours():
    return MTCNN(thresholds=THRESHOLDS)


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


def _assert_same(facenet, ours, batch, min_face_size):
    facenet.min_face_size = ours.min_face_size = min_face_size
    with torch.inference_mode():
        boxes, probs, points = facenet.detect(batch, landmarks=True)
        found = ours.detect(batch)
    assert len(found) == len(batch)
    faces = 0
    for b, p, pts, (our_b, our_p, our_pts) in zip(boxes, probs, points, found):
        if b is None:
            assert our_b is None and our_p is None and our_pts is None
            continue
        faces += len(b)
        np.testing.assert_array_equal(our_b, np.asarray(b, dtype=float))  # exactly, not merely close
        np.testing.assert_array_equal(our_p, np.asarray(p, dtype=float))
        np.testing.assert_array_equal(our_pts, np.asarray(pts, dtype=float))
    return faces


@pytest.mark.parametrize("size, degrees", [(512, 0), (256, 0), (700, 0), (384, 15), (512, -30), (300, 90)])
def test_astronaut_rescaled_and_rotated(facenet, ours, size, degrees):
    image = _rotated(cv2.resize(data.astronaut(), (size, size), interpolation=cv2.INTER_AREA), degrees)
    for min_face_size in (12, 20, 40):
        _assert_same(facenet, ours, image[None], min_face_size)


def test_wide_photo_with_several_faces(facenet, ours):
    face = data.astronaut()
    scene = np.concatenate([face, cv2.flip(face, 1), cv2.resize(face, (512, 256))[:, :512]], axis=0)
    scene = cv2.resize(scene, (480, 720), interpolation=cv2.INTER_AREA)
    assert _assert_same(facenet, ours, scene[None], 12) >= 2


def test_images_without_a_face(facenet, ours):
    for image in (data.coffee(), np.full((240, 320, 3), 128, np.uint8), data.chelsea()):
        _assert_same(facenet, ours, image[None], 20)


def test_a_batch_of_video_frames(facenet, ours, sample_media):
    frames = _frames(sample_media["astronaut_pan.mp4"])
    assert len(frames) >= 4
    assert _assert_same(facenet, ours, frames, 20) >= len(frames)
    assert _assert_same(facenet, ours, frames, 12) >= len(frames)


def test_onet_is_facenets(facenet, ours):
    pixels = torch.rand(7, 3, 48, 48) * 2 - 1
    with torch.inference_mode():
        for theirs, mine in zip(facenet.onet(pixels), ours.onet(pixels)):
            assert torch.equal(theirs, mine)


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
        assert torch.equal(nms(boxes, scores, threshold), tv_nms(boxes, scores, threshold))
        assert torch.equal(batched_nms(boxes, scores, idxs, threshold), tv_batched_nms(boxes, scores, idxs, threshold))


def test_scanning_does_not_import_torchvision(sample_media):
    code = (
        "import sys, numpy as np; from skimage import data; import forensic.scan, forensic.cli; "
        "from forensic.faces import FaceDetector; detector = FaceDetector(); "
        "faces = detector.detect([data.astronaut()])[0]; assert faces, 'no face'; "
        "detector.refine(data.astronaut(), [faces[0].box]); "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('torchvision', 'facenet_pytorch') "
        "or m.startswith('torch._dynamo')); assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)
