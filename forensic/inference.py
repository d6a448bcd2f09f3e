"""Running a bundle's models in ONNX Runtime, on the GPU when it truly loads, else the CPU."""

from __future__ import annotations

import ctypes
import functools
from dataclasses import dataclass
from typing import Literal

import numpy as np
import onnxruntime as ort

from forensic.bundle import Bundle
from forensic.errors import BundleError, ForensicError

Device = Literal["auto", "cpu", "cuda"]
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def cuda_device_present() -> bool:
    """Whether the CUDA driver sees a device, asked without PyTorch: libcuda's cuInit and
    cuDeviceGetCount (False where there is no driver, as on a machine without an NVIDIA GPU)."""
    for name in ("libcuda.so.1", "nvcuda.dll"):
        try:
            driver = ctypes.CDLL(name)
        except OSError:
            continue
        count = ctypes.c_int(0)
        return driver.cuInit(0) == 0 and driver.cuDeviceGetCount(ctypes.byref(count)) == 0 and count.value > 0
    return False


@functools.cache
def cuda_usable() -> bool:
    """Whether ONNX Runtime can run on a GPU here. onnxruntime-gpu lists CUDA as available even
    where it cannot load it, and then logs an error and runs on the CPU; so the driver is asked
    for a device first, and only where there is one is PyTorch imported to decide (it also loads
    the CUDA libraries of its nvidia-* wheels, which ort.preload_dlls then finds). A machine
    without a GPU never imports PyTorch here."""
    if CUDA not in ort.get_available_providers() or not cuda_device_present():
        return False
    import torch

    return torch.cuda.is_available()


