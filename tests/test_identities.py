"""Faces grouped into identities across frames; identity and file scores; verdict bands."""

from __future__ import annotations

import json

import numpy as np
import pytest
from skimage import data

from forensic.identities import confident_score, group_identities, minimum_frames
from forensic.scan import verdict_for
from trainer.data.synthetic import astronaut, self_blend, write_video


def test_two_people_moving_stay_apart():
    left = [(10 + 8 * t, 50, 90 + 8 * t, 150) for t in range(6)]
    right = [(300 - 6 * t, 40, 380 - 6 * t, 140) for t in range(6)]
    frames = [[left[t], right[t]] if t % 2 == 0 else [right[t], left[t]] for t in range(6)]
    tracks = group_identities(frames)
    assert len(tracks) == 2
    for track in tracks:
        boxes = [frames[position][index] for position, index in track.members]
        assert len(boxes) == 6
        xs = [box[0] for box in boxes]
        assert max(xs) - min(xs) < 60  # each track follows one person, not both


def test_a_person_who_leaves_and_returns_keeps_their_identity():
    frames = [[(100, 100, 180, 200)], [], [], [(110, 105, 190, 205)]]
    tracks = group_identities(frames)
    assert len(tracks) == 1 and tracks[0].members == [(0, 0), (3, 0)]


def test_a_face_far_away_or_of_another_size_is_someone_else():
    frames = [[(100, 100, 180, 200)], [(400, 100, 480, 200)], [(100, 100, 400, 480)]]
    assert len(group_identities(frames)) == 3


def test_confident_strategy():
    many_fake = np.array([0.95] * 20 + [0.3] * 12)
    assert confident_score(many_fake) == pytest.approx(0.95)
    mostly_real = np.array([0.05] * 30 + [0.6] * 2)
    assert confident_score(mostly_real) == pytest.approx(0.05)
    mixed = np.array([0.9] * 5 + [0.4] * 5)
    assert confident_score(mixed) == pytest.approx(0.65)


def test_rare_identities_do_not_decide():
    assert minimum_frames(32) == 4 and minimum_frames(1) == 1


def test_uncertain_band():
    assert verdict_for(0.52, 0.5, 0.05) == "uncertain"
    assert verdict_for(0.56, 0.5, 0.05) == "fake"
    assert verdict_for(0.44, 0.5, 0.05) == "real"
    assert verdict_for(0.5, 0.5, 0.0) == "fake"


def _two_person_clip(path, frames=8):
    """The astronaut's face twice per frame: left as photographed, right self-blended."""
    image, box = astronaut()
    x1, y1, x2, y2 = (int(v) for v in box)
    pad = 40
    face = image[y1 - pad:y2 + pad, x1 - pad:x2 + pad]
    blended = self_blend(image, box, np.random.default_rng(0), ratio=1.0)[y1 - pad:y2 + pad, x1 - pad:x2 + pad]
    h, w = face.shape[:2]
    clip = []
    for t in range(frames):
        canvas = np.full((360, 640, 3), 90, np.uint8)
        canvas[60:60 + h, 20 + 4 * t:20 + 4 * t + w] = face
        canvas[80:80 + h, 400 - 3 * t:400 - 3 * t + w] = blended
        clip.append(canvas)
    write_video(path, clip)
    return path


@pytest.fixture(scope="module")
def placeholder_scanner():
    from forensic.bundle import DEFAULT_BUNDLE, load_bundle
    from forensic.scan import Scanner

    return Scanner(load_bundle(DEFAULT_BUNDLE), device="cpu", frames=8)


def test_a_video_is_as_fake_as_its_most_fake_identity(placeholder_scanner, tmp_path):
    result = placeholder_scanner.scan_file(_two_person_clip(tmp_path / "two.mp4"))
    assert result.faces == 2 and len(result.identities) == 2
    assert all(identity.frames == 8 for identity in result.identities)
    assert result.score == pytest.approx(max(identity.score for identity in result.identities))
    # every face carries its identity, and each frame holds one face of each
    for frame in result.frames:
        assert sorted(face.identity for face in frame.faces) == [0, 1]


