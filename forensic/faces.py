"""Face detection (facenet-pytorch's MTCNN, run by forensic.mtcnn in ONNX Runtime, without PyTorch)
and the face crop shared by training and scanning."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from forensic.inference import CUDA
from forensic.mtcnn import MTCNN, network_input


@dataclass(frozen=True)
class Face:
    """A detected face in full-resolution pixel coordinates."""

    box: tuple[float, float, float, float]  # x1, y1, x2, y2
    probability: float
    landmarks: np.ndarray  # (5, 2): eyes, nose, mouth corners

    @property
    def size(self) -> float:
        return min(self.box[2] - self.box[0], self.box[3] - self.box[1])


def crop_square(box, margin: float) -> tuple[int, int, int]:
    """The crop's square in image pixels: (left, top, side), `margin` x the box's longer side,
    centred on the box. Shared by crop_face and anything that maps points into crops."""
    x1, y1, x2, y2 = (float(v) for v in box)
    side = max(x2 - x1, y2 - y1) * margin
    if side < 1:
        raise ValueError(f"face box {box} is empty")
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    return int(round(cx - side / 2)), int(round(cy - side / 2)), max(1, int(round(side)))


def to_crop_coordinates(points: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """Map image-pixel points (e.g. landmarks) into the pixels of crop_face(image, box, margin,
    size): the same square, and cv2.resize's alignment of pixel centres."""
    left, top, side = crop_square(box, margin)
    return (np.asarray(points, dtype=np.float64) - [left, top] + 0.5) * (size / side) - 0.5


def crop_face(image: np.ndarray, box, margin: float, size: int) -> np.ndarray:
    """Cut a square crop centred on `box`, `margin` times its longer side, resized to `size`.

    Parts of the square outside the image are filled with black so the face keeps its
    aspect ratio and position at image edges. The same function makes training crops
    (trainer) and scan crops (forensic), so the model sees the same framing in both.
    """
    left, top, side_px = crop_square(box, margin)
    height, width = image.shape[:2]
    canvas = np.zeros((side_px, side_px, 3), dtype=np.uint8)
    src_x1, src_y1 = max(left, 0), max(top, 0)
    src_x2, src_y2 = min(left + side_px, width), min(top + side_px, height)
    if src_x2 > src_x1 and src_y2 > src_y1:
        canvas[src_y1 - top : src_y2 - top, src_x1 - left : src_x2 - left] = image[
            src_y1:src_y2, src_x1:src_x2
        ]
    interpolation = cv2.INTER_AREA if side_px > size else cv2.INTER_LINEAR
    return cv2.resize(canvas, (size, size), interpolation=interpolation)


MTCNN_SMALLEST_FACE = 12  # pixels: the size of P-Net's window
ONET_SIZE = 48  # pixels: O-Net's input


class FaceDetector:
    """MTCNN run on frames downscaled so their long side is at most `max_side` pixels (for speed),
    but never so far that a face of `min_face_size` pixels falls below the 12 pixels MTCNN can
    find: in a 4032 px photo a 40 px face would otherwise be missed. MTCNN's networks run in
    ONNX Runtime on `device` ("cpu", "cuda", or "auto": the GPU where one is usable) with
    `threads` intra-op threads (0: ONNX Runtime's default); `device` then names where they run.
    `weights`: the folder of the networks' ONNX files and their mtcnn.json (default forensic/weights/)."""

    def __init__(
        self,
        device: str = "cpu",
        min_face_size: int = 40,
        thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7),
        max_side: int = 720,
        batch_size: int = 16,
        threads: int = 0,
        weights: Path | None = None,
    ):
        self.min_face_size = min_face_size
        self.max_side = max_side
        self.batch_size = batch_size
        self._mtcnn = MTCNN(thresholds=thresholds, device=str(device), threads=threads, weights=weights)
        self.device = "cuda" if self._mtcnn.pnet.provider == CUDA else "cpu"

    @property
    def identity(self) -> dict:
        """The detector as a report records it: name, the weights' source and the SHA-256 of
        each ONNX file loaded (forensic.mtcnn.read_networks)."""
        return self._mtcnn.identity

    def _scale_for(self, image: np.ndarray) -> float:
        long_side = max(image.shape[:2])
        return min(1.0, max(self.max_side / long_side, MTCNN_SMALLEST_FACE / self.min_face_size))

    def detect(self, images: list[np.ndarray]) -> list[list[Face]]:
        """Faces in each image, most probable first. Same-sized images are batched together."""
        results: list[list[Face]] = [[] for _ in images]
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, image in enumerate(images):
            by_shape.setdefault(image.shape, []).append(i)
        for indices in by_shape.values():
            scale = self._scale_for(images[indices[0]])
            # MTCNN's smallest face is in the pixels it sees (smaller means more pyramid levels,
            # so slower); faces are filtered again at full resolution.
            self._mtcnn.min_face_size = max(MTCNN_SMALLEST_FACE, int(self.min_face_size * scale))
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                small = np.stack([self._downscale(images[i], scale) for i in chunk])
                if min(small.shape[1:3]) < self._mtcnn.min_face_size:
                    continue  # no face that large fits (and MTCNN's image pyramid would be empty)
                found = self._mtcnn.detect(small)
                for i, (b, p, pts) in zip(chunk, found):
                    results[i] = self._faces(b, p, pts, scale)
        return results

    def refine(self, image: np.ndarray, boxes) -> list[Face]:
        """MTCNN's last network (O-Net) alone on each box, squared as MTCNN squares R-Net's
        boxes: the box regressed onto the face now there, O-Net's probability that it is a face,
        and the landmarks. Following a face from one frame to the next this way costs about 2 ms
        a face against 50-70 ms for detecting a 720p frame in full (BENCHMARKS.md)."""
        if not boxes:
            return []
        squares = [crop_square(box, 1.0) for box in boxes]
        crops = np.stack([crop_face(image, box, 1.0, ONET_SIZE) for box in boxes])
        regression, points, probabilities = self._mtcnn.onet(network_input(crops.transpose(0, 3, 1, 2)))
        faces = []
        for (left, top, side), reg, pts, prob in zip(squares, regression, points, probabilities):
            # MTCNN's convention (facenet-pytorch's detect_face): a square box (x1, y1, x2, y2)
            # = (left + 1, top + 1, left + side, top + side) spans `side` pixels; the
            # regression moves each edge by a fraction of that side.
            box = (left + 1 + reg[0] * side, top + 1 + reg[1] * side, left + side + reg[2] * side, top + side + reg[3] * side)
            landmarks = np.stack([pts[:5] * side + left, pts[5:] * side + top], axis=1)
            faces.append(Face(box=tuple(float(v) for v in box), probability=float(prob[1]), landmarks=landmarks))
        return faces

    @staticmethod
    def _downscale(image: np.ndarray, scale: float) -> np.ndarray:
        if scale >= 1.0:
            return image
        height, width = image.shape[:2]
        new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
        return cv2.resize(image, new_size, interpolation=cv2.INTER_AREA)

    def _faces(self, boxes, probs, points, scale: float) -> list[Face]:
        if boxes is None:
            return []
        # Map back to full-resolution coordinates.
        boxes = np.asarray(boxes, dtype=float) / scale
        probs = np.asarray(probs, dtype=float)
        points = np.asarray(points, dtype=float) / scale
        faces = [
            Face(box=tuple(box.tolist()), probability=float(prob), landmarks=pts)
            for box, prob, pts in zip(boxes, probs, points)
        ]
        faces = [face for face in faces if face.size >= self.min_face_size]
        return sorted(faces, key=lambda face: -face.probability)
