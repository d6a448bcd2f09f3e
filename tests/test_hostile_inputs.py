"""Hostile input (issue: never overwrite evidence, never judge bytes the hash does not cover,
never run a decoder we did not choose): each case fails on the code before its fix. The cases
that are one input of a kind are in the hostile corpus (tests/test_hostile_corpus.py); these
look inside (the decoder Pillow would have picked, the frames read) or at a unit."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

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


@pytest.fixture()
def clip(tmp_path) -> Path:
    path = tmp_path / "payload.mp4"
    write_video(path, panning_frames(data.astronaut(), count=6))
    return path


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


def test_video_frames_over_the_pixel_limit_are_refused_before_decoding(clip, monkeypatch):
    monkeypatch.setattr(media, "MAX_IMAGE_PIXELS", 64 * 64)
    with pytest.raises(MediaError, match="video frames are .* megapixels") as info:
        next(iter(sample_video_frames(clip, 4)))
    assert str(clip) in str(info.value)


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
