"""`trainer prepare`: identity groups and splits, crops made by scan's own code, landmarks,
resuming, self-blended extras, and the command's errors."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from typer.testing import CliRunner

from forensic.faces import FaceDetector, crop_face
from forensic.media import sample_video_frames
from trainer.cli import app
from trainer.data.datasets import CLASSES, SPLITS
from trainer.data.extraction import crop_landmarks
from trainer.data.prepare import prepare_dataset
from trainer.data.sbi import LANDMARKS_FILE, load_landmarks
from trainer.data.sources import PrepareError, assign_splits, check_group_pattern, find_videos, group_videos, video_ids
from trainer.data.synthetic import panning_frames, self_blend, write_video

BOX = (181.0, 62.0, 268.0, 172.0)  # MTCNN's box of scikit-image's astronaut
FRAMES, SIZE, MARGIN = 4, 64, 1.3
CROP_NAME = re.compile(r"^(?P<video>(Deepfakes-)?\d+(_\d+)?)_(?P<frame>\d{4})_(?P<face>\d+)\.png$")
runner = CliRunner()


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    """A tiny FaceForensics++-like folder: two real videos, a real image, a fake made by blending
    044's face, a video without a face and a corrupt one."""
    src = tmp_path_factory.mktemp("ffpp")
    (src / "real").mkdir()
    (src / "fake" / "Deepfakes").mkdir(parents=True)
    astronaut = data.astronaut()
    write_video(src / "real" / "044.mp4", panning_frames(astronaut, count=8))
    write_video(src / "real" / "945.mp4", panning_frames(np.ascontiguousarray(astronaut[:, ::-1]), count=8))
    Image.fromarray(panning_frames(astronaut, count=1)[0]).save(src / "real" / "100.png")
    write_video(src / "real" / "200.mp4", panning_frames(data.coffee(), count=8))  # no face
    blended = self_blend(astronaut, BOX, np.random.default_rng(0), ratio=1.0)
    write_video(src / "fake" / "Deepfakes" / "044_945.mp4", panning_frames(blended, count=8))
    (src / "fake" / "Deepfakes" / "300_301.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42 not really a video" * 40)
    return src