def session_options(threads: int = 0, spin: bool = True) -> ort.SessionOptions:
    """ONNX Runtime's options for forensic's sessions; `threads` intra-op threads (0: one per
    core, ONNX Runtime's default; a folder scanned by several processes gives each one). With
    `spin` False idle threads sleep instead of spinning: for MTCNN's many small runs, whose
    spinning threads made a single 720p frame's detection 3.5x slower on 2 busy cores
    (BENCHMARKS.md)."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if not spin:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def make_session(model_path: str, device: Device, threads: int = 0, spin: bool = True,
                 contents: bytes | None = None) -> ort.InferenceSession:
    """An ONNX Runtime session of `model_path`: on the CPU for "cpu", on the GPU for "cuda" (a
    ForensicError where CUDA cannot load), for "auto" on the GPU where one is usable. With
    `contents` (the file's bytes, read and hashed by the caller) the session is made from those
    bytes, so that what runs is what was hashed; `model_path` then only names it in errors."""
    options = session_options(threads, spin)
    model = model_path if contents is None else contents
    if device == "cpu" or (device == "auto" and not cuda_usable()):
        return ort.InferenceSession(model, options, providers=[CPU])
    # ONNX Runtime's own multi-line load errors would bury ours; the check below reports it.
    ort.set_default_logger_severity(3)
    if hasattr(ort, "preload_dlls"):
        # Loads the CUDA/cuDNN libraries that torch's nvidia-* wheels bring.
        ort.preload_dlls()
    # HEURISTIC: exhaustive cuDNN algorithm search costs seconds per new input shape.
    session = ort.InferenceSession(model, options, providers=[(CUDA, {"cudnn_conv_algo_search": "HEURISTIC"}), CPU])
    if session.get_providers()[0] != CUDA and device == "cuda":
        raise ForensicError(
            f"{model_path}: --device cuda was asked for but ONNX Runtime could not load "
            f"CUDAExecutionProvider (it would run on {session.get_providers()[0]})"
        )
    return session


@dataclass
class Prediction:
    """Probability of "fake" per input: the ensemble's and each model's; and the class
    activation map (N, h, w) of each model that exports one."""

    ensemble: np.ndarray
    per_model: dict[str, np.ndarray]
    cams: dict[str, np.ndarray]


class EnsembleRunner:
    """All models of a bundle, combined by the manifest's weights."""

    def __init__(self, bundle: Bundle, device: Device = "auto", batch_size: int = 32, threads: int = 0):
        self.bundle = bundle
        self.threads = threads
        self.batch_size = batch_size
        spec = bundle.manifest["input"]
        self._normalize_here = not spec["normalize_in_graph"]
        self._mean = np.asarray(spec["mean"], dtype=np.float32).reshape(1, 3, 1, 1)
        self._std = np.asarray(spec["std"], dtype=np.float32).reshape(1, 3, 1, 1)
        self._temperature = bundle.temperature
        self.mirror_average = bundle.mirror_average
        self._calibration = {entry.name: (entry.temperature, entry.bias) for entry in bundle.models}
        self.sessions: dict[str, ort.InferenceSession] = {}
        for entry in bundle.models:
            try:
                self.sessions[entry.name] = make_session(str(bundle.path / entry.file), device, threads)
            except ForensicError:
                raise
            except Exception as exc:  # onnxruntime raises its own exception types
                raise BundleError(f"{bundle.path / entry.file}: ONNX Runtime cannot load it ({exc})") from None
        weights = np.asarray([entry.weight for entry in bundle.models], dtype=np.float64)
        self._weights = weights / weights.sum()
        for entry in bundle.models:
            self._probe(entry.name, bundle.path / entry.file)

    def _probe(self, name: str, path) -> None:
        """Refuse at load a model that does not fit the manifest (a bundle error, exit 2): its
        input must be (N, 3, size, size) for the manifest's input.size, and one black crop of that
        size must give (1, 2) logits. A mismatch would otherwise make every file an error, one by
        one. (Non-finite scores are refused per face, in forensic.scan.)"""
        session = self.sessions[name]
        size = self.bundle.input_size
        declared = session.get_inputs()[0].shape
        if len(declared) != 4 or any(isinstance(have, int) and have != want for have, want in zip(declared[1:], (3, size, size))):
            raise BundleError(f"{path}: takes input of shape {declared}, but the manifest's input.size {size} "
                              f"means (N, 3, {size}, {size})")
        crop = self._model_input(np.zeros((1, 3, size, size), np.float32))
        quiet = ort.RunOptions()
        quiet.log_severity_level = 4  # the failure is reported below, in one line, not logged
        try:
            logits = np.asarray(session.run(None, {session.get_inputs()[0].name: crop}, quiet)[0])
        except Exception as exc:  # onnxruntime raises its own exception types
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise BundleError(f"{path}: fails on a crop of the manifest's input.size {size} ({first_line})") from None
        if logits.shape != (1, 2):
            raise BundleError(f"{path}: gives logits of shape {tuple(logits.shape)} for one crop; the manifest's "
                              f"class_order needs (1, 2)")

    @property
    def providers(self) -> list[str]:
        """The execution providers that actually run, one per model (deduplicated, in order)."""
        seen: list[str] = []
        for session in self.sessions.values():
            provider = session.get_providers()[0]
            if provider not in seen:
                seen.append(provider)
        return seen

    @staticmethod
    def to_pixels(crops: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 crops → (N, 3, H, W) float32 pixels in [0, 1]."""
        return np.ascontiguousarray(crops.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)

    def _model_input(self, pixels: np.ndarray) -> np.ndarray:
        """Pixels in [0, 1] as the models take them: normalised here unless the graph does it."""
        if not self._normalize_here:
            return pixels
        return np.ascontiguousarray((pixels - self._mean) / self._std, dtype=np.float32)

    def predict(self, crops: np.ndarray) -> Prediction:
        """`crops`: (N, size, size, 3) RGB uint8 face crops."""
        return self.predict_pixels(self.to_pixels(crops))

    def predict_pixels(self, pixels: np.ndarray) -> Prediction:
        """`pixels`: (N, 3, size, size) float32 in [0, 1]."""
        if len(pixels) == 0:
            empty = np.zeros((0,), dtype=np.float64)
            return Prediction(ensemble=empty, per_model={name: empty for name in self.sessions}, cams={})
        margins, cams = self._margins_and_cams(pixels, self.cam_models)
        scores = {name: self._probability(name, margin) for name, margin in margins.items()}
        ensemble = sum(w * scores[e.name] for w, e in zip(self._weights, self.bundle.models))
        return Prediction(ensemble=np.asarray(ensemble), per_model=scores, cams=cams)

    def margins(self, pixels: np.ndarray) -> dict[str, np.ndarray]:
        """Each model's uncalibrated fake − real logit margin, as its calibration takes it
        (`trainer calibrate` fits a bundle's calibration on these)."""
        return self._margins_and_cams(pixels, cam_models=())[0]

    def _margins_and_cams(self, pixels: np.ndarray, cam_models) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        """Every model's margin on `pixels`, batch by batch, and the CAMs of `cam_models`."""
        fake = self.bundle.fake_index
        margins: dict[str, list[np.ndarray]] = {name: [] for name in self.sessions}
        cams: dict[str, list[np.ndarray]] = {name: [] for name in cam_models}
        for start in range(0, len(pixels), self.batch_size):
            x = self._model_input(pixels[start : start + self.batch_size])
            for name in self.sessions:
                logits, cam = self._run(name, x, with_cam=name in cams)
                margins[name].append(logits[:, fake] - logits[:, 1 - fake])
                if cam is not None:
                    cams[name].append(cam)
        return ({name: np.concatenate(parts) if parts else np.zeros(0) for name, parts in margins.items()},
                {name: np.concatenate(parts) for name, parts in cams.items()})

    def _run(self, name: str, x: np.ndarray, with_cam: bool) -> tuple[np.ndarray, np.ndarray | None]:
        """One model's logits (N, 2) on model inputs `x`, and its CAM when asked: with
        mirror_average, the mean over the crops and their mirror images (each view its own run,
        so that a run's batch, and ONNX Runtime's memory, stays at batch_size; the mirrored CAM
        mirrored back, so that it lies on the crop as given)."""
        session = self.sessions[name]
        logits, cam = self._run_view(session, x, with_cam)
        if self.mirror_average:
            other_logits, other_cam = self._run_view(session, mirrored(x), with_cam)
            logits = (logits + other_logits) / 2
            cam = None if cam is None else (cam + other_cam[..., ::-1]) / 2
        return logits, cam

    @staticmethod
    def _run_view(session: ort.InferenceSession, x: np.ndarray, with_cam: bool) -> tuple[np.ndarray, np.ndarray | None]:
        outputs = session.run(None, {session.get_inputs()[0].name: x})
        return outputs[0].astype(np.float64), outputs[1] if with_cam else None

    @property
    def cam_models(self) -> list[str]:
        """Models whose graph has a second output, `cam` (class activation map)."""
        return [name for name, session in self.sessions.items()
                if [o.name for o in session.get_outputs()][1:2] == ["cam"]]

    def _probability(self, name: str, margin: np.ndarray) -> np.ndarray:
        """The member's calibrated P(fake) (softmax over two classes = sigmoid of the margin)."""
        temperature, bias = self._calibration[name]
        return member_probability(margin, temperature, bias, self._temperature)

    def model_weight(self, name: str) -> float:
        return float(self._weights[[e.name for e in self.bundle.models].index(name)])


def mirrored(x: np.ndarray) -> np.ndarray:
    """Images (or maps, or gradients) laid out (..., W) mirrored left-right."""
    return np.ascontiguousarray(x[..., ::-1])


def member_probability(margin: np.ndarray, temperature: float = 1.0, bias: float = 0.0,
                       bundle_temperature: float = 1.0) -> np.ndarray:
    """A bundle member's calibrated P(fake) from its fake − real logit margin, as the manifest
    defines it: sigmoid((margin / temperature + bias) / bundle_temperature). `trainer export`
    fits the parameters with this same function."""
    z = (margin / temperature + bias) / bundle_temperature
    return np.exp(-np.logaddexp(0.0, -z))  # sigmoid without overflow for large |z|
