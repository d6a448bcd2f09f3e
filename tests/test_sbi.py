"""Self-Blended Images (trainer.data.sbi): the blend, its mask, determinism, and the on-the-fly dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from forensic.faces import crop_face
from trainer.data.datasets import Sample, eval_transform
from trainer.data.extraction import crop_landmarks
from trainer.data.sbi import (BLEND_RATIOS, LANDMARKS_FILE, SelfBlendedFakes, compose, load_landmarks, self_blend,
                              self_blend_parts)

BOX = (181.0, 62.0, 268.0, 172.0)  # MTCNN's box of scikit-image's astronaut
LANDMARKS = np.array([[205.4, 101.5], [246.9, 103.1], [225.1, 129.2], [201.2, 139.6], [245.1, 141.1]])
SIZE = 96


@pytest.fixture(scope="module")
def crop() -> tuple[np.ndarray, np.ndarray]:
    """A scan-style crop of the astronaut and its landmarks in crop pixels."""
    image = data.astronaut()
    return crop_face(image, BOX, 1.3, SIZE), crop_landmarks(LANDMARKS, BOX, 1.3, SIZE)


def _modes(landmarks: np.ndarray):
    face = SIZE / 2.6  # a margin-1.3 crop: the face box is the central 1/1.3
    return {"landmarks": (landmarks, None), "box": (None, (SIZE / 2 - face, SIZE / 2 - face, SIZE / 2 + face, SIZE / 2 + face)),
            "neither": (None, None)}


@pytest.mark.parametrize("mode", ["landmarks", "box", "neither"])
def test_blend_changes_pixels_only_inside_the_mask(crop, mode):
    image, landmarks = crop
    points, box = _modes(landmarks)[mode]
    for seed in range(12):
        blended, mask = self_blend(image, points, box, np.random.default_rng(seed))
        assert blended.dtype == np.uint8 and blended.shape == image.shape
        assert mask.dtype == np.float32 and mask.shape == image.shape[:2]
        assert mask.min() >= 0.0 and mask.max() == pytest.approx(1.0)
        assert 0.15 < (mask > 0).mean() < 0.8, "the mask covers the face, not the whole crop"
        outside = mask == 0
        assert outside.any()
        np.testing.assert_array_equal(blended[outside], image[outside])
        inside = mask > 0.5
        assert np.abs(blended[inside].astype(int) - image[inside]).mean() > 0.5, "the face was altered"


def test_landmark_mask_covers_the_face_and_others_are_centred(crop):
    image, landmarks = crop
    for seed in range(10):
        _, mask = self_blend(image, landmarks, None, np.random.default_rng(seed))
        assert all(mask[int(round(y)), int(round(x))] > 0.5 for x, y in landmarks)
        _, central = self_blend(image, None, None, np.random.default_rng(seed))
        ys, xs = np.nonzero(central)
        assert abs(xs.mean() - SIZE / 2) < SIZE * 0.05 and abs(ys.mean() - SIZE / 2) < SIZE * 0.05
        assert central[: SIZE // 20].max() == 0 and central[:, : SIZE // 20].max() == 0  # crop's edges untouched


def test_deterministic_for_a_seed(crop):
    image, landmarks = crop
    before = image.copy()
    first = self_blend(image, landmarks, None, np.random.default_rng(7))
    again = self_blend(image, landmarks, None, np.random.default_rng(7))
    other = self_blend(image, landmarks, None, np.random.default_rng(8))
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0]) and not np.array_equal(first[1], other[1])
    np.testing.assert_array_equal(image, before)  # the input is not modified


def test_blend_ratios_come_from_the_paper_set_and_compose_is_the_formula(crop):
    image, landmarks = crop
    ratios = []
    for seed in range(60):
        parts = self_blend_parts(image, landmarks, None, np.random.default_rng(seed))
        ratios.append(parts.ratio)
        assert parts.source.shape == image.shape
        blended, mask = self_blend(image, landmarks, None, np.random.default_rng(seed))
        np.testing.assert_array_equal(mask, parts.mask)
        np.testing.assert_array_equal(blended, compose(image, parts))
        alpha = parts.ratio * parts.mask[..., None]
        expected = image * (1 - alpha) + parts.source * alpha
        assert np.abs(blended - expected).max() <= 0.5 + 1e-3
    assert set(ratios) == set(BLEND_RATIOS)
    assert ratios.count(1.0) > ratios.count(0.25), "1 is drawn half the time"


def test_odd_inputs(crop):
    image, landmarks = crop
    with pytest.raises(ValueError):
        self_blend(image, landmarks[:3], None, np.random.default_rng(0))
    with pytest.raises(ValueError):
        self_blend(image.astype(np.float32), None, None, np.random.default_rng(0))
    # Landmarks outside the crop: the mask falls back to the central region, never empty.
    _, mask = self_blend(image, landmarks + 10 * SIZE, None, np.random.default_rng(0))
    assert mask.max() == pytest.approx(1.0)
    tiny, mask = self_blend(np.full((16, 16, 3), 120, np.uint8), None, None, np.random.default_rng(0))
    assert tiny.shape == (16, 16, 3) and mask.max() == pytest.approx(1.0)


def test_load_landmarks(tmp_path):
    assert load_landmarks(tmp_path / "train") == {}
    (tmp_path / "train" / "real").mkdir(parents=True)
    (tmp_path / "train" / "fake").mkdir()
    points = LANDMARKS.tolist()
    (tmp_path / "train" / "real" / LANDMARKS_FILE).write_text(json.dumps({"044_0000_0.png": points, "bad.png": [1, 2]}))
    (tmp_path / "train" / "fake" / LANDMARKS_FILE).write_text(json.dumps({"Deepfakes-044_945_0000_0.png": points}))
    from_split = load_landmarks(tmp_path / "train")
    assert sorted(from_split) == ["044_0000_0.png", "Deepfakes-044_945_0000_0.png"]
    np.testing.assert_allclose(from_split["044_0000_0.png"], LANDMARKS)
    assert sorted(load_landmarks(tmp_path / "train" / "real")) == ["044_0000_0.png"]  # a class folder works too
    (tmp_path / "train" / "real" / LANDMARKS_FILE).write_text("{not json")
    with pytest.raises(ValueError, match=LANDMARKS_FILE):
        load_landmarks(tmp_path / "train")


def test_self_blended_fakes_dataset(tmp_path, crop):
    image, landmarks = crop
    folder = tmp_path / "train" / "real"
    folder.mkdir(parents=True)
    samples = []
    for i in range(3):
        path = folder / f"044_{i:04d}_0.png"
        Image.fromarray(np.ascontiguousarray(image if i != 1 else image[:, ::-1])).save(path)
        samples.append(Sample(path, 0))
    (folder / LANDMARKS_FILE).write_text(json.dumps({"044_0000_0.png": landmarks.tolist()}))
    dataset = SelfBlendedFakes(samples, eval_transform(64), landmarks=load_landmarks(folder), seed=3)
    assert len(dataset) == 3
    pixels, label = dataset[0]
    assert label == 1 and pixels.shape == (3, 64, 64) and pixels.dtype == torch.float32
    assert 0.0 <= float(pixels.min()) and float(pixels.max()) <= 1.0
    assert torch.equal(dataset[0][0], pixels), "same epoch, same fake"
    first_epoch = [dataset.blend(i)[0] for i in range(3)]
    assert not np.array_equal(first_epoch[0], first_epoch[2]), "each index draws its own blend"
    dataset.set_epoch(1)
    assert not torch.equal(dataset[0][0], pixels), "a new epoch, new fakes"
    dataset.set_epoch(0)
    assert torch.equal(dataset[0][0], pixels)
    for i, blended in enumerate(first_epoch):
        assert blended.shape == image.shape and not np.array_equal(blended, np.asarray(Image.open(samples[i].path)))
    # Landmarks are used when the crop has them (a hull mask), the centre of the crop otherwise.
    with_landmarks = dataset.blend(0)[1]
    without = SelfBlendedFakes(samples, eval_transform(64), landmarks=None, seed=3).blend(0)[1]
    assert not np.array_equal(with_landmarks, without)
