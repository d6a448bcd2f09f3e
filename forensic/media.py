"""Reading images and videos into RGB frames, and finding the media files under a path."""

from __future__ import annotations

import math
import os
import warnings
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path
from typing import Iterable, Iterator, Literal

import av
import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
# The plugins of IMAGE_FORMATS, registered here: Image.open(formats=...) only knows loaded ones.
from PIL import BmpImagePlugin, JpegImagePlugin, PngImagePlugin, TiffImagePlugin, WebPImagePlugin  # noqa: F401

from forensic.errors import MediaError

# Pillow refuses images over 2 x 89.5 megapixels as possible decompression bombs, which takes in
# the 200 MP photos of current phone cameras. This limit (about 750 MB as RGB) is checked from
# the header, before any pixel is decoded; Pillow's own check then sits at twice it.
MAX_IMAGE_PIXELS = 250_000_000
Image.MAX_IMAGE_PIXELS = MAX_IMAGE_PIXELS

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"})
VIDEO_SUFFIXES = frozenset({".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v"})
# The decoders a file may reach. Pillow and FFmpeg otherwise choose by content: a PostScript
# file named .jpg would run Ghostscript, a text file named .mp4 holding an ffconcat playlist
# would be read as the videos it lists (pixels its SHA-256 does not cover).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")  # JPEG opens phones' multi-picture (MPO) files too
VIDEO_DEMUXERS = {".mp4": "mov", ".mov": "mov", ".m4v": "mov", ".mkv": "matroska", ".webm": "matroska", ".avi": "avi"}

MediaKind = Literal["image", "video"]


@dataclass(frozen=True)
class Frame:
    """One decoded frame: RGB uint8 (H, W, 3), its index in the stream and its time in seconds."""

    index: int
    time: float | None
    image: np.ndarray


def media_kind(path: Path) -> MediaKind | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if suffix in VIDEO_SUFFIXES:
        return "video"
    return None


def _matches(path: Path, root: Path, patterns: Iterable[str]) -> bool:
    relative = path.relative_to(root).as_posix()
    return any(fnmatch(relative, pattern) or fnmatch(path.name, pattern) for pattern in patterns)


def collect_inputs(paths: Iterable[Path], include: Iterable[str] = (), exclude: Iterable[str] = ()) -> list[Path]:
    """Expand folders (recursively, sorted) into their image and video files, keeping those
    that match an `include` glob (all when none is given) and no `exclude` glob; globs match
    the path relative to the folder or the file name.

    Files named explicitly are always kept, whatever their type, so that a file the user asked
    for is reported (as an error if need be) rather than silently dropped. A file reached twice
    (named twice, or also inside a folder given) is scanned once, under its first name. A
    sub-folder that cannot be listed (no permission, a path over the system's length limit) is
    kept too, so its scan reports why (symlinked folders are not followed, as before).
    """
    include, exclude = tuple(include), tuple(exclude)
    found: list[Path] = []
    for path in paths:
        try:
            is_dir = path.is_dir()
        except OSError:  # unreadable or a name too long: reported as that file's error, not a crash
            is_dir = False
        if not is_dir:
            found.append(path)
            continue
        inside: list[Path] = []
        for folder, _, names in os.walk(path, onerror=lambda exc: inside.append(Path(exc.filename))):
            for name in names:
                p = Path(folder) / name
                try:
                    keep = p.is_file() and media_kind(p) is not None
                except OSError:
                    keep = True  # cannot be stat'ed: its scan says why
                if keep and (not include or _matches(p, path, include)) and not _matches(p, path, exclude):
                    inside.append(p)
        found.extend(sorted(inside))
    seen: set[str] = set()
    unique = []
    for path in found:
        try:
            key = os.path.realpath(path)
        except (OSError, ValueError):
            key = str(path)
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def read_path_list(lines: Iterable[str]) -> list[Path]:
    """Paths from a list file or stdin: one per line; blank lines and '#' comments skipped."""
    return [Path(line.strip()) for line in lines if line.strip() and not line.lstrip().startswith("#")]


def _to_rgb(image: Image.Image, path: Path) -> Image.Image:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit greyscale to 8 bits by the fixed full-range scale (65535 -> 255), as a viewer
        # shows it: the same picture saved at 8 or 16 bits is analysed alike (a per-image
        # stretch would brighten a dark image). Pillow reads some 16-bit files as 32-bit "I".
        array = np.asarray(image, dtype=np.int64)
        if array.min() < 0 or array.max() > 65535:
            raise MediaError(f"{path}: 32-bit integer pixels outside the 16-bit range are not supported")
        image = Image.fromarray((array / 257.0).round().astype(np.uint8))
    elif image.mode == "F":
        raise MediaError(f"{path}: floating-point pixels (mode F) are not supported; convert it to 8 or 16 bits")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        # Composite transparent pixels on white, as a viewer shows them.
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return image.convert("RGB")


