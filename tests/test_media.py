"""forensic.inputs and forensic.media: finding inputs, decoding images (EXIF, modes, bit depths) and sampling video frames."""

from __future__ import annotations

import wave
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from forensic.errors import MediaError
from forensic.inputs import collect_inputs, media_kind
from forensic.media import load_image, sample_video_frames
from trainer.data.synthetic import write_video


def _touch(path: Path, data: bytes = b"x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------------------------
# collect_inputs


def test_collect_inputs_expands_folders_recursively_and_sorted(tmp_path):
    root = tmp_path / "in"
    files = [
        _touch(root / "b.jpg"),
        _touch(root / "a.PNG"),  # suffixes are matched case-insensitively
        _touch(root / "sub" / "deeper" / "clip.mp4"),
        _touch(root / "sub" / "c.webp"),
        _touch(root / "z.mkv"),
    ]
    _touch(root / "notes.txt")
    _touch(root / "sub" / "model.onnx")
    _touch(root / "README")

    found = collect_inputs([root])

    assert found == sorted(files)
    assert all(p.is_file() for p in found)


def test_collect_inputs_keeps_explicit_files_and_missing_paths_in_order(tmp_path):
    folder = tmp_path / "folder"
    inside = _touch(folder / "x.jpg")
    _touch(folder / "skip.txt")
    explicit_txt = _touch(tmp_path / "explicit.txt")
    missing = tmp_path / "does_not_exist.jpg"

    found = collect_inputs([explicit_txt, folder, missing])

    # The explicitly named .txt file and the missing path are kept (to be reported), in the
    # order given; the .txt inside the folder is skipped.
    assert found == [explicit_txt, inside, missing]


def test_collect_inputs_empty_folder_gives_nothing(tmp_path):
    (tmp_path / "empty").mkdir()
    assert collect_inputs([tmp_path / "empty"]) == []


def test_media_kind():
    assert media_kind(Path("a.JPEG")) == "image"
    assert media_kind(Path("a.tif")) == "image"
    assert media_kind(Path("a.MOV")) == "video"
    assert media_kind(Path("a.webm")) == "video"
    assert media_kind(Path("a.txt")) is None
    assert media_kind(Path("noext")) is None


# --------------------------------------------------------------------------------------------
# load_image


def _marked_image(height: int = 40, width: int = 80) -> np.ndarray:
    """Grey image with a red block in the top-left corner (big, so JPEG keeps it)."""
    image = np.full((height, width, 3), 128, np.uint8)
    image[:16, :16] = (255, 0, 0)
    return image


def _save_jpeg_with_orientation(path: Path, image: np.ndarray, orientation: int) -> None:
    pil = Image.fromarray(image)
    exif = Image.Exif()
    exif[0x0112] = orientation  # Orientation
    pil.save(path, quality=95, exif=exif)


def _is_red(pixel) -> bool:
    r, g, b = (int(v) for v in pixel)
    return r > 200 and g < 60 and b < 60


def test_load_image_plain_jpeg_keeps_shape(tmp_path):
    path = tmp_path / "plain.jpg"
    Image.fromarray(_marked_image()).save(path, quality=95)
    image = load_image(path)
    assert image.shape == (40, 80, 3)
    assert image.dtype == np.uint8
    assert _is_red(image[4, 4])


def test_load_image_applies_exif_orientation_6(tmp_path):
    # Orientation 6: the stored pixels must be rotated 90° clockwise for display, so the
    # stored top-left corner ends up top-right.
    path = tmp_path / "rot6.jpg"
    _save_jpeg_with_orientation(path, _marked_image(), 6)
    image = load_image(path)
    assert image.shape == (80, 40, 3)
    assert _is_red(image[4, 40 - 5])
    assert not _is_red(image[4, 4])
    assert not _is_red(image[80 - 5, 4])


def test_load_image_applies_exif_orientation_8(tmp_path):
    # Orientation 8: rotated 90° counter-clockwise for display: top-left goes bottom-left.
    path = tmp_path / "rot8.jpg"
    _save_jpeg_with_orientation(path, _marked_image(), 8)
    image = load_image(path)
    assert image.shape == (80, 40, 3)
    assert _is_red(image[80 - 5, 4])
    assert not _is_red(image[4, 4])


def test_load_image_grayscale_L(tmp_path):
    grey = np.tile(np.arange(0, 250, 10, dtype=np.uint8), (6, 1))  # (6, 25)
    path = tmp_path / "grey.png"
    Image.fromarray(grey, mode="L").save(path)
    image = load_image(path)
    assert image.shape == (6, 25, 3)
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], grey)