def test_an_identity_scores_the_mean_of_its_faces_unless_told_otherwise(placeholder_scanner, tmp_path):
    from forensic.scan import Scanner

    path = _two_person_clip(tmp_path / "two.mp4")
    confident = Scanner(placeholder_scanner.bundle, device="cpu", frames=8, aggregation="confident",
                        detector=placeholder_scanner.detector)
    by_mean, by_confidence = placeholder_scanner.scan_file(path), confident.scan_file(path)
    assert placeholder_scanner.aggregation == "mean"
    for mean_identity, confident_identity in zip(by_mean.identities, by_confidence.identities):
        faces = [face.score for frame in by_mean.frames for face in frame.faces
                 if face.identity == mean_identity.identity]
        assert len(faces) == 8
        assert mean_identity.score == pytest.approx(np.mean(faces))
        assert confident_identity.score == pytest.approx(confident_score(np.array(faces)))


@pytest.mark.parametrize("stray_probability, decides", [(0.80, False), (0.99, True)])
def test_an_identity_that_is_not_surely_a_face_does_not_decide(placeholder_scanner, stray_probability, decides):
    # A person in all 32 frames scored real; something else, found in 6 of them (past the 4 frames an
    # identity needs), scored fake. It decides only if MTCNN is sure it is a face.
    from rich.console import Console

    from forensic.html_report import _identity_rows
    from forensic.scan import FaceResult, FileResult, FrameResult
    from forensic.tui.widgets.detail_pane import identities_table

    def face(box, probability, score):
        return FaceResult(box=box, detection_probability=probability, score=score, model_scores={"m": score})

    frames = [FrameResult(index=i, time=None, faces=[face((100, 100, 200, 220), 0.999, 0.1)]
                          + ([face((500, 300, 560, 370), stray_probability, 0.9)] if i % 6 == 0 else []))
              for i in range(32)]
    result = FileResult(path="clip.mp4", kind="video", sha256=None, verdict="error", score=None,
                        threshold=placeholder_scanner.threshold, frames=frames)
    decided = placeholder_scanner._decide(result)
    person, stray = sorted(decided.identities, key=lambda identity: -identity.frames)
    assert (person.frames, stray.frames) == (32, 6)
    assert stray.detection_probability == pytest.approx(stray_probability) and stray.counts is decides
    assert decided.score == pytest.approx(0.9 if decides else 0.1)
    assert decided.verdict == ("fake" if decides else "real")
    said = "not surely a face: detection 0.80"  # the HTML report and the TUI say why
    console = Console(width=200, record=True)
    console.print(identities_table(decided))
    assert (said in console.export_text()) is not decides
    assert (f"{said}: does not decide" in _identity_rows(decided, {})) is not decides


def test_no_face_clip_is_no_face(placeholder_scanner, tmp_path):
    coffee = np.ascontiguousarray(data.coffee()[:336, :448])
    path = tmp_path / "coffee.mp4"
    write_video(path, [coffee] * 4)
    result = placeholder_scanner.scan_file(path)
    assert result.verdict == "no-face" and result.score is None and result.frames_analyzed == 4


def test_scans_are_deterministic(placeholder_scanner, tmp_path):
    from forensic.report import file_entry

    path = _two_person_clip(tmp_path / "two.mp4", frames=4)
    first, second = (file_entry(placeholder_scanner.scan_file(path)) for _ in range(2))
    for entry in (first, second):
        entry.pop("timings")
    assert json.dumps(first, sort_keys=True) == json.dumps(second, sort_keys=True)


def test_progress_is_reported_per_batch_of_frames(placeholder_scanner, tmp_path):
    path = _two_person_clip(tmp_path / "two.mp4", frames=8)
    seen: list[int] = []
    batch = placeholder_scanner.detector.batch_size
    placeholder_scanner.detector.batch_size = 3
    try:
        result = placeholder_scanner.scan_file(path, on_frames=seen.append)
    finally:
        placeholder_scanner.detector.batch_size = batch
    assert seen == [3, 6, 8] and result.frames_analyzed == 8
