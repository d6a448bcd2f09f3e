"""Face crops from one source video or image. Frames are sampled, faces detected and cropped by
exactly the code `forensic scan` uses (forensic.media.sample_video_frames,
forensic.faces.FaceDetector and crop_face), so the model trains on the framing it will be shown.

A pairs.csv source's images are face crops tighter than a scan's framing, so before detection and
cropping each image is padded by half its size (detection on a black border, the crop from a
mirrored one, so a crop wider than the source shows no black bars); the fake is cut with its
real's face box (the pair is aligned: same scene, same frame region), which keeps the pair
pixel-aligned and detects faces once per pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator, TypeVar

import cv2
import numpy as np

from forensic.faces import FaceDetector, crop_face, to_crop_coordinates
from forensic.media import Frame, load_image, sample_video_frames
from trainer.data.sources import SourceVideo

T = TypeVar("T")


def crop_landmarks(landmarks: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """Landmarks in the pixels of the crop that forensic.faces.crop_face makes."""
    return to_crop_coordinates(landmarks, box, margin, size)


@dataclass
class Crop:
    name: str  # file name
    image: np.ndarray
    landmarks: np.ndarray  # (5, 2) in crop pixels


def _frames(video: SourceVideo, count: int) -> Iterator[Frame]:
    if video.kind == "image":
        yield Frame(index=0, time=None, image=load_image(video.path))
    else:
        yield from sample_video_frames(video.path, count)


def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def pad_tight_crop(image: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """A tight face crop padded by half its longer side on every side: with a black border (for
    detection: MTCNN boxes a face that fills the whole image too large) and with a mirrored
    one (for cropping: a scan-framed crop wider than the source then shows no black bars)."""
    pad = max(image.shape[:2]) // 2
    black = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=(0, 0, 0))
    mirrored = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REFLECT_101)
    return black, mirrored, pad


@dataclass
class PairedCrop:
    """The face box (in padded-image pixels) and crop landmarks of a paired real, for its fake."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    shape: tuple[int, ...]


def extract_tight_crop(video: SourceVideo, detector: FaceDetector, margin: float, size: int,
                       partner: PairedCrop | None = None) -> tuple[list[Crop], PairedCrop | None]:
    """The most probable face of a tight face-crop image (a pairs.csv source), cropped by crop_face
    from the mirror-padded image; a paired fake is cut with its real's box (`partner`) when the
    two images have one size."""
    image = load_image(video.path)
    black, mirrored, _ = pad_tight_crop(image)
    if partner is not None and partner.shape == image.shape:
        box, landmarks = partner.box, partner.landmarks
    else:
        faces = detector.detect([black])[0]
        if not faces:
            return [], None
        box = faces[0].box
        landmarks = crop_landmarks(faces[0].landmarks, box, margin, size)
    crop = Crop(name=f"{video.name}_0000_0.png", image=crop_face(mirrored, box, margin, size), landmarks=landmarks)
    return [crop], PairedCrop(box=tuple(float(v) for v in box), landmarks=landmarks, shape=image.shape)


def extract_crops(video: SourceVideo, detector: FaceDetector, frames: int, margin: float, size: int) -> list[Crop]:
    """Every face in `frames` evenly sampled frames, cropped as `forensic scan` crops it.
    Raises MediaError for a file that cannot be decoded."""
    crops: list[Crop] = []
    for chunk in _chunks(_frames(video, frames), detector.batch_size):
        detections = detector.detect([frame.image for frame in chunk])
        for frame, faces in zip(chunk, detections):
            for number, face in enumerate(faces):
                crops.append(Crop(
                    name=f"{video.name}_{frame.index:04d}_{number}.png",
                    image=crop_face(frame.image, face.box, margin, size),
                    landmarks=crop_landmarks(face.landmarks, face.box, margin, size),
                ))
    return crops