def test_load_image_palette_P(tmp_path):
    palette = [255, 0, 0, 0, 255, 0, 0, 0, 255] + [0] * (256 * 3 - 9)
    indices = np.array([[0, 1, 2], [2, 1, 0]], np.uint8)
    pil = Image.fromarray(indices, mode="P")
    pil.putpalette(palette)
    path = tmp_path / "palette.png"
    pil.save(path)
    assert Image.open(path).mode == "P"
    image = load_image(path)
    expected = np.array([[(255, 0, 0), (0, 255, 0), (0, 0, 255)], [(0, 0, 255), (0, 255, 0), (255, 0, 0)]], np.uint8)
    np.testing.assert_array_equal(image, expected)


def test_load_image_palette_with_transparency_is_composited_on_white(tmp_path):
    palette = [10, 20, 30, 200, 100, 50] + [0] * (256 * 3 - 6)
    indices = np.array([[0, 1], [1, 0]], np.uint8)
    pil = Image.fromarray(indices, mode="P")
    pil.putpalette(palette)
    path = tmp_path / "palette_transparent.png"
    pil.save(path, transparency=0)  # palette index 0 is fully transparent
    image = load_image(path)
    assert tuple(image[0, 0]) == (255, 255, 255)
    assert tuple(image[1, 1]) == (255, 255, 255)
    assert tuple(image[0, 1]) == (200, 100, 50)


def test_load_image_rgba_is_composited_on_white(tmp_path):
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (0, 0, 0, 0)  # fully transparent black -> white
    rgba[0, 1] = (255, 0, 0, 255)  # opaque red stays red
    rgba[0, 2] = (0, 0, 0, 128)  # half-transparent black -> mid grey
    rgba[1, :] = (0, 0, 255, 0)  # fully transparent blue -> white
    path = tmp_path / "rgba.png"
    Image.fromarray(rgba, mode="RGBA").save(path)
    image = load_image(path)
    assert image.shape == (2, 3, 3)
    assert tuple(image[0, 0]) == (255, 255, 255)
    assert tuple(image[0, 1]) == (255, 0, 0)
    assert all(120 <= v <= 135 for v in image[0, 2])
    assert (image[1] == 255).all()


def test_load_image_la_is_composited_on_white(tmp_path):
    la = np.zeros((1, 2, 2), np.uint8)
    la[0, 0] = (0, 0)  # transparent black
    la[0, 1] = (50, 255)  # opaque dark grey
    path = tmp_path / "la.png"
    Image.fromarray(la, mode="LA").save(path)
    image = load_image(path)
    assert tuple(image[0, 0]) == (255, 255, 255)
    assert tuple(image[0, 1]) == (50, 50, 50)