def load_image(path: Path) -> np.ndarray:
    """Decode an image file into an RGB uint8 array, with its EXIF orientation applied."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # refused just below instead
            opened = Image.open(path, formats=IMAGE_FORMATS)
        with opened as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise MediaError(f"{path}: {image.width}x{image.height} is {image.width * image.height / 1e6:.0f} "
                                 f"megapixels; images over {MAX_IMAGE_PIXELS / 1e6:.0f} are refused (memory)")
            image = ImageOps.exif_transpose(image)
            return np.asarray(_to_rgb(image, path)).copy()
    except FileNotFoundError:
        raise MediaError(f"{path}: no such file") from None
    except Image.DecompressionBombError:
        raise MediaError(f"{path}: declares over {2 * MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; refused "
                         f"(a possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"{path}: cannot decode image ({exc})") from None


def _evenly_spaced(total: int, count: int) -> list[int]:
    if total <= count:
        return list(range(total))
    return sorted({int(round(i)) for i in np.linspace(0, total - 1, count)})


def open_video(path: Path) -> av.container.InputContainer:
    """Open a video with the demuxer its suffix names (mov/mp4, matroska/webm, avi) and the file
    protocol only: never a playlist, concat list, image sequence, URL or device, whatever the
    file holds or its name looks like. Raises MediaError."""
    demuxer = VIDEO_DEMUXERS.get(Path(path).suffix.lower())
    if demuxer is None:
        raise MediaError(f"{path}: not a video type forensic reads ({', '.join(sorted(VIDEO_DEMUXERS))})")
    try:
        # "file:" makes FFmpeg take the rest of the string as a path (a name like "http:x.mp4"
        # or "concat:a|b.mp4" would otherwise pick a protocol); the whitelist bars any other
        # protocol a demuxer might open on its own.
        container = av.open("file:" + os.path.abspath(path), format=demuxer,
                            options={"protocol_whitelist": "file"})
    except FileNotFoundError:
        raise MediaError(f"{path}: no such file") from None
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: cannot open video ({exc})") from None
    return container


def _check_frame_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise MediaError(f"{path}: {width}x{height} video frames are {width * height / 1e6:.0f} megapixels; frames "
                         f"over {MAX_IMAGE_PIXELS / 1e6:.0f} are refused (memory)")


def _count_video_frames(path: Path) -> int:
    """Count frames by demuxing packets (no decoding), for containers that do not say."""
    with open_video(path) as container:
        stream = container.streams.video[0]
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def sample_video_frames(path: Path, count: int | None = 32, fps: float | None = None) -> Iterator[Frame]:
    """Yield frames decoded as a stream (memory stays flat): `count` frames spread evenly over
    the video, or with `fps`, the first frame at or after every 1/fps seconds of presentation
    time (variable frame rate is handled by the timestamps, not the frame numbers)."""
    if (count is None) == (fps is None):
        raise ValueError("give exactly one of count and fps")
    container = open_video(path)
    with container:
        if not container.streams.video:
            raise MediaError(f"{path}: no video stream")
        stream = container.streams.video[0]
        _check_frame_size(path, stream.codec_context.width, stream.codec_context.height)  # before decoding
        stream.thread_type = "AUTO"
        if count is not None:
            # AVI headers count the empty chunks that stand for dropped frames, which decode
            # to nothing: trusting them left the last wanted frames unreached.
            header_count = 0 if "avi" in container.format.name.split(",") else stream.frames
            total = header_count or _count_video_frames(path)
            if total == 0:
                raise MediaError(f"{path}: video has no frames")
            wanted = _evenly_spaced(total, count)
            wanted_set, last = set(wanted), wanted[-1]
        next_time, yielded = 0.0, 0
        try:
            for index, frame in enumerate(container.decode(stream)):
                time = float(frame.time) if frame.time is not None else None
                if count is not None:
                    take = index in wanted_set
                else:
                    take = time is None or time >= next_time - 1e-6
                    if take and time is not None:
                        next_time = (math.floor(time * fps + 1e-6) + 1) / fps
                if take:
                    _check_frame_size(path, frame.width, frame.height)  # a stream may change size midway
                    yielded += 1
                    yield Frame(index=index, time=time, image=_display_image(frame))
                if count is not None and index >= last:
                    break
        except av.FFmpegError as exc:
            raise MediaError(f"{path}: cannot decode video ({exc})") from None
        if yielded == 0:
            raise MediaError(f"{path}: video has no decodable frames")


def _display_image(frame: av.VideoFrame) -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")
    # The display matrix gives the counter-clockwise rotation needed for display.
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    if quarter_turns:
        image = np.ascontiguousarray(np.rot90(image, k=quarter_turns))
    return image
