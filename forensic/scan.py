"""Scanning one file: frames → faces → crops → ensemble scores → identities → one verdict.

Face → frame → identity → file: every face gets P(fake) from the bundle's ensemble; faces are
grouped into identities across frames; an identity's score aggregates its faces' scores (their
mean by default); a file is as fake as its most fake identity
(identities seen in too few frames to matter are reported but do not decide).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator, Literal

import numpy as np

from forensic import DEFAULT_AGGREGATION, DEFAULT_DETECT_EVERY, DEFAULT_FRAMES, Aggregation
from forensic.bundle import Bundle, sha256_file
from forensic.errors import ForensicError, MediaError
from forensic.faces import FaceDetector, crop_face
from forensic.heatmaps import combine, overlay, write_png
from forensic.identities import MIN_DECIDING_PROBABILITY, aggregate, group_identities, minimum_frames
from forensic.inference import Device, EnsembleRunner
from forensic.tracking import FaceFollower
from forensic.selftest import FRAGILE_EPSILON, GradientOracle, SelfTestSettings, attack, bisect_schedule
from forensic.inputs import check_input, media_kind
from forensic.media import Frame, load_image, sample_video_frames

Verdict = Literal["fake", "real", "uncertain", "no-face", "error"]


@dataclass
class FaceResult:
    box: tuple[float, float, float, float]
    detection_probability: float
    score: float
    model_scores: dict[str, float]
    identity: int = -1


@dataclass
class FrameResult:
    index: int
    time: float | None
    faces: list[FaceResult]
    detected: bool = True  # faces found by a full detection; False: followed from the previous frame

    @property
    def score(self) -> float | None:
        """A frame is as fake as its most fake face."""
        return max((face.score for face in self.faces), default=None)


@dataclass
class IdentityResult:
    identity: int
    frames: int  # frames the identity was seen in
    score: float
    counts: bool  # whether it decides the file's verdict: seen often enough, and surely a face
    first_box: tuple[float, float, float, float]
    model_scores: dict[str, float]  # each model's aggregated score for this identity
    most_fake_frame: int  # index of the frame where this identity's face scored highest
    most_fake_time: float | None
    heatmap: str | None = None  # PNG of that face with its class activation map, when asked for
    detection_probability: float | None = None  # median over its faces (None in reports older than it)


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
    identities: list[IdentityResult] = field(default_factory=list)
    frames: list[FrameResult] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    self_test: dict | None = None
    # Face crops (and their models' CAMs) kept for heatmaps, the self-test and reports, keyed
    # by (frame position, face index); once the file is decided, only each identity's most fake
    # face. Not part of the JSON report.
    crops: dict[tuple[int, int], tuple[np.ndarray, dict[str, np.ndarray]]] = field(default_factory=dict, repr=False)


def deciding_identities(identities: list[IdentityResult]) -> list[IdentityResult]:
    """Identities seen too rarely, or not surely faces, do not decide, unless no identity does."""
    return [identity for identity in identities if identity.counts] or identities


def why_not_deciding(identity: IdentityResult) -> str | None:
    """Why an identity does not decide the file's verdict, in a few words; None when it does."""
    if identity.counts:
        return None
    probability = identity.detection_probability
    if probability is not None and probability < MIN_DECIDING_PROBABILITY:
        return f"not surely a face: detection {probability:.2f}"
    return "too few frames"


def _file_state(path: Path) -> tuple[int, int, int, int]:
    """What changes when a file is rewritten, replaced or still being written."""
    stat = path.stat()
    return stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns


def verdict_for(score: float, threshold: float, uncertain_band: float) -> Verdict:
    """fake at or above the threshold, real below, uncertain within ±band of it."""
    if uncertain_band > 0 and abs(score - threshold) < uncertain_band:
        return "uncertain"
    return "fake" if score >= threshold else "real"


def identity_face_keys(result: FileResult) -> dict[int, tuple[int, int]]:
    """Each identity's most fake face, as a key of `result.crops`: (frame position, face index)."""
    keys = {}
    for identity in result.identities:
        for position, frame in enumerate(result.frames):
            if frame.index != identity.most_fake_frame:
                continue
            for index, face in enumerate(frame.faces):
                if face.identity == identity.identity:
                    keys[identity.identity] = (position, index)
    return keys


