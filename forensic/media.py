"""Reading images and videos into RGB frames (which files are inputs: forensic.inputs)."""

from __future__ import annotations

import bisect
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

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

# The decoders a file may reach. Pillow and FFmpeg otherwise choose by content: a PostScript
# file named .jpg would run Ghostscript, a text file named .mp4 holding an ffconcat playlist
# would be read as the videos it lists (pixels its SHA-256 does not cover).
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")  # JPEG opens phones' multi-picture (MPO) files too
VIDEO_DEMUXERS = {".mp4": "mov", ".mov": "mov", ".m4v": "mov", ".mkv": "matroska", ".webm": "matroska", ".avi": "avi"}

@dataclass(frozen=True)
class Frame:
    """One decoded frame: RGB uint8 (H, W, 3), its index in the stream and its time in seconds."""

    index: int
    time: float | None
    image: np.ndarray


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
        # Pillow warns of what it finds wrong in a file ("Corrupt EXIF data") on stderr, lines that
        # are no error of the scan's: the file decodes or is refused below. The decompression
        # bomb warning is the megapixel check just below.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(path, formats=IMAGE_FORMATS) as image:
                if image.width * image.height > MAX_IMAGE_PIXELS:
                    raise MediaError(f"{path}: {image.width}x{image.height} is {image.width * image.height / 1e6:.0f} "
                                     f"megapixels; images over {MAX_IMAGE_PIXELS / 1e6:.0f} are refused (memory)")
                image = ImageOps.exif_transpose(image)
                return np.asarray(_to_rgb(image, path)).copy()
    except MediaError:
        raise
    except FileNotFoundError:
        raise MediaError(f"{path}: no such file") from None
    except Image.DecompressionBombError:
        raise MediaError(f"{path}: declares over {2 * MAX_IMAGE_PIXELS / 1e6:.0f} megapixels; refused "
                         f"(a possible decompression bomb)") from None
    except UnidentifiedImageError:
        raise MediaError(f"{path}: not an image in a supported format ({', '.join(IMAGE_FORMATS)})") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise MediaError(f"{path}: cannot decode image ({exc})") from None
    except Exception as exc:
        # Pillow's file parsers are Python: a malformed file can raise anything there (a TIFF
        # whose strip offset is a float: TypeError), and every such file is one that cannot be decoded.
        raise MediaError(f"{path}: cannot decode image ({type(exc).__name__}: {exc})") from None


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
        # metadata_errors: a tag that is not UTF-8 (it is the file's data) must not make the video unreadable.
        container = av.open("file:" + os.path.abspath(path), format=demuxer,
                            options={"protocol_whitelist": "file"}, metadata_errors="replace")
    except FileNotFoundError:
        raise MediaError(f"{path}: no such file") from None
    except (av.FFmpegError, OSError) as exc:
        raise MediaError(f"{path}: cannot open video ({exc})") from None
    return container


def _video_stream(path: Path, container: av.container.InputContainer):
    """The video stream every reader of the file takes: the first, if FFmpeg has a decoder for
    it (a stream of an unknown codec has no codec context). Raises MediaError."""
    if not container.streams.video:
        raise MediaError(f"{path}: no video stream")
    stream = container.streams.video[0]
    if stream.codec_context is None:
        raise MediaError(f"{path}: no decoder for its video stream's codec")
    return stream


def _check_frame_size(path: Path, width: int, height: int) -> None:
    if width * height > MAX_IMAGE_PIXELS:
        raise MediaError(f"{path}: {width}x{height} video frames are {width * height / 1e6:.0f} megapixels; frames "
                         f"over {MAX_IMAGE_PIXELS / 1e6:.0f} are refused (memory)")


@dataclass(frozen=True)
class _PacketIndex:
    """The stream's frames in presentation order, from its packets alone (no decoding)."""

    pts: list[int]  # each frame's presentation timestamp (stream time base), ascending
    keyframes: list[int]  # the keyframes' timestamps, ascending


def _index_packets(container: av.container.InputContainer, stream) -> _PacketIndex | None:
    """None when a packet has no timestamp (the frames cannot be found by seeking)."""
    pts, keyframes = [], []
    for packet in container.demux(stream):
        # Empty packets (an AVI's dropped frames) and those an edit list discards decode to nothing.
        if packet.size == 0 or packet.is_discard:
            continue
        if packet.pts is None:
            return None
        pts.append(packet.pts)
        if packet.is_keyframe:
            keyframes.append(packet.pts)
    pts.sort()
    keyframes.sort()
    if not keyframes or (pts and keyframes[0] > pts[0]):
        return None  # frames before the first keyframe could only be reached by decoding from the start
    return _PacketIndex(pts, keyframes)


def _wanted_indices(times: list[float | None], count: int | None, fps: float | None) -> list[int]:
    """Frame positions to take: `count` evenly spread, or the first at or after every 1/fps s."""
    if count is not None:
        return _evenly_spaced(len(times), count)
    wanted, next_time = [], 0.0
    for index, time in enumerate(times):
        if time is None or time >= next_time - 1e-6:
            wanted.append(index)
            if time is not None:
                next_time = (math.floor(time * fps + 1e-6) + 1) / fps
    return wanted


class _SeekFailed(Exception):
    """The decoded frames do not match the packet index: decode sequentially instead."""


