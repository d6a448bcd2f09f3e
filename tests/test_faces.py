"""forensic.faces: the shared face-crop geometry and the MTCNN detector (real weights, no mocks)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from skimage import data

from forensic.faces import FaceDetector, crop_face

ASTRONAUT_BOX = np.array([181.0, 62.0, 268.0, 172.0])  # x1, y1, x2, y2 of the face in data.astronaut()
BACKGROUND = 100


# --------------------------------------------------------------------------------------------
# crop_face


def _scene(height: int = 120, width: int = 160) -> np.ndarray:
    """A flat grey scene with a 40x40 patterned square at x 60..100, y 40..80."""
    image = np.full((height, width, 3), BACKGROUND, np.uint8)
    ys, xs = np.mgrid[0:40, 0:40]
    image[40:80, 60:100, 0] = 200
    image[40:80, 60:100, 1] = (xs * 5).astype(np.uint8)  # a gradient, so any shift shows
    image[40:80, 60:100, 2] = (ys * 5).astype(np.uint8)
    return image


@pytest.mark.parametrize("size", [16, 40, 96])
@pytest.mark.parametrize("margin", [1.0, 1.3, 2.0])
def test_crop_face_output_shape(size, margin):
    crop = crop_face(_scene(), (60, 40, 100, 80), margin, size)
    assert crop.shape == (size, size, 3)
    assert crop.dtype == np.uint8


def test_crop_face_non_square_box_gives_square_crop():
    crop = crop_face(_scene(), (60, 50, 100, 70), 1.0, 32)
    assert crop.shape == (32, 32, 3)


def test_crop_face_margin_one_returns_exactly_the_box():
    image = _scene()
    crop = crop_face(image, (60, 40, 100, 80), 1.0, 40)
    np.testing.assert_array_equal(crop, image[40:80, 60:100])


def test_crop_face_square_centred_on_a_wide_box():
    # A 40x20 box: the square crop's side is the longer side (40), centred on the box.
    image = _scene()
    crop = crop_face(image, (60, 50, 100, 70), 1.0, 40)
    np.testing.assert_array_equal(crop, image[40:80, 60:100])


def test_crop_face_at_left_edge_is_padded_with_black_on_the_outside():
    image = _scene()
    # Box x 0..40, y 40..80, margin 1.5: a 60 px square from x -10 to 50.
    crop = crop_face(image, (0, 40, 40, 80), 1.5, 60)
    assert (crop[:, :10] == 0).all(), "the part left of the image must be black"
    np.testing.assert_array_equal(crop[:, 10:], image[30:90, 0:50])
    assert (crop[:, 10:] != 0).any(axis=-1).all(), "inside the image nothing may be black"


def test_crop_face_at_bottom_right_corner_is_padded_on_those_sides():
    image = _scene()  # 120 x 160
    # Box x 120..160, y 80..120, margin 1.5: square x 110..170, y 70..130.
    crop = crop_face(image, (120, 80, 160, 120), 1.5, 60)
    assert (crop[:, 50:] == 0).all()
    assert (crop[50:, :] == 0).all()
    np.testing.assert_array_equal(crop[:50, :50], image[70:120, 110:160])


def test_crop_face_wider_margin_shows_more_context():
    image = _scene()
    box = (60, 40, 100, 80)
    tight = crop_face(image, box, 1.0, 80)
    wide = crop_face(image, box, 2.0, 80)
    # Margin 1: the square itself fills the crop, no background at all.
    assert not (tight == BACKGROUND).all(axis=-1).any()
    # Margin 2: an 80 px square, so the face square is the middle half and background surrounds it.
    np.testing.assert_array_equal(wide, image[20:100, 40:120])
    assert (wide[:20] == BACKGROUND).all() and (wide[-20:] == BACKGROUND).all()
    assert (wide[:, :20] == BACKGROUND).all() and (wide[:, -20:] == BACKGROUND).all()
    np.testing.assert_array_equal(wide[20:60, 20:60], image[40:80, 60:100])


def test_crop_face_downscales_and_upscales():
    image = _scene()
    box = (60, 40, 100, 80)
    small = crop_face(image, box, 1.0, 20)
    expected = cv2.resize(image[40:80, 60:100], (20, 20), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(small, expected)
    large = crop_face(image, box, 1.0, 80)
    assert np.abs(large[::2, ::2].astype(int) - image[40:80, 60:100].astype(int)).max() <= 20


def test_crop_face_box_wholly_outside_the_image_is_black():
    crop = crop_face(_scene(), (500, 500, 540, 540), 1.0, 32)
    assert crop.shape == (32, 32, 3)
    assert (crop == 0).all()


def test_crop_face_empty_box_raises():
    with pytest.raises(ValueError):
        crop_face(_scene(), (50, 50, 50, 50), 1.3, 32)


def test_crop_face_accepts_numpy_box_and_grey_float_coords():
    image = _scene()
    crop = crop_face(image, np.array([60.2, 39.8, 99.9, 80.1]), 1.0, 40)
    np.testing.assert_array_equal(crop, image[40:80, 60:100])


# --------------------------------------------------------------------------------------------
# FaceDetector (real MTCNN)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector(device="cpu")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()


@pytest.fixture(scope="module")
def astronaut_faces(detector, astronaut):
    return detector.detect([astronaut])[0]


def test_detector_finds_the_astronaut(astronaut_faces):
    faces = astronaut_faces
    assert len(faces) == 1
    face = faces[0]
    np.testing.assert_allclose(face.box, ASTRONAUT_BOX, atol=10)
    assert face.probability > 0.95
    assert face.landmarks.shape == (5, 2)
    x1, y1, x2, y2 = face.box
    assert ((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2)).all()
    assert ((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2)).all()
    assert face.size == pytest.approx(min(x2 - x1, y2 - y1))


def test_detector_maps_boxes_back_from_a_downscaled_copy(detector, astronaut, astronaut_faces):
    big = cv2.resize(astronaut, (1024, 1024), interpolation=cv2.INTER_CUBIC)
    saved = detector.max_side
    detector.max_side = 512  # forces detection on a half-size copy
    try:
        assert detector._scale_for(big) == pytest.approx(0.5)
        faces = detector.detect([big])[0]
    finally:
        detector.max_side = saved
    assert len(faces) == 1
    np.testing.assert_allclose(faces[0].box, ASTRONAUT_BOX * 2, atol=8 * 2)
    reference = astronaut_faces[0]
    np.testing.assert_allclose(np.array(faces[0].box) / 2, reference.box, atol=8)
    np.testing.assert_allclose(faces[0].landmarks / 2, reference.landmarks, atol=8)


def test_detector_batches_images_of_different_sizes(detector, astronaut):
    crop = np.ascontiguousarray(astronaut[20:220, 130:330])  # 200 x 200, face shifted by (-130, -20)
    flat = np.full((150, 200, 3), 128, np.uint8)
    # The two crops are batched together, the flat image on its own; results keep input order.
    results = detector.detect([crop, flat, crop[:, ::-1].copy()])
    assert [len(r) for r in results] == [1, 0, 1]
    np.testing.assert_allclose(results[0][0].box, ASTRONAUT_BOX - [130, 20, 130, 20], atol=10)
    # The mirrored crop's face is mirrored: x1' = 200 - x2.
    x1, y1, x2, y2 = results[0][0].box
    np.testing.assert_allclose(results[2][0].box, [200 - x2, y1, 200 - x1, y2], atol=10)


def test_detector_finds_no_face_in_coffee(detector):
    assert detector.detect([data.coffee()]) == [[]]


def test_detector_finds_no_face_in_flat_grey(detector):
    assert detector.detect([np.full((360, 480, 3), 128, np.uint8)]) == [[]]


def test_detector_empty_list(detector):
    assert detector.detect([]) == []


def test_min_face_size_filters_smaller_faces(astronaut):
    # Downscaled to 256 px the face is about 44 x 55 px.
    small = cv2.resize(astronaut, (256, 256), interpolation=cv2.INTER_AREA)
    permissive = FaceDetector(device="cpu", min_face_size=20)
    strict = FaceDetector(device="cpu", min_face_size=60)
    found = permissive.detect([small])[0]
    assert len(found) == 1
    assert 35 <= found[0].size < 60
    np.testing.assert_allclose(found[0].box, ASTRONAUT_BOX / 2, atol=8)
    assert strict.detect([small]) == [[]]


def test_a_small_face_in_a_large_photo_is_found(detector, astronaut):
    # Shrinking a 4032 px photo to 720 px would make this 54 px face under 10 px, below what
    # MTCNN finds; it is now shrunk only so far that a 40 px face keeps 12 px.
    face = cv2.resize(astronaut, (320, 320), interpolation=cv2.INTER_AREA)
    photo = np.full((3024, 4032, 3), 110, np.uint8)
    photo[1500:1820, 2000:2320] = face
    found = detector.detect([photo])[0]
    assert len(found) == 1 and found[0].size >= detector.min_face_size
    np.testing.assert_allclose(found[0].box, ASTRONAUT_BOX * 0.625 + [2000, 1500, 2000, 1500], atol=12)


def test_an_image_smaller_than_the_smallest_face_has_no_face_and_no_error(detector):
    # MTCNN's image pyramid is empty there, and facenet-pytorch raised from torch.cat([]).
    assert detector.detect([np.full((30, 30, 3), 128, np.uint8), np.full((35, 640, 3), 128, np.uint8)]) == [[], []]


def test_refine_on_a_detected_box_keeps_it(detector, astronaut, astronaut_faces):
    # O-Net alone on full detection's own box: the same face, box and landmarks.
    [face] = detector.refine(astronaut, [astronaut_faces[0].box])
    assert face.probability > 0.95
    np.testing.assert_allclose(face.box, astronaut_faces[0].box, atol=6)
    np.testing.assert_allclose(face.landmarks, astronaut_faces[0].landmarks, atol=6)


def test_refine_moves_a_shifted_box_back_onto_the_face(detector, astronaut):
    shifted = ASTRONAUT_BOX + [20, 15, 20, 15]  # a quarter of the face off, as after it moved
    [face] = detector.refine(astronaut, [shifted])
    assert face.probability > 0.9
    assert np.abs(np.array(face.box) - ASTRONAUT_BOX).max() < np.abs(shifted - ASTRONAUT_BOX).max() / 2


def test_refine_on_a_box_without_a_face_is_not_a_face(detector, astronaut):
    [face] = detector.refine(astronaut, [(20, 380, 120, 480)])  # the astronaut's suit and the flag
    assert face.probability < 0.5
    assert detector.refine(astronaut, []) == []
