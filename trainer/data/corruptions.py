"""Common image corruptions for robustness evaluation (`trainer eval`), deterministic under a seed.

Each corruption maps a batch of RGB crops, uint8 (N, H, W, 3), to a corrupted batch of the same
shape and dtype. `trainer eval` applies them to the crops as the model sees them (already
resized to the model's input size), one batch at a time:

    gaussian_noise sigma=0.05   additive N(0, 0.05²) in [0, 1] pixel units, clipped, rounded
    gaussian_blur sigma=1.5     OpenCV Gaussian blur (kernel from sigma, reflected border)
    jpeg q=90/70/50/30          OpenCV JPEG encode/decode (4:2:0 chroma, as libjpeg's default)
    downscale x0.5              area downscale to half size, then bilinear back up
    h264 crf=23/35              PyAV's libx264: the batch's crops are encoded as the frames of
                                one short clip (yuv420p, preset medium, 1 thread) and decoded back.
                                This is per-crop re-encoding of the *crops* (motion between
                                unrelated crops is not video motion), not a re-encode of the
                                original video the crops came from.

`reencode_video` is the whole-video form: a video file re-encoded end to end with libx264 at a CRF,
as an upload platform re-encodes it (scripts/video_compression.py scans both versions).

Only Gaussian noise draws random numbers (from `numpy.random.default_rng(seed)`); the others
are deterministic functions of their input (x264 with one thread is deterministic).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np


@dataclass(frozen=True)
class Corruption:
    name: str
    apply: Callable[[np.ndarray, int], np.ndarray]  # (images uint8 NHWC, seed) -> same shape


def _check(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
    return images


def gaussian_noise(images: np.ndarray, seed: int = 0, sigma: float = 0.05) -> np.ndarray:
    images = _check(images)
    rng = np.random.default_rng(seed)
    noisy = images.astype(np.float32) / 255.0 + rng.normal(0.0, sigma, size=images.shape).astype(np.float32)
    return (np.clip(noisy, 0.0, 1.0) * 255.0).round().astype(np.uint8)


def gaussian_blur(images: np.ndarray, seed: int = 0, sigma: float = 1.5) -> np.ndarray:
    images = _check(images)
    return np.stack([cv2.GaussianBlur(image, (0, 0), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
                     for image in images])


def jpeg(images: np.ndarray, seed: int = 0, quality: int = 75) -> np.ndarray:
    images = _check(images)
    out = []
    for image in images:
        ok, encoded = cv2.imencode(".jpg", np.ascontiguousarray(image[..., ::-1]), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
        if not ok:
            raise RuntimeError("OpenCV could not JPEG-encode a crop")
        out.append(cv2.imdecode(encoded, cv2.IMREAD_COLOR)[..., ::-1])
    return np.ascontiguousarray(np.stack(out))


def downscale(images: np.ndarray, seed: int = 0, factor: float = 0.5) -> np.ndarray:
    images = _check(images)
    h, w = images.shape[1:3]
    small = (max(1, round(w * factor)), max(1, round(h * factor)))
    return np.stack([cv2.resize(cv2.resize(image, small, interpolation=cv2.INTER_AREA), (w, h),
                                interpolation=cv2.INTER_LINEAR) for image in images])


WIDTH_MULTIPLE = 128


def h264(images: np.ndarray, seed: int = 0, crf: int = 23, fps: int = 25) -> np.ndarray:
    """Encode the crops as consecutive frames of one H.264 clip (libx264, yuv420p) and decode
    them back. The sides are padded by edge replication (the height to even, for 4:2:0; the width
    to a multiple of 128) and cropped afterwards."""
    import av  # here, not at the top: training without H.264 augmentation needs no PyAV

    images = _check(images)
    n, h, w = images.shape[:3]
    # At other widths this machine's libx264 (PyAV's wheel) gives different bits from call to call in
    # one process (224 px: 9 distinct clips of 10 encodes of the same crops), so the figures of a
    # corrupted evaluation were not reproducible; at multiples of 128 it gives the same clip each time.
    ph, pw = h + h % 2, -(-w // WIDTH_MULTIPLE) * WIDTH_MULTIPLE
    padded = np.pad(images, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), mode="edge") if (ph, pw) != (h, w) else images
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        write_h264(container, padded, pw, ph, fps, {"crf": str(int(crf)), "preset": "medium", "threads": "1"})
    buffer.seek(0)
    with av.open(buffer, mode="r") as container:
        frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)]
    if len(frames) != n:
        raise RuntimeError(f"H.264 round trip returned {len(frames)} frames for {n} crops")
    return np.ascontiguousarray(np.stack(frames)[:, :h, :w])


def reencode_video(source: Path, target: Path, crf: int) -> int:
    """Re-encode every frame of `source` with libx264 at `crf` (yuv420p, preset medium, the source's frame rate)
    into the new file `target` (an MP4 of the video stream only); returns the number of frames. Odd sides lose
    their last pixel row or column (4:2:0 needs even sides). x264 runs with its own threads, so two runs need
    not give the same bits: keep the copy to rescan it. Written beside `target` and renamed, so a killed run
    leaves no half file."""
    partial = target.with_name(target.name + ".partial.mp4")
    try:
        frames = _reencode(source, partial, crf)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    partial.replace(target)
    return frames


def _reencode(source: Path, partial: Path, crf: int) -> int:
    import av  # here, not at the top: training without H.264 augmentation needs no PyAV

    with av.open(str(source)) as reader, av.open(str(partial), mode="w") as writer:
        video = reader.streams.video[0]
        width, height = video.codec_context.width // 2 * 2, video.codec_context.height // 2 * 2
        images = (frame.to_ndarray(format="rgb24")[:height, :width] for frame in reader.decode(video=0))
        return write_h264(writer, images, width, height, video.average_rate or 25,
                           {"crf": str(int(crf)), "preset": "medium"})


def write_h264(container, images: Iterable[np.ndarray], width: int, height: int, rate, options: dict[str, str]) -> int:
    """Encode RGB uint8 images as one libx264 (yuv420p) stream of `container`; returns how many."""
    import av

    stream = container.add_stream("libx264", rate=rate)
    stream.width, stream.height = width, height
    stream.pix_fmt = "yuv420p"
    stream.options = options
    count = 0
    for image in images:
        for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")):
            container.mux(packet)
        count += 1
    for packet in stream.encode():
        container.mux(packet)
    return count


DEFAULT_CORRUPTIONS: tuple[Corruption, ...] = (
    Corruption("gaussian_noise sigma=0.05", lambda x, s: gaussian_noise(x, s, 0.05)),
    Corruption("gaussian_blur sigma=1.5", lambda x, s: gaussian_blur(x, s, 1.5)),
    *(Corruption(f"jpeg q={q}", lambda x, s, q=q: jpeg(x, s, q)) for q in (90, 70, 50, 30)),
    Corruption("downscale x0.5", lambda x, s: downscale(x, s, 0.5)),
    *(Corruption(f"h264 crf={c}", lambda x, s, c=c: h264(x, s, c)) for c in (23, 35)),
)


def select_corruptions(names: Iterable[str]) -> tuple[Corruption, ...]:
    """The default corruptions named (as the report labels them, e.g. 'h264 crf=35'), in the
    report's order; an unknown name is a ValueError that lists the known ones."""
    known = {corruption.name: corruption for corruption in DEFAULT_CORRUPTIONS}
    wanted = set(names)
    unknown = sorted(wanted - known.keys())
    if unknown:
        raise ValueError(f"unknown corruption {', '.join(map(repr, unknown))}; known: {', '.join(map(repr, known))}")
    return tuple(corruption for corruption in DEFAULT_CORRUPTIONS if corruption.name in wanted)