def keep_identity_crops(result: FileResult) -> None:
    """Drop all face crops but each identity's most fake one (a long video has hundreds)."""
    wanted = set(identity_face_keys(result).values())
    result.crops = {key: value for key, value in result.crops.items() if key in wanted}


class Scanner:
    """Holds the face detector and the bundle's models, and scans files one at a time."""

    def __init__(
        self,
        bundle: Bundle,
        device: Device = "auto",
        frames: int | None = DEFAULT_FRAMES,
        fps: float | None = None,
        threshold: float | None = None,
        uncertain_band: float | None = None,
        aggregation: Aggregation = DEFAULT_AGGREGATION,
        min_face: int = 40,
        heatmap_dir: Path | None = None,
        keep_crops: bool = False,
        self_test: SelfTestSettings | None = None,
        detector: FaceDetector | None = None,
        threads: int = 0,
        detect_every: int = DEFAULT_DETECT_EVERY,
    ):
        if fps is not None:
            frames = None
        if frames is not None and frames < 1:
            raise ValueError("frames must be at least 1")
        if fps is not None and fps <= 0:
            raise ValueError("fps must be positive")
        if detect_every < 1:
            raise ValueError("detect_every must be at least 1")
        self.bundle = bundle
        self.frames, self.fps, self.detect_every = frames, fps, detect_every
        self.threshold = bundle.threshold if threshold is None else threshold
        self.uncertain_band = bundle.uncertain_band if uncertain_band is None else uncertain_band
        self.aggregation = aggregation
        aggregate([0.5], aggregation)  # reject an unknown aggregation now, not per file
        self.runner = EnsembleRunner(bundle, device=device, threads=threads)
        self.heatmap_dir = Path(heatmap_dir) if heatmap_dir else None
        if self.heatmap_dir and not self.runner.cam_models:
            raise ForensicError(f"{bundle.path}: no model in this bundle has a class-activation-map output, "
                                f"so --heatmaps cannot be drawn")
        if self.heatmap_dir:
            try:  # now, not after the first file with a face
                self.heatmap_dir.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ForensicError(f"{self.heatmap_dir}: cannot make the heatmap folder ({exc.strerror or exc})") from None
        self.self_test = self_test
        self.keep_crops = keep_crops or self.heatmap_dir is not None or self_test is not None
        self.gradient_oracle: GradientOracle | None = None
        self.self_test_fallback: str | None = None
        if self_test is not None:
            try:
                self.gradient_oracle = GradientOracle(bundle, self.runner.providers, threads)
            except LookupError as missing:
                entry = next(e for e in bundle.models if e.name == str(missing.args[0]))
                self.self_test_fallback = (f"model {entry.name} has no gradient graph "
                                           f"({entry.gradient_graph_missing or 'not exported'}): SPSA instead of PGD")
        if detector is None:
            # MTCNN's networks run where the bundle's do: ONNX Runtime on the GPU for --device cuda
            # (a ForensicError where CUDA cannot load), for auto where one is usable, else the CPU.
            detector = FaceDetector(device=device, min_face_size=min_face, threads=threads)
        self.detector = detector

    def _frames(self, path: Path, kind: str, check: Callable[[], None] | None) -> Iterator[Frame]:
        if kind == "image":
            yield Frame(index=0, time=None, image=load_image(path))
            return
        for frame in sample_video_frames(path, self.frames, self.fps):
            if check:
                check()  # a long video decodes for a while before its first batch is analysed
            yield frame

    def _analyse(self, frames: list[Frame], follower: FaceFollower, timings: dict[str, float],
                 result: FileResult) -> list[FrameResult]:
        started = time.perf_counter()
        detections = follower.faces([frame.image for frame in frames])
        crops, owners = [], []
        for position, (frame, (faces, _)) in enumerate(zip(frames, detections)):
            for face in faces:
                crops.append(crop_face(frame.image, face.box, self.bundle.margin, self.bundle.input_size))
                owners.append((position, face))
        cropped = time.perf_counter()
        prediction = self.runner.predict(np.stack(crops) if crops else np.zeros((0, 1, 1, 3), np.uint8))
        if not np.all(np.isfinite(prediction.ensemble)):
            # NaN >= threshold is False: a broken model would otherwise call every face real.
            raise ForensicError(f"{result.path}: the bundle's models gave a non-finite score (NaN or infinity); "
                                f"no verdict")
        timings["detect"] += cropped - started
        timings["classify"] += time.perf_counter() - cropped
        results = [FrameResult(index=f.index, time=f.time, faces=[], detected=detected)
                   for f, (_, detected) in zip(frames, detections)]
        offset = len(result.frames)
        for row, (position, face) in enumerate(owners):
            if self.keep_crops:
                key = (offset + position, len(results[position].faces))
                result.crops[key] = (crops[row], {name: cam[row] for name, cam in prediction.cams.items()})
            results[position].faces.append(
                FaceResult(
                    box=tuple(round(v, 1) for v in face.box),
                    detection_probability=round(face.probability, 6),
                    score=float(prediction.ensemble[row]),
                    model_scores={name: float(s[row]) for name, s in prediction.per_model.items()},
                )
            )
        return results

    def _identities(self, result: FileResult) -> list[IdentityResult]:
        frames = result.frames
        tracks = group_identities([[face.box for face in frame.faces] for frame in frames])
        needed = minimum_frames(sum(1 for frame in frames if frame.faces))
        identities = []
        for track in tracks:
            faces = [frames[position].faces[index] for position, index in track.members]
            for face in faces:
                face.identity = track.identity
            model_names = faces[0].model_scores
            peak = max(range(len(faces)), key=lambda i: faces[i].score)
            probability = float(np.median([face.detection_probability for face in faces]))
            peak_frame = frames[track.members[peak][0]]
            identities.append(IdentityResult(
                identity=track.identity,
                frames=len(faces),
                score=aggregate([face.score for face in faces], self.aggregation),
                counts=len(faces) >= needed and probability >= MIN_DECIDING_PROBABILITY,
                first_box=faces[0].box,
                model_scores={name: aggregate([f.model_scores[name] for f in faces], self.aggregation)
                              for name in model_names},
                most_fake_frame=peak_frame.index,
                most_fake_time=peak_frame.time,
                detection_probability=round(probability, 6),
            ))
            if self.heatmap_dir is not None:
                identities[-1].heatmap = str(self._write_heatmap(result, track.identity, track.members[peak]))
        return identities

    def _write_heatmap(self, result: FileResult, identity: int, key: tuple[int, int]) -> Path:
        crop, cams = result.crops[key]
        weights = {name: self.runner.model_weight(name) for name in cams}
        cam = combine(cams, weights, crop.shape[0])
        # The stem is cut to 100 bytes: the file's hash prefix identifies it, and a long name
        # plus the suffix would pass the 255-byte limit of most file systems.
        stem = os.fsdecode(os.fsencode(Path(result.path).stem)[:100])
        target = self.heatmap_dir / f"{stem}_{result.sha256[:8]}_identity{identity}.png"
        try:
            return write_png(overlay(crop, cam), target)
        except OSError as exc:
            raise ForensicError(f"{target}: cannot write the heatmap ({exc.strerror or exc})") from None

    def scan_file(self, path: Path, on_frames: Callable[[int], None] | None = None,
                  check: Callable[[], None] | None = None) -> FileResult:
        """Scan one file; `on_frames(n)` is told how many frames are analysed so far. `check()`
        is called between small units of work (a MiB hashed, a decoded frame, a self-test step): it may raise
        an exception that is not an `Exception` (the TUI's ScanAborted) to abandon the file."""
        path = Path(path)
        kind = media_kind(path)
        result = FileResult(path=str(path), kind=kind, sha256=None, verdict="error", score=None, threshold=self.threshold)
        timings = {"hash": 0.0, "decode": 0.0, "detect": 0.0, "classify": 0.0}
        try:
            check_input(path)  # a regular file: never a FIFO, a device, a folder or a broken link
            started = time.perf_counter()
            # Chain of custody: the input's hash is taken before any analysis, and the file must
            # be the same one when the analysis ends (a file still being copied is not).
            before = _file_state(path)
            result.sha256 = sha256_file(path, check)
            timings["hash"] = time.perf_counter() - started
            if kind is None:
                raise MediaError(f"{path}: unsupported file type '{path.suffix or '(none)'}'")
            frame_iter = self._frames(path, kind, check)
            follower = FaceFollower(self.detector, self.detect_every)
            while True:
                started = time.perf_counter()
                chunk = list(islice(frame_iter, self.detector.batch_size))
                timings["decode"] += time.perf_counter() - started
                if not chunk:
                    break
                result.frames.extend(self._analyse(chunk, follower, timings, result))
                if on_frames:
                    on_frames(len(result.frames))
            if _file_state(path) != before:
                raise MediaError(f"{path}: changed while it was being scanned (size or modification time); "
                                 f"its hash may not be of what was analysed — scan it again once it is complete")
            result.timings = {k: round(v, 4) for k, v in timings.items()}
            return self._decide(result, check)
        except ForensicError as exc:
            return self._failed(result, str(exc), timings)
        except OSError as exc:  # the file system's refusal while reading it (an I/O error, permission)
            return self._failed(result, f"{path}: cannot be read ({exc.strerror or exc})", timings)
        except Exception as exc:  # one broken file must not stop the batch
            return self._failed(result, f"{path}: unexpected {type(exc).__name__}: {exc}", timings)

    def _decide(self, result: FileResult, check: Callable[[], None] | None = None) -> FileResult:
        """Identities, the file's score and verdict, heatmaps and the self-test, from its analysed frames."""
        result.frames_analyzed = len(result.frames)
        result.identities = self._identities(result)
        result.faces = len(result.identities)
        deciding = [identity.score for identity in deciding_identities(result.identities)]
        if not deciding:
            result.verdict = "no-face"
            return result
        result.score = max(deciding)
        result.verdict = verdict_for(result.score, self.threshold, self.uncertain_band)
        if self.self_test is not None:
            started = time.perf_counter()
            result.self_test = self._self_test(result, check)
            result.timings["self_test"] = round(time.perf_counter() - started, 4)
        # Heatmaps and the self-test are done with the other faces; reports show only these,
        # and a long video's crops and maps would otherwise fill memory over a batch.
        keep_identity_crops(result)
        return result

    def _file_score(self, result: FileResult, face_scores: dict[tuple[int, int], float]) -> float:
        """The file's score from given face scores, through the same identities and aggregation."""
        per_identity: dict[int, list[float]] = {}
        for (position, index), score in face_scores.items():
            per_identity.setdefault(result.frames[position].faces[index].identity, []).append(score)
        return max(aggregate(per_identity[identity.identity], self.aggregation)
                   for identity in deciding_identities(result.identities))

    def _self_test(self, result: FileResult, check: Callable[[], None] | None = None) -> dict:
        deciding = {identity.identity for identity in deciding_identities(result.identities)}
        keys = sorted(key for key in result.crops
                      if result.frames[key[0]].faces[key[1]].identity in deciding)
        pixels = self.runner.to_pixels(np.stack([result.crops[key][0] for key in keys]))
        fake_side = result.score >= self.threshold
        labels = np.full(len(keys), 1 if fake_side else 0, dtype=np.int64)
        epsilons = sorted(self.self_test.epsilons)
        trials = []

        def file_score(adversarial: np.ndarray) -> float:
            scores = self.runner.predict_pixels(adversarial).ensemble
            return self._file_score(result, dict(zip(keys, scores.tolist())))

        def flips(epsilon: float) -> bool:
            adversarial, steps = attack(self.runner, self.gradient_oracle, pixels, labels, epsilon, self.self_test,
                                        check, done=lambda x: (file_score(x) >= self.threshold) != fake_side)
            score = file_score(adversarial)
            flipped = (score >= self.threshold) != fake_side
            # Unrounded: an attack stopped at its first flip leaves the score just across the threshold.
            trials.append({"epsilon": epsilon, "score": score, "flipped": bool(flipped), "steps": steps,
                           "max_perturbation": float(np.abs(adversarial - pixels).max())})
            return flipped

        fragility = bisect_schedule(epsilons, flips)
        trials.sort(key=lambda trial: trial["epsilon"])
        return {"attack": "pgd" if self.gradient_oracle else "spsa", "fallback_reason": self.self_test_fallback,
                "steps": self.self_test.steps, "epsilons": epsilons, "search": "bisection",
                "towards": "real" if fake_side else "fake",
                "faces_attacked": len(keys), "trials": trials,
                "fragility": fragility, "fragile": fragility is not None and fragility <= FRAGILE_EPSILON + 1e-9}

    @staticmethod
    def _failed(result: FileResult, message: str, timings: dict[str, float]) -> FileResult:
        result.verdict, result.score, result.error = "error", None, message
        result.frames, result.identities, result.faces, result.frames_analyzed, result.self_test = [], [], 0, 0, None
        result.timings = {k: round(v, 4) for k, v in timings.items()}
        return result
