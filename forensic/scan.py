"""Scanning one file: frames → faces → crops → ensemble scores → one verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Iterator, Literal

import numpy as np

from forensic.bundle import Bundle, sha256_file
from forensic.errors import MediaError
from forensic.faces import FaceDetector, crop_face
from forensic.inference import Device, EnsembleRunner
from forensic.media import Frame, load_image, media_kind, sample_video_frames

Verdict = Literal["fake", "real", "no-face", "error"]
DEFAULT_FRAMES = 32


@dataclass
class FaceResult:
    box: tuple[float, float, float, float]
    detection_probability: float
    score: float
    model_scores: dict[str, float]


@dataclass
class FrameResult:
    index: int
    time: float | None
    faces: list[FaceResult]

    @property
    def score(self) -> float | None:
        """A frame is as fake as its most fake face."""
        return max((face.score for face in self.faces), default=None)


@dataclass
class FileResult:
    path: str
    kind: Literal["image", "video"] | None
    sha256: str | None
    verdict: Verdict
    score: float | None
    threshold: float
    frames_analyzed: int = 0
    faces: int = 0
    error: str | None = None
    frames: list[FrameResult] = field(default_factory=list)


class Scanner:
    """Holds the face detector and the bundle's models, and scans files one at a time."""

    def __init__(
        self,
        bundle: Bundle,
        device: Device = "auto",
        frames: int = DEFAULT_FRAMES,
        threshold: float | None = None,
        detector: FaceDetector | None = None,
    ):
        if frames < 1:
            raise ValueError("frames must be at least 1")
        self.bundle = bundle
        self.frames = frames
        self.threshold = bundle.threshold if threshold is None else threshold
        self.runner = EnsembleRunner(bundle, device=device)
        if detector is None:
            import torch

            use_cuda = device != "cpu" and torch.cuda.is_available()
            detector = FaceDetector(device="cuda" if use_cuda else "cpu")
        self.detector = detector

    def _frames(self, path: Path, kind: str) -> Iterator[Frame]:
        if kind == "image":
            yield Frame(index=0, time=None, image=load_image(path))
        else:
            yield from sample_video_frames(path, self.frames)

    def _analyse(self, frames: list[Frame]) -> list[FrameResult]:
        detections = self.detector.detect([frame.image for frame in frames])
        crops, owners = [], []
        for position, (frame, faces) in enumerate(zip(frames, detections)):
            for face in faces:
                crops.append(crop_face(frame.image, face.box, self.bundle.margin, self.bundle.input_size))
                owners.append((position, face))
        prediction = self.runner.predict(np.stack(crops) if crops else np.zeros((0, 1, 1, 3), np.uint8))
        results = [FrameResult(index=f.index, time=f.time, faces=[]) for f in frames]
        for row, (position, face) in enumerate(owners):
            results[position].faces.append(
                FaceResult(
                    box=tuple(round(v, 1) for v in face.box),
                    detection_probability=round(face.probability, 6),
                    score=float(prediction.ensemble[row]),
                    model_scores={name: float(s[row]) for name, s in prediction.per_model.items()},
                )
            )
        return results

    def scan_file(self, path: Path) -> FileResult:
        path = Path(path)
        kind = media_kind(path)
        result = FileResult(path=str(path), kind=kind, sha256=None, verdict="error", score=None, threshold=self.threshold)
        try:
            if not path.is_file():
                raise MediaError(f"{path}: no such file")
            result.sha256 = sha256_file(path)
            if kind is None:
                raise MediaError(f"{path}: unsupported file type '{path.suffix or '(none)'}'")
            frame_iter = self._frames(path, kind)
            while chunk := list(islice(frame_iter, self.detector.batch_size)):
                result.frames.extend(self._analyse(chunk))
        except MediaError as exc:
            result.error = str(exc)
            result.frames = []
            return result
        except Exception as exc:  # one broken file must not stop the batch
            result.error = f"{path}: unexpected {type(exc).__name__}: {exc}"
            result.frames = []
            return result
        result.frames_analyzed = len(result.frames)
        result.faces = max((len(frame.faces) for frame in result.frames), default=0)
        frame_scores = [frame.score for frame in result.frames if frame.score is not None]
        if not frame_scores:
            result.verdict = "no-face"
            return result
        result.score = float(np.mean(frame_scores))
        result.verdict = "fake" if result.score >= self.threshold else "real"
        return result