def test_load_image_16bit_png_is_scaled_by_the_full_range_not_clipped_or_stretched(tmp_path):
    values = np.array([[0, 1000, 2000, 4000, 65535]], np.uint16)
    path = tmp_path / "deep.png"
    Image.fromarray(values).save(path)
    assert Image.open(path).mode.startswith("I")
    image = load_image(path)
    assert image.shape == (1, 5, 3)
    # 65535 -> 255 for every image: clipping would make all non-zero values 255, and a
    # per-image stretch would brighten this dark picture (4000 -> 255).
    np.testing.assert_array_equal(image[0, :, 0], [0, 4, 8, 16, 255])
    assert (image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all()


def test_load_image_float_pixels_are_refused_naming_the_file(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((4, 4), 0.5, np.float32)).save(path)
    with pytest.raises(MediaError, match=r"float.tif: floating-point pixels \(mode F\) are not supported"):
        load_image(path)


def test_load_image_all_black_16bit_does_not_divide_by_zero(tmp_path):
    path = tmp_path / "black16.png"
    Image.fromarray(np.zeros((3, 3), np.uint16)).save(path)
    image = load_image(path)
    assert image.shape == (3, 3, 3)
    assert (image == 0).all()


def test_load_image_junk_bytes_raise_media_error_naming_the_file(tmp_path):
    path = tmp_path / "junk.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 definitely not a JPEG" + bytes(range(256)))
    with pytest.raises(MediaError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_load_image_truncated_png_raises_media_error(tmp_path):
    good = tmp_path / "good.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    path = tmp_path / "truncated.png"
    path.write_bytes(good.read_bytes()[:400])
    with pytest.raises(MediaError) as info:
        load_image(path)
    assert str(path) in str(info.value)


def _png_header_only(path: Path, width: int, height: int) -> Path:
    """A PNG that declares its size and holds no pixels: enough for the header checks."""
    import struct
    import zlib

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IEND", b""))
    return path


@pytest.mark.parametrize("width, height, problem", [
    (20000, 15000, "20000x15000 is 300 megapixels; images over 250 are refused"),  # over ours
    (40000, 30000, "declares over 500 megapixels"),  # over Pillow's bomb limit, twice ours
])
def test_load_image_refuses_huge_images_from_their_header_in_one_line(tmp_path, width, height, problem):
    # A 200 MP phone photo (16320 x 12240) is under the limit; Pillow alone refused it ("unexpected
    # DecompressionBombError").
    path = _png_header_only(tmp_path / "huge.png", width, height)
    with pytest.raises(MediaError, match=problem) as info:
        load_image(path)
    assert str(info.value).startswith(str(path))


def test_load_image_missing_file_raises_media_error(tmp_path):
    path = tmp_path / "missing.png"
    with pytest.raises(MediaError) as info:
        load_image(path)
    assert str(path) in str(info.value)
    assert "no such file" in str(info.value)


# --------------------------------------------------------------------------------------------
# sample_video_frames

FRAME_COUNT = 25


def _level(index: int) -> int:
    return 10 + 9 * index  # 10 .. 226: distinct, well apart, inside the video's limited range


def _frame_number(image: np.ndarray) -> int:
    return int(round((float(image.mean()) - 10) / 9))


@pytest.fixture(scope="module")
def grey_video(tmp_path_factory) -> Path:
    """25 frames of 64x48, frame i a flat grey of level 10 + 9 i."""
    path = tmp_path_factory.mktemp("video") / "levels.mp4"
    frames = [np.full((48, 64, 3), _level(i), np.uint8) for i in range(FRAME_COUNT)]
    write_video(path, frames, fps=10)
    return path


def test_video_frames_are_decoded_as_written(grey_video):
    frames = list(sample_video_frames(grey_video, FRAME_COUNT))
    assert [f.index for f in frames] == list(range(FRAME_COUNT))
    for frame in frames:
        assert frame.image.shape == (48, 64, 3)
        assert frame.image.dtype == np.uint8
        assert _frame_number(frame.image) == frame.index


def test_video_five_frames_are_evenly_spaced(grey_video):
    frames = list(sample_video_frames(grey_video, 5))
    assert [f.index for f in frames] == [0, 6, 12, 18, 24]
    # The frame returned for each index really is that frame.
    assert [_frame_number(f.image) for f in frames] == [0, 6, 12, 18, 24]
    times = [f.time for f in frames]
    assert all(t is not None for t in times)
    assert all(a < b for a, b in zip(times, times[1:]))
    assert times[0] == pytest.approx(0.0, abs=1e-6)
    assert times[-1] == pytest.approx(2.4, abs=0.05)  # frame 24 at 10 fps


def test_video_more_frames_than_exist_gives_all_frames(grey_video):
    frames = list(sample_video_frames(grey_video, 100))
    assert [f.index for f in frames] == list(range(FRAME_COUNT))
    assert [_frame_number(f.image) for f in frames] == list(range(FRAME_COUNT))


def test_video_one_frame_gives_the_first(grey_video):
    frames = list(sample_video_frames(grey_video, 1))
    assert [f.index for f in frames] == [0]


def test_avi_with_dropped_frames_is_sampled_over_all_its_frames(tmp_path):
    # 25 frames, one every 5 ticks of a 50 fps AVI: its header counts 121 frames, the empty
    # chunks of dropped ones included, and sampling by that count reached only the first few.
    from fractions import Fraction

    import av

    path = tmp_path / "dropped.avi"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mjpeg", rate=50)
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuvj420p"
        stream.codec_context.time_base = Fraction(1, 50)
        for i in range(FRAME_COUNT):
            frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), _level(i), np.uint8), format="rgb24")
            frame.pts, frame.time_base = i * 5, Fraction(1, 50)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with av.open(str(path)) as container:
        assert container.streams.video[0].frames > FRAME_COUNT  # what the header says
    frames = list(sample_video_frames(path, 5))
    assert [f.index for f in frames] == [0, 6, 12, 18, 24]
    assert [_frame_number(f.image) for f in frames] == [0, 6, 12, 18, 24]


def test_video_in_container_without_frame_count(tmp_path):
    # Matroska does not store a frame count, so the frames are counted by demuxing.
    path = tmp_path / "levels.mkv"
    write_video(path, [np.full((48, 64, 3), _level(i), np.uint8) for i in range(FRAME_COUNT)], fps=10)
    frames = list(sample_video_frames(path, 5))
    assert [f.index for f in frames] == [0, 6, 12, 18, 24]
    assert [_frame_number(f.image) for f in frames] == [0, 6, 12, 18, 24]


