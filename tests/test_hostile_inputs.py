"""Hostile input (issue: never overwrite evidence, never judge bytes the hash does not cover,
never run a decoder we did not choose): each case fails on the code before its fix."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

import forensic.media as media
from forensic.cli import app
from forensic.errors import ForensicError, MediaError
from forensic.media import load_image, sample_video_frames
from forensic.outputs import atomic_write_text, check_output
from trainer.data.synthetic import panning_frames, write_video

runner = CliRunner()


def digest(path: Path) -> tuple[str, int]:
    return hashlib.sha256(path.read_bytes()).hexdigest(), path.stat().st_mtime_ns


@pytest.fixture()
def clip(tmp_path) -> Path:
    path = tmp_path / "payload.mp4"
    write_video(path, panning_frames(data.astronaut(), count=6))
    return path


def test_an_output_hard_linked_to_an_input_is_refused_and_the_input_kept(sample_media, tmp_path):
    image = tmp_path / "in.jpg"
    shutil.copy(sample_media["coffee_no_face.jpg"], image)
    before = digest(image)
    for option in ("--json", "--csv"):
        link = tmp_path / f"out{option}.out"
        os.link(image, link)
        result = runner.invoke(app, ["scan", str(image), option, str(link)])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and "is one of the inputs" in result.output
        assert result.output.count("\n") == 1
    assert digest(image) == before


def test_outputs_replace_their_file_so_another_link_to_it_keeps_its_bytes(tmp_path):
    original = tmp_path / "evidence.jpg"
    original.write_bytes(b"evidence bytes")
    alias = tmp_path / "report.json"
    os.link(original, alias)
    atomic_write_text(alias, "{}\n")
    assert alias.read_text() == "{}\n" and original.read_bytes() == b"evidence bytes"
    assert not list(tmp_path.glob(".*partial"))  # no temporary file left behind
    with pytest.raises(ForensicError, match="is one of the inputs"):
        check_output(tmp_path / "sub" / ".." / "evidence.jpg", [original])


def test_an_ffconcat_playlist_named_mp4_is_not_followed(clip, tmp_path):
    playlist = tmp_path / "concat.mp4"
    playlist.write_text(f"ffconcat version 1.0\nfile '{clip.name}'\n")
    assert len(list(sample_video_frames(clip, 4))) == 4  # the payload itself is a fine video
    with pytest.raises(MediaError) as info:
        list(sample_video_frames(playlist, 4))
    assert str(playlist) in str(info.value)
    result = runner.invoke(app, ["scan", str(playlist), str(clip), "--json", "-"])
    files = {Path(f["path"]).name: f for f in json.loads(result.stdout)["files"]}
    assert files["concat.mp4"]["verdict"] == "error" and files["payload.mp4"]["verdict"] != "error"
    assert result.exit_code == 1


def test_a_name_that_looks_like_a_protocol_is_read_as_a_file(clip, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    odd = Path("concat:payload.mp4|payload.mp4")
    shutil.copy(clip, odd)
    frames = list(sample_video_frames(odd, 100))
    assert len(frames) == 6  # its own six frames, not the concat protocol's twelve


def test_postscript_named_jpg_never_reaches_ghostscript(tmp_path):
    fake = tmp_path / "e.jpg"
    fake.write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nnewpath 0 0 moveto 10 10 lineto stroke\nshowpage\n")
    with Image.open(fake) as opened:  # what Pillow would pick by content, unrestricted
        assert opened.format == "EPS"
    with pytest.raises(MediaError, match="not an image in a supported format"):
        load_image(fake)


def _tiff_whose_strip_offset_is_a_double() -> bytes:
    """A 1x1 greyscale TIFF, its StripOffsets tag of type DOUBLE (12): a float where Pillow seeks."""
    tags = [(256, 3, 1), (257, 3, 1), (258, 3, 8), (259, 3, 1), (262, 3, 1), (273, 12, None), (277, 3, 1), (278, 3, 1),
            (279, 4, 1)]
    double_at = 8 + 2 + 12 * len(tags) + 4
    ifd = struct.pack("<H", len(tags))
    for tag, kind, value in tags:
        ifd += struct.pack("<HHII", tag, kind, 1, double_at) if kind == 12 else \
            struct.pack("<HHIHH", tag, kind, 1, value, 0) if kind == 3 else struct.pack("<HHII", tag, kind, 1, value)
    return b"II*\x00" + struct.pack("<I", 8) + ifd + struct.pack("<I", 0) + struct.pack("<d", double_at + 8) + b"\x80"


def test_an_image_pillow_fails_on_with_another_exception_is_that_files_error(tmp_path):
    # Found by fuzz/run.py: Pillow raised TypeError (not OSError or ValueError) from its TIFF parser.
    path = tmp_path / "odd.tif"
    path.write_bytes(_tiff_whose_strip_offset_is_a_double())
    with pytest.raises(MediaError, match="cannot decode image") as info:
        load_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_video_frames_over_the_pixel_limit_are_refused_before_decoding(clip, monkeypatch):
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 64 * 64)
    with pytest.raises(MediaError, match="video frames are .* megapixels") as info:
        next(iter(sample_video_frames(clip, 4)))
    assert str(clip) in str(info.value)


def _mkv_with(tmp_path: Path, old: bytes, new: bytes) -> Path:
    """A Matroska clip with `old` replaced by `new` (the same length) in its bytes."""
    path = tmp_path / "clip.mkv"
    write_video(path, panning_frames(data.astronaut(), count=6))
    raw = path.read_bytes()
    assert old in raw
    path.write_bytes(raw.replace(old, new))
    return path


def test_a_video_stream_no_decoder_exists_for_is_that_files_error(tmp_path):
    # Found by fuzz/run.py: such a stream has no codec context, and its size was read from it.
    path = _mkv_with(tmp_path, b"V_MPEG4/ISO/AVC", b"V_MPEG4/ISO/XYZ")
    with pytest.raises(MediaError, match="no decoder for its video stream's codec") as info:
        list(sample_video_frames(path, 4))
    assert str(path) in str(info.value)


def test_video_tags_that_are_not_utf8_do_not_make_the_video_unreadable(tmp_path):
    # Found by fuzz/run.py: PyAV decoded every tag as strict UTF-8 while opening the file.
    path = _mkv_with(tmp_path, b"Lavf", b"\xffavf")
    assert len(list(sample_video_frames(path, 4))) == 4


def test_a_folder_past_the_path_length_limit_is_reported_and_the_rest_scanned(sample_media, tmp_path):
    top = tmp_path / "batch"
    top.mkdir()
    shutil.copy(sample_media["coffee_no_face.jpg"], top / "good.jpg")
    # nested folders whose full path passes PATH_MAX (4096): made relative to each other
    deep = os.open(top, os.O_RDONLY)
    try:
        for _ in range(18):
            os.mkdir("d" * 250, dir_fd=deep)
            inner = os.open("d" * 250, os.O_RDONLY, dir_fd=deep)
            os.close(deep)
            deep = inner
    finally:
        os.close(deep)
    result = runner.invoke(app, ["scan", str(top), "--json", "-"])
    assert result.exit_code == 1, result.output
    files = json.loads(result.stdout)["files"]
    verdicts = {Path(f["path"]).name: f["verdict"] for f in files if len(f["path"]) < 200}
    assert verdicts == {"good.jpg": "no-face"}
    too_long = [f for f in files if len(f["path"]) > 4000]
    assert len(too_long) == 1 and too_long[0]["verdict"] == "error" and "File name too long" in too_long[0]["error"]


def test_a_symlink_loop_named_as_input_is_that_files_error(sample_media, tmp_path):
    loop = tmp_path / "loop.jpg"
    loop.symlink_to(loop)
    good = tmp_path / "good.jpg"
    shutil.copy(sample_media["coffee_no_face.jpg"], good)
    result = runner.invoke(app, ["scan", str(loop), str(good), "--json", str(tmp_path / "report.json")])
    assert result.exit_code == 1, result.output
    files = {Path(f["path"]).name: f for f in json.loads((tmp_path / "report.json").read_text())["files"]}
    assert files["loop.jpg"]["verdict"] == "error" and files["good.jpg"]["verdict"] == "no-face"


@pytest.mark.parametrize("args, problem", [
    (["--self-test", "--self-test-eps", "1e309"], "--self-test-eps"),
    (["--from", "LIST"], "NUL byte"),
])
def test_option_values_no_number_or_name_can_hold_are_one_line_errors(sample_media, tmp_path, args, problem):
    listing = tmp_path / "list.txt"
    listing.write_bytes(str(sample_media["coffee_no_face.jpg"]).encode() + b"\n/tmp/a\x00b.jpg\n")
    args = [str(listing) if a == "LIST" else a for a in args]
    result = runner.invoke(app, ["scan", str(sample_media["coffee_no_face.jpg"]), *args])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and problem in result.output and result.output.count("\n") == 1


@pytest.mark.parametrize("name", [7, None, ""])
def test_a_manifest_whose_name_is_not_a_string_is_refused_at_load(tmp_path, name, sample_media):
    from forensic.bundle import DEFAULT_BUNDLE

    bundle = tmp_path / "bundle"
    shutil.copytree(DEFAULT_BUNDLE, bundle)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["name"] = name
    (bundle / "manifest.json").write_text(json.dumps(manifest))
    result = runner.invoke(app, ["scan", str(sample_media["coffee_no_face.jpg"]), "--bundle", str(bundle)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "must be a non-empty string" in result.output


def _default_manifest_text(change) -> str:
    from forensic.bundle import DEFAULT_BUNDLE

    manifest = json.loads((DEFAULT_BUNDLE / "manifest.json").read_text())
    change(manifest)
    return json.dumps(manifest)


# Each was a traceback (OverflowError, OSError, RecursionError, ValueError) instead of the one-line
# refusal: the first three found by fuzz/run.py, the JSON ones in writing it. All are refused
# before a model file is read, so the bundles here hold their manifest alone.
@pytest.mark.parametrize("manifest, problem", [
    (lambda: _default_manifest_text(lambda m: m["models"][0].update(weight=10 ** 400)), "weight must be a finite number"),
    (lambda: _default_manifest_text(lambda m: m["input"].update(mean=[0.5, 10 ** 400, 0.5])), "input.mean must be three finite"),
    (lambda: _default_manifest_text(lambda m: m["models"][0].update(file="m" * 300)),
     "cannot read (File name too long)"),
    (lambda: "[" * 100_000 + "]" * 100_000, "not valid JSON (maximum recursion depth"),
    (lambda: '{"schema_version": 1, "name": ' + "9" * 5000 + "}", "not valid JSON (Exceeds the limit"),
], ids=["huge-integer-weight", "huge-integer-mean", "file-name-too-long", "nested-too-deep", "5000-digit-integer"])
def test_a_manifest_with_numbers_names_or_nesting_past_any_limit_is_refused_in_one_line(tmp_path, manifest, problem):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text(manifest())
    result = runner.invoke(app, ["scan", str(tmp_path / "a.jpg"), "--bundle", str(bundle)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith(f"error: {bundle}") and problem in result.output and result.output.count("\n") == 1


def test_a_bundle_path_past_the_name_length_limit_is_refused_in_one_line(tmp_path):
    bundle = tmp_path / ("b" * 300)
    result = runner.invoke(app, ["scan", str(tmp_path / "a.jpg"), "--bundle", str(bundle)])
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and "File name too long" in result.output and result.output.count("\n") == 1


class _RunsCode:
    """Unpickling this would write a marker file: weights_only loading must refuse it."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (Path(self.marker).write_text, ("code ran",))


