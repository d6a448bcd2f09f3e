"""Following faces between full detections (forensic.tracking, `forensic scan --detect-every K`):
real MTCNN, the default bundle in ONNX Runtime, videos made here from scikit-image's astronaut."""

from __future__ import annotations

import numpy as np
import pytest

from forensic import DEFAULT_DETECT_EVERY
from forensic.bundle import DEFAULT_BUNDLE, load_bundle
from forensic.faces import FaceDetector
from forensic.scan import Scanner
from forensic.media import sample_video_frames
from forensic.tracking import FOLLOW_CONFIDENCE, FaceFollower, iou
from trainer.data.synthetic import astronaut, self_blend, write_video

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# The stated tolerance of the default K against full detection (K = 1), from 84 FF++ videos
# (BENCHMARKS.md): no verdict flips between fake and real, and a file score moves by at most
# 0.25 (median 0.008, measured under the confident aggregation, then the default, whose largest
# moves were its switching between averaging the confidently fake faces and averaging all).
SCORE_TOLERANCE = 0.25
FRAMES = 16


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(device="cpu")


@pytest.fixture(scope="module")
def bundle():
    return load_bundle(DEFAULT_BUNDLE)


def _scanner(bundle, detector, every: int) -> Scanner:
    return Scanner(bundle, device="cpu", frames=FRAMES, detect_every=every, detector=detector)


def _face(blended: bool = False) -> np.ndarray:
    """The astronaut's head and shoulders, 230x240 px (the face about 87x110): without the
    suit, which MTCNN now and then takes for a large face."""
    image, box = astronaut()
    if blended:
        image = self_blend(image, box, np.random.default_rng(0), ratio=1.0)
    return np.ascontiguousarray(image[20:260, 110:340])


def _clip(path, xs, blended: bool = False, present=None):
    """The astronaut at x = xs[i] in frame i of a grey 640x360 clip; absent where present[i] is False."""
    face, frames = _face(blended), []
    for i, x in enumerate(xs):
        canvas = np.full((360, 640, 3), 90, np.uint8)
        if present is None or present[i]:
            canvas[60:300, x:x + 230] = face
        frames.append(canvas)
    write_video(path, frames)
    return path


@pytest.mark.parametrize("blended", [False, True], ids=["real", "blended"])
def test_following_keeps_the_verdict_and_score_of_full_detection(bundle, detector, tmp_path, blended):
    # The face moves 20 px (a quarter of its width) between analysed frames: O-Net follows that.
    path = _clip(tmp_path / "moving.mp4", [40 + 20 * i for i in range(FRAMES)], blended)
    full = _scanner(bundle, detector, 1).scan_file(path)
    fast = _scanner(bundle, detector, DEFAULT_DETECT_EVERY).scan_file(path)
    assert full.verdict in ("fake", "real", "uncertain") and full.faces == 1
    assert all(frame.detected for frame in full.frames)
    followed = [frame for frame in fast.frames if not frame.detected]
    assert len(followed) >= FRAMES - FRAMES // DEFAULT_DETECT_EVERY - 1  # the fast path did run
    assert {fast.verdict, full.verdict} != {"fake", "real"} and fast.faces == full.faces == 1
    assert fast.score == pytest.approx(full.score, abs=SCORE_TOLERANCE)
    for a, b in zip(fast.frames, full.frames):  # every followed face is on the detected one
        assert len(a.faces) == len(b.faces) == 1
        assert iou(a.faces[0].box, b.faces[0].box) > 0.75


def test_a_face_one_onet_pass_loses_is_found_around_its_box(bundle, detector, tmp_path):
    # 45 px a frame, half the face's width: one O-Net pass on the previous box loses it.
    path = _clip(tmp_path / "fast.mp4", [20 + 45 * i for i in range(8)])
    frames = [frame.image for frame in sample_video_frames(path, 8)]
    first = detector.detect(frames[:1])[0][0]
    assert detector.refine(frames[1], [first.box])[0].probability < FOLLOW_CONFIDENCE
    full = _scanner(bundle, detector, 1).scan_file(path)
    fast = _scanner(bundle, detector, FRAMES).scan_file(path)
    assert [frame.detected for frame in fast.frames] == [True] + [False] * 7
    for a, b in zip(fast.frames, full.frames):
        assert len(a.faces) == len(b.faces) == 1 and iou(a.faces[0].box, b.faces[0].box) > 0.75


def test_a_face_that_jumps_is_detected_again_where_it_lands(bundle, detector, tmp_path):
    xs = [20 + 2 * i for i in range(8)] + [380 + 2 * i for i in range(8)]  # jumps 360 px at frame 8
    path = _clip(tmp_path / "jump.mp4", xs)
    full = _scanner(bundle, detector, 1).scan_file(path)
    fast = _scanner(bundle, detector, FRAMES).scan_file(path)  # only frame 0 is due for detection
    assert [frame.detected for frame in fast.frames] == [True] + [False] * 7 + [True] + [False] * 7
    for a, b in zip(fast.frames, full.frames):
        assert len(a.faces) == len(b.faces) == 1 and iou(a.faces[0].box, b.faces[0].box) > 0.75
    assert fast.frames[8].faces[0].box[0] > 300  # found where it landed, not left behind


def test_a_face_that_leaves_is_detected_gone(bundle, detector, tmp_path):
    present = [True] * 6 + [False] * 10
    path = _clip(tmp_path / "leaves.mp4", [100 + 5 * i for i in range(FRAMES)], present=present)
    result = _scanner(bundle, detector, FRAMES).scan_file(path)
    assert [len(frame.faces) for frame in result.frames] == [1] * 6 + [0] * 10
    # Frame 6 is detected again (the followed face's O-Net probability fell); after it there is
    # nothing to follow until the next frame due.
    assert [frame.detected for frame in result.frames] == [True] + [False] * 5 + [True] + [False] * 9


def test_two_followed_boxes_on_one_face_send_the_frame_to_detection(detector):
    image = np.full((360, 640, 3), 90, np.uint8)
    image[60:300, 100:330] = _face()
    face = detector.detect([image])[0][0]
    follower = FaceFollower(detector, every=8)
    follower.position = 1  # not due
    x1, y1, x2, y2 = face.box
    follower.previous = [face, type(face)(box=(x1 + 4, y1 + 4, x2 + 4, y2 + 4), probability=0.99, landmarks=face.landmarks)]
    [(faces, detected)] = follower.faces([image])
    assert detected and len(faces) == 1
    assert iou(faces[0].box, face.box) > 0.95


def test_frames_due_are_every_kth_across_batches(detector):
    """The schedule counts analysed frames over the whole file, not within each batch."""
    image = np.full((360, 640, 3), 90, np.uint8)
    image[60:300, 100:330] = _face()
    follower = FaceFollower(detector, every=3)
    flags = [detected for batch in (2, 4, 1) for _, detected in follower.faces([image] * batch)]
    assert flags == [True, False, False, True, False, False, True]


def test_detect_every_below_one_is_refused(bundle, detector):
    with pytest.raises(ValueError, match="detect_every"):
        _scanner(bundle, detector, 0)