@pytest.fixture(scope="module")
def prepared(source, detector, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "dataset"
    result = prepare_dataset(source, out, frames=FRAMES, size=SIZE, margin=MARGIN, seed=0, detector=detector)
    return out, result


def _crops(out: Path) -> list[Path]:
    return sorted(out.glob("*/*/*.png"))


# --------------------------------------------------------------------------------------------
# Identity groups and splits


def test_group_videos_joins_everything_sharing_an_identity():
    names = ["044.mp4", "100.mp4", "945.mp4", "044_945.mp4", "945_044.mp4"]
    groups = group_videos(names)
    assert groups == [["044.mp4", "945.mp4", "044_945.mp4", "945_044.mp4"], ["100.mp4"]]
    chained = group_videos([Path("a/001_002.mp4"), Path("b/002_003.mp4"), Path("003.png"), Path("clip.mp4"), Path("44.mp4"), Path("044.mp4")])
    assert [len(g) for g in chained] == [3, 1, 2], "transitive; no number: own group; 44 is 044"
    assert video_ids("044_945") == ("44", "945")


def test_numbers_outside_ffpp_names_are_not_identities_unless_a_pattern_says_so():
    # Grouping 'clip_2023_01' with every other 2023 clip, or every LFW '_0001' photo together
    # while one person's '_0002' lands in another split, would both be wrong.
    names = ["clip_2023_01.mp4", "clip_2023_02.mp4", "Aaron_Peirsol_0001.jpg", "Aaron_Peirsol_0002.jpg",
             "Ann_Veneman_0001.jpg"]
    assert [len(g) for g in group_videos(names)] == [1, 1, 1, 1, 1]
    by_person = group_videos(names, pattern=r"(.+)_\d+")
    assert [[Path(n).stem for n in g] for g in by_person] == [
        ["clip_2023_01", "clip_2023_02"], ["Aaron_Peirsol_0001", "Aaron_Peirsol_0002"], ["Ann_Veneman_0001"]]
    for bad in ("(", "no_group_\\d+"):
        with pytest.raises(PrepareError, match="--group-pattern"):
            check_group_pattern(bad)


def test_assign_splits_keeps_identities_apart_and_balances_videos():
    rng = np.random.default_rng(1)
    names = [f"{i:03d}.mp4" for i in range(60)]
    names += [f"{a:03d}_{b:03d}.mp4" for a, b in rng.integers(0, 80, size=(30, 2))]  # some ids only in fakes
    groups = group_videos(names)
    splits = assign_splits(groups, (0.7, 0.15, 0.15), seed=0)
    assert len(splits) == len(groups) and set(splits) <= set(SPLITS)
    where: dict[str, str] = {}
    for group, split in zip(groups, splits):
        for name in group:
            for identity in video_ids(Path(name).stem):
                assert where.setdefault(identity, split) == split, f"identity {identity} in two splits"
    videos = {s: sum(len(g) for g, t in zip(groups, splits) if t == s) for s in SPLITS}
    assert all(videos[s] > 0 for s in SPLITS)
    assert 0.55 < videos["train"] / len(names) < 0.85
    assert assign_splits(groups, (0.7, 0.15, 0.15), seed=0) == splits, "deterministic for a seed"
    assert assign_splits(groups, (0.7, 0.15, 0.15), seed=5) != splits
    assert "test" not in assign_splits(groups, (0.8, 0.2, 0.0), seed=0)
    with pytest.raises(PrepareError, match="--split"):
        assign_splits(groups, (0.7, 0.3))


def test_crop_landmarks_follow_crop_face_geometry():
    image = np.zeros((300, 400, 3), np.uint8)
    points = np.array([[30.0, 40.0], [70.0, 42.0], [52.0, 60.0], [36.0, 80.0], [66.0, 81.0]])
    for x, y in points.astype(int):
        image[y - 1: y + 2, x - 1: x + 2] = 255  # a 3x3 dot centred on each point
    for box, size in [((20, 10, 90, 110), 256), ((20, 10, 90, 110), 64), ((-15, -20, 95, 115), 128)]:
        crop = crop_face(image, box, 1.3, size)[..., 0].astype(float)
        mapped = crop_landmarks(points, box, 1.3, size)
        radius = max(2, int(size / 60))
        for (mx, my) in mapped:
            ys, xs = np.mgrid[int(my) - radius: int(my) + radius + 2, int(mx) - radius: int(mx) + radius + 2]
            weights = crop[ys, xs]
            centroid = (np.sum(xs * weights) / weights.sum(), np.sum(ys * weights) / weights.sum())
            assert np.hypot(centroid[0] - mx, centroid[1] - my) < 0.35, (box, size)


# --------------------------------------------------------------------------------------------
# prepare_dataset on a tiny FaceForensics++ folder


def test_layout_names_and_landmarks(prepared):
    out, result = prepared
    manifest = json.loads((out / "prepare.json").read_text())
    assignment = manifest["assignment"]
    assert sorted(assignment) == ["044", "100", "200", "945", "Deepfakes-044_945", "Deepfakes-300_301"]
    assert assignment["044"] == assignment["945"] == assignment["Deepfakes-044_945"] == "train"
    crops = _crops(out)
    videos_with_crops = set()
    for path in crops:
        match = CROP_NAME.match(path.name)
        assert match, path.name
        split, label, video = path.parent.parent.name, path.parent.name, match["video"]
        assert assignment[video] == split and label == ("fake" if video.startswith("Deepfakes-") else "real")
        videos_with_crops.add(video)
        with Image.open(path) as image:
            assert image.size == (SIZE, SIZE) and image.mode == "RGB"
    assert videos_with_crops == {"044", "945", "100", "Deepfakes-044_945"}
    assert len([p for p in crops if p.name.startswith("044_")]) == FRAMES  # one face per sampled frame
    assert (out / assignment["100"] / "real" / "100_0000_0.png").is_file()
    for split in SPLITS:
        for label in CLASSES:
            folder = out / split / label
            entries = json.loads((folder / LANDMARKS_FILE).read_text())
            assert sorted(entries) == sorted(p.name for p in folder.glob("*.png"))
            for points in entries.values():
                points = np.asarray(points)
                assert points.shape == (5, 2) and ((points > 0) & (points < SIZE)).all()
                assert points[:2, 1].mean() < points[3:, 1].mean(), "eyes above the mouth"
        assert sorted(load_landmarks(out / split)) == sorted(p.name for p in out.glob(f"{split}/*/*.png"))


def test_prepare_json_counts_and_skipped(prepared, source, detector):
    out, result = prepared
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["settings"] == {"frames": FRAMES, "size": SIZE, "margin": MARGIN, "split": [0.7, 0.15, 0.15],
                                    "seed": 0, "sbi": 0, "group_pattern": None}
    # the detector a scan report names (each ONNX file's SHA-256), with its settings
    assert manifest["detector"] == {**detector.identity, "min_face_size": 40, "max_side": 720, "thresholds": [0.6, 0.7, 0.7]}
    assert [network["name"] for network in manifest["detector"]["networks"]] == ["pnet", "rnet", "onet"]
    assert manifest["complete"] is True and manifest["counts"] == result.counts
    assert result.processed == 6 and result.reused == 0
    skipped = {entry["video"]: entry["reason"] for entry in manifest["skipped"]}
    assert sorted(skipped) == ["200", "Deepfakes-300_301"]
    assert str(source / "real" / "200.mp4") in skipped["200"] and "no face" in skipped["200"]
    assert str(source / "fake" / "Deepfakes" / "300_301.mp4") in skipped["Deepfakes-300_301"]
    assert result.skipped == manifest["skipped"]
    for split in SPLITS:
        for label in CLASSES:
            assert manifest["counts"][split][label] == len(list((out / split / label).glob("*.png")))
    assert sum(c["videos"] for c in manifest["counts"].values()) == 6
    assert sum(c["groups"] for c in manifest["counts"].values()) == 4


def test_crops_are_scan_crops_of_the_same_frames(prepared, source, detector):
    out, _ = prepared
    frames = list(sample_video_frames(source / "real" / "044.mp4", FRAMES))
    detections = detector.detect([frame.image for frame in frames])
    landmarks = json.loads((out / "train" / "real" / LANDMARKS_FILE).read_text())
    expected = set()
    for frame, faces in zip(frames, detections):
        for number, face in enumerate(faces):
            name = f"044_{frame.index:04d}_{number}.png"
            expected.add(name)
            written = np.asarray(Image.open(out / "train" / "real" / name))
            np.testing.assert_array_equal(written, crop_face(frame.image, face.box, MARGIN, SIZE))
            np.testing.assert_allclose(landmarks[name], crop_landmarks(face.landmarks, face.box, MARGIN, SIZE), atol=0.01)
    assert expected == {p.name for p in (out / "train" / "real").glob("044_*.png")}


def test_resume_skips_done_videos_and_sbi_adds_blended_fakes(prepared, source, tmp_path):
    out = tmp_path / "dataset"
    shutil.copytree(prepared[0], out)  # keeps mtimes
    # crops made before prepare.json named the detector by its files: that record is kept as it was
    older = json.loads((out / "prepare.json").read_text())
    older["detector"] = {"model": "facenet-pytorch MTCNN", "min_face_size": 40, "max_side": 720, "thresholds": [0.6, 0.7, 0.7]}
    (out / "prepare.json").write_text(json.dumps(older))
    before = {p: p.stat().st_mtime_ns for p in _crops(out)}
    again = prepare_dataset(source, out, frames=FRAMES, size=SIZE, margin=MARGIN, seed=0)  # no detector: none needed
    assert (again.processed, again.reused) == (0, 6)
    assert json.loads((out / "prepare.json").read_text())["detector"] == older["detector"]
    assert {p: p.stat().st_mtime_ns for p in _crops(out)} == before
    assert [entry["video"] for entry in again.skipped] == ["200", "Deepfakes-300_301"]

    result = runner.invoke(app, ["prepare", str(source), "--out", str(out), "--frames", str(FRAMES),
                                 "--size", str(SIZE), "--sbi", "1"])
    assert result.exit_code == 0, result.output
    assert "0 videos processed, 6 already done" in result.output and "300_301.mp4" in result.output
    assert {p: p.stat().st_mtime_ns for p in before} == before, "extracted crops untouched"
    reals = sorted(p.name for p in (out / "train" / "real").glob("*.png"))
    blended = sorted(p.name for p in (out / "train" / "fake").glob("sbi-*.png"))
    assert blended == sorted(f"sbi-{Path(name).stem}_0.png" for name in reals)
    for name in reals[:2]:
        fake = np.asarray(Image.open(out / "train" / "fake" / f"sbi-{Path(name).stem}_0.png"))
        real = np.asarray(Image.open(out / "train" / "real" / name))
        assert fake.shape == real.shape and not np.array_equal(fake, real)
        assert (fake == real).all(axis=2).mean() > 0.2, "the crop's border stays the real one"
    assert set(blended) <= set(json.loads((out / "train" / "fake" / LANDMARKS_FILE).read_text()))
    manifest = json.loads((out / "prepare.json").read_text())
    assert manifest["settings"]["sbi"] == 1 and manifest["counts"]["train"]["sbi"] == len(reals)
    assert not list(out.glob("validation/fake/sbi-*")) and not list(out.glob("test/fake/sbi-*"))

    fewer = prepare_dataset(source, out, frames=FRAMES, size=SIZE, margin=MARGIN, seed=0, sbi=0)
    assert fewer.sbi_removed == len(reals) and not list(out.glob("train/fake/sbi-*"))


def test_resume_refuses_to_mix_the_crops_of_two_face_detectors(prepared, source, detector, tmp_path):
    # prepare.json names the one detector that cut the folder's crops: a run that would cut more
    # with another is refused before it writes anything, the record of the earlier one kept.
    out = tmp_path / "dataset"
    shutil.copytree(prepared[0], out)
    made = json.loads((out / "prepare.json").read_text())
    pnet = made["detector"]["networks"][0]
    earlier = json.loads(json.dumps(made))
    earlier["detector"]["networks"][0]["sha256"] = "0" * 64  # the crops of an earlier run with another P-Net
    (out / "prepare.json").write_text(json.dumps(earlier))
    done = (out / ".done").read_text()
    without_044 = "".join(line + "\n" for line in done.splitlines() if json.loads(line)["video"] != "044")
    (out / ".done").write_text(without_044)  # as if that run had stopped before 044: faces to detect
    files = [out / "prepare.json", out / ".done", *_crops(out)]
    before = {path: path.read_bytes() for path in files}
    with pytest.raises(PrepareError) as refused:
        prepare_dataset(source, out, frames=FRAMES, size=SIZE, margin=MARGIN, seed=0, detector=detector)
    assert str(refused.value) == (f"{out}: its crops were cut by another face detector (pnet sha256 000000000000… vs "
                                  f"{pnet['sha256'][:12]}…: earlier vs this run); resume with the same one, "
                                  f"or use a new --out")
    assert {path: path.read_bytes() for path in files} == before and len(_crops(out)) == len(files) - 2
    result = runner.invoke(app, ["prepare", str(source), "--out", str(out), "--frames", str(FRAMES), "--size", str(SIZE)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {out}: ") and "pnet sha256 000000000000…" in lines[0]

    (out / "prepare.json").write_text(json.dumps(made))  # the same networks, another setting
    other = FaceDetector(min_face_size=30)
    with pytest.raises(PrepareError, match=r"another face detector \(min_face_size 40 vs 30: earlier vs this run\)"):
        prepare_dataset(source, out, frames=FRAMES, size=SIZE, margin=MARGIN, seed=0, detector=other)
    (out / ".done").write_text(done)  # nothing to detect: the detector given cuts nothing, so is not recorded
    again = prepare_dataset(source, out, frames=FRAMES, size=SIZE, margin=MARGIN, seed=0, detector=other)
    assert (again.processed, again.reused) == (0, 6)
    assert json.loads((out / "prepare.json").read_text())["detector"] == made["detector"]
    (out / ".done").write_text(without_044)  # the same detector resumes
    again = prepare_dataset(source, out, frames=FRAMES, size=SIZE, margin=MARGIN, seed=0, detector=detector)
    assert (again.processed, again.reused) == (1, 5)
    assert json.loads((out / "prepare.json").read_text())["detector"] == made["detector"]


def test_self_blending_leaves_fakes_from_an_sbi_folder_alone(detector, tmp_path):
    # fake/sbi/ (fakes made by the SBI method) gives crops named sbi-…: they are data, not the
    # self-blends prepare makes, and were once deleted as stale ones on every run.
    src = tmp_path / "src"
    (src / "real").mkdir(parents=True)
    (src / "fake" / "sbi").mkdir(parents=True)
    astronaut = data.astronaut()
    Image.fromarray(astronaut).save(src / "real" / "044.png")
    Image.fromarray(self_blend(astronaut, BOX, np.random.default_rng(0), ratio=1.0)).save(src / "fake" / "sbi" / "044_945.png")
    out = tmp_path / "dataset"
    for sbi in (1, 0):
        result = prepare_dataset(src, out, frames=1, size=SIZE, margin=MARGIN, split=(1, 0, 0), seed=0,
                                 sbi=sbi, detector=detector)
        fakes = sorted(p.name for p in (out / "train" / "fake").glob("*.png"))
        assert "sbi-044_945_0000_0.png" in fakes  # the SBI video's crop stays
        assert ("sbi-044_0000_0_0.png" in fakes) == bool(sbi)  # the self-blend of the real crop
        assert result.counts["train"]["sbi"] == sbi and result.counts["train"]["fake"] == 1 + sbi
    assert result.sbi_removed == 1


# --------------------------------------------------------------------------------------------
# Errors


def test_cli_missing_source_is_a_one_line_error(tmp_path):
    missing = tmp_path / "nowhere"
    result = runner.invoke(app, ["prepare", str(missing), "--out", str(tmp_path / "dataset")])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(missing) in lines[0]
    assert "Traceback" not in result.output and not (tmp_path / "dataset").exists()


def test_errors_name_the_problem(tmp_path, prepared, source):
    (tmp_path / "empty" / "real").mkdir(parents=True)
    (tmp_path / "empty" / "real" / "notes.txt").write_text("not media")
    with pytest.raises(PrepareError, match="no videos"):
        find_videos(tmp_path / "empty")
    result = runner.invoke(app, ["prepare", str(tmp_path / "empty"), "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and result.output.startswith("error: ") and str(tmp_path / "empty") in result.output
    result = runner.invoke(app, ["prepare", str(source), "--out", str(tmp_path / "d"), "--split", "0.7,0.3"])
    assert result.exit_code == 2 and "--split" in result.output
    # A pattern with a typo would silently make every file its own identity (leaking people across splits).
    result = runner.invoke(app, ["prepare", str(source), "--out", str(tmp_path / "d"), "--group-pattern", r"(id\d+)_\d{5}"])
    assert result.exit_code == 2 and "matches none of the 6 names" in result.output and r"(id\d+)_\d{5}'" in result.output
    assert len(result.output.strip().splitlines()) == 1
    # An existing folder that prepare did not make, and a prepared one with other settings.
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "keep.txt").write_text("mine")
    with pytest.raises(PrepareError, match="not a `trainer prepare` folder"):
        prepare_dataset(source, tmp_path / "other", frames=FRAMES, size=SIZE)
    result = runner.invoke(app, ["prepare", str(source), "--out", str(prepared[0]), "--frames", str(FRAMES), "--size", "32"])
    assert result.exit_code == 2 and "size 64 -> 32" in result.output
    assert len(result.output.strip().splitlines()) == 1