def test_video_junk_file_raises_media_error(tmp_path):
    path = tmp_path / "junk.mp4"
    path.write_bytes(b"this is not a video at all " * 40)
    with pytest.raises(MediaError) as info:
        list(sample_video_frames(path, 5))
    assert str(path) in str(info.value)


def test_video_audio_only_file_raises_media_error(tmp_path):
    path = tmp_path / "tone.wav"
    with wave.open(str(path), "wb") as handle:
        handle.setnchannels(1)
        handle.setsampwidth(2)
        handle.setframerate(8000)
        handle.writeframes((np.sin(np.arange(8000) / 10) * 10000).astype("<i2").tobytes())
    with pytest.raises(MediaError, match="not a video type"):  # a .wav never reaches a demuxer
        list(sample_video_frames(path, 5))
    audio_only = tmp_path / "tone.mkv"
    with av.open(str(audio_only), mode="w", format="matroska") as container:
        stream = container.add_stream("pcm_s16le", rate=8000, layout="mono")
        samples = (np.sin(np.arange(8000) / 10) * 10000).astype("<i2").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(samples, format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode()]:
            container.mux(packet)
    with pytest.raises(MediaError, match="no video stream"):
        list(sample_video_frames(audio_only, 5))


def test_video_missing_file_raises_media_error(tmp_path):
    path = tmp_path / "missing.mp4"
    with pytest.raises(MediaError) as info:
        list(sample_video_frames(path, 5))
    assert str(path) in str(info.value)


def _gop_video(path: Path, frames: int, gop: int, suffix_format: str | None = None, bframes: int = 2) -> Path:
    """H.264 with a keyframe every `gop` frames and B-frames (presentation order differs from
    decoding order), each frame a distinct pattern so a wrong frame cannot pass for a right one."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 255, size=(48, 64, 3), dtype=np.uint8)
    with av.open(str(path), mode="w", format=suffix_format) as container:
        stream = container.add_stream("libx264", rate=25, options={"g": str(gop), "keyint_min": str(gop),
                                                                   "bf": str(bframes), "sc_threshold": "0"})
        stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
        for i in range(frames):
            image = np.roll(base, i * 3, axis=1)
            image[:4, :8] = (i * 7) % 256
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.mark.parametrize("name", ["long.mp4", "long.mkv"])
def test_seeking_gives_the_frames_sequential_decoding_gives_while_decoding_a_fraction(tmp_path, name):
    video = _gop_video(tmp_path / name, frames=600, gop=25)
    for count, fps in ((8, None), (32, None), (None, 0.5)):
        stats_seek, stats_seq = {}, {}
        sought = list(sample_video_frames(video, count=count, fps=fps, stats=stats_seek))
        decoded = list(sample_video_frames(video, count=count, fps=fps, seek=False, stats=stats_seq))
        assert stats_seek["method"] == "seek" and stats_seq["method"] == "sequential"
        assert [(f.index, f.time) for f in sought] == [(f.index, f.time) for f in decoded]
        assert all(np.array_equal(a.image, b.image) for a, b in zip(sought, decoded))
        assert len(sought) == (count or 12)
        if count == 8:  # frames 85 apart, keyframes every 25: only the GOPs that hold them
            assert stats_seek["seeks"] == 8 and stats_seek["decoded"] <= 8 * 25
            assert stats_seq["decoded"] == 600
    # 32 frames of 600 are about 19 apart, closer than a GOP: some are reached by decoding on, not seeking.
    stats = {}
    list(sample_video_frames(video, count=32, stats=stats))
    assert stats["seeks"] < 32 and stats["decoded"] < 600


def test_seeking_keeps_variable_frame_rate_timestamps(tmp_path):
    times = [0.0, 0.04, 0.08, 1.0, 1.04, 2.5, 2.54, 2.58, 4.0]
    from tests.test_scan_cli import write_vfr_video

    video = write_vfr_video(tmp_path / "vfr.mp4", times)
    for count, fps in ((4, None), (None, 1.0)):
        sought = [(f.index, f.time) for f in sample_video_frames(video, count=count, fps=fps)]
        decoded = [(f.index, f.time) for f in sample_video_frames(video, count=count, fps=fps, seek=False)]
        assert sought == decoded
    assert [t for _, t in sought] == pytest.approx([0.0, 1.0, 2.5, 4.0])