def test_trainer_refuses_junk_and_pickled_code_as_checkpoints_in_one_line(face_dataset, tmp_path, monkeypatch):
    import pickle

    import torch

    from trainer.cli import app as trainer_app

    marker = tmp_path / "marker"
    evil = tmp_path / "evil.pt"
    torch.save({"model": _RunsCode(str(marker))}, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00" * 100)
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(face_dataset, tmp_path)
    base = ["fit", "--data", relative, "--arch", "resnet_se", "--size", "32", "--batch-size", "8", "--workers", "0"]
    for checkpoint in (evil, junk):
        result = runner.invoke(trainer_app, [*base, "--epochs", "1", "--init", str(checkpoint), "--out", str(tmp_path / f"run-{checkpoint.stem}")])
        assert result.exit_code == 2, result.output
        assert result.output.startswith("error: ") and str(checkpoint) in result.output and result.output.count("\n") == 1
    assert not marker.exists()

    run = tmp_path / "run"
    assert runner.invoke(trainer_app, [*base, "--epochs", "1", "--out", str(run)]).exit_code == 0
    # config.json keeps the data folder absolute: --resume works from another folder
    assert Path(json.loads((run / "config.json").read_text())["fit"]["data"]).is_absolute()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    resumed = runner.invoke(trainer_app, ["fit", "--out", str(run), "--epochs", "2", "--resume"])
    assert resumed.exit_code == 0, resumed.output
    (run / "last.pt").write_bytes(b"not a checkpoint")
    broken = runner.invoke(trainer_app, ["fit", "--out", str(run), "--epochs", "3", "--resume"])
    assert broken.exit_code == 2 and broken.output.startswith("error: ") and broken.output.count("\n") == 1
    assert "not a resumable" in broken.output