def _seek_decode(path: Path, container, stream, index: _PacketIndex, wanted: list[int], stats: dict) -> Iterator[Frame]:
    """The wanted frames, jumping to the keyframe before a target when the target's group of
    pictures starts after the frame last decoded, else decoding forward. Raises _SeekFailed
    (before or between yields) when a target's frame does not come out where the index says."""
    decoded = None  # the decoder's frame iterator from the last seek
    position = None  # pts of the last frame decoded
    for target_index in wanted:
        target = index.pts[target_index]
        keyframe = index.keyframes[bisect.bisect_right(index.keyframes, target) - 1]
        if decoded is None or position is None or keyframe > position:
            container.seek(keyframe, backward=True, any_frame=False, stream=stream)
            decoded = container.decode(stream)
            position = None
            stats["seeks"] += 1
        for frame in decoded:
            stats["decoded"] += 1
            if frame.pts is None:
                raise _SeekFailed
            position = frame.pts
            if frame.pts == target:
                _check_frame_size(path, frame.width, frame.height)  # a stream may change size midway
                yield Frame(index=target_index, time=float(frame.time), image=_display_image(frame))
                break
            if frame.pts > target:
                raise _SeekFailed
        else:
            raise _SeekFailed


def _sequential_decode(path: Path, container, stream, wanted: list[int] | None, fps: float | None,
                       after: int, stats: dict) -> Iterator[Frame]:
    """Decode from the start, taking the frames at `wanted` positions (or, with `fps`, by time);
    positions up to `after` were yielded already."""
    wanted_set = set(wanted) if wanted is not None else None
    last = wanted[-1] if wanted else None
    next_time = 0.0
    for index, frame in enumerate(container.decode(stream)):
        stats["decoded"] += 1
        time = float(frame.time) if frame.time is not None else None
        if wanted_set is not None:
            take = index in wanted_set
        else:
            take = time is None or time >= next_time - 1e-6
            if take and time is not None:
                next_time = (math.floor(time * fps + 1e-6) + 1) / fps
        if take and index > after:
            _check_frame_size(path, frame.width, frame.height)
            yield Frame(index=index, time=time, image=_display_image(frame))
        if last is not None and index >= last:
            break


def sample_video_frames(path: Path, count: int | None = 32, fps: float | None = None,
                        seek: bool = True, stats: dict | None = None) -> Iterator[Frame]:
    """Yield frames (memory stays flat): `count` frames spread evenly over the video, or with
    `fps`, the first frame at or after every 1/fps seconds of presentation time (variable frame
    rate is handled by the timestamps, not the frame numbers).

    The frames are found in an index of the stream's packets (read without decoding), then
    reached by seeking to the keyframe before each and decoding forward, so a long video is not
    decoded whole to reach 32 frames. Where the packets carry no timestamps or the decoded frames
    do not match the index, and with `seek=False`, the video is decoded from the start instead:
    the same frames either way (tested). `stats`, when given, receives how: method ("seek" or
    "sequential"), seeks, and frames decoded."""
    if (count is None) == (fps is None):
        raise ValueError("give exactly one of count and fps")
    stats = stats if stats is not None else {}
    stats.update(method="seek" if seek else "sequential", seeks=0, decoded=0)
    yielded = -1
    try:
        with open_video(path) as container:
            stream = _video_stream(path, container)
            _check_frame_size(path, stream.codec_context.width, stream.codec_context.height)  # before decoding
            stream.thread_type = "AUTO"
            index = _index_packets(container, stream)
            wanted = None  # without an index: positions in decoding order (below)
            if index is not None:
                if not index.pts:
                    raise MediaError(f"{path}: video has no frames")
                wanted = _wanted_indices([float(pts * stream.time_base) for pts in index.pts], count, fps)
                if seek:
                    try:
                        for frame in _seek_decode(path, container, stream, index, wanted, stats):
                            yielded = frame.index
                            yield frame
                        return
                    except _SeekFailed:
                        stats["method"] = "sequential after a failed seek"
        if index is None:
            stats["method"] = "sequential (no packet timestamps)"
        if wanted is None and count is not None:
            total = _count_video_frames(path)
            if total == 0:
                raise MediaError(f"{path}: video has no frames")
            wanted = _evenly_spaced(total, count)
        with open_video(path) as container:
            stream = _video_stream(path, container)
            stream.thread_type = "AUTO"
            for frame in _sequential_decode(path, container, stream, wanted, fps if wanted is None else None, yielded,
                                           stats):
                yielded = frame.index
                yield frame
    except av.FFmpegError as exc:
        raise MediaError(f"{path}: cannot decode video ({exc})") from None
    if yielded < 0:
        raise MediaError(f"{path}: video has no decodable frames")


def _count_video_frames(path: Path) -> int:
    """Count frames by demuxing packets (no decoding)."""
    with open_video(path) as container:
        stream = _video_stream(path, container)
        return sum(1 for packet in container.demux(stream) if packet.size > 0)


def _display_image(frame: av.VideoFrame) -> np.ndarray:
    image = frame.to_ndarray(format="rgb24")
    # The display matrix gives the counter-clockwise rotation needed for display.
    quarter_turns = round((frame.rotation or 0) / 90) % 4
    if quarter_turns:
        image = np.ascontiguousarray(np.rot90(image, k=quarter_turns))
    return image
