"""`trainer folds` and `trainer pool`: grouped cross-validation views of a real `trainer prepare`
folder (identity groups never split across folds, the test split left out, self-blends on the
training side only) and the pooled out-of-fold figures."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from skimage import data
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from forensic.faces import FaceDetector
from trainer.cli import app
from trainer.data.datasets import list_split
from trainer.data.prepare import prepare_dataset
from trainer.data.prepared_folder import read_records
from trainer.data.sbi import load_landmarks
from trainer.data.sources import group_videos, video_ids
from trainer.data.synthetic import panning_frames, self_blend
from trainer.evaluation.folds import FoldsError, assign_folds, grouped_auc_ci, make_folds, pool_reports
from trainer.evaluation.metrics import video_id

BOX = (181.0, 62.0, 268.0, 172.0)  # MTCNN's box of scikit-image's astronaut
runner = CliRunner()


@pytest.fixture(scope="module")
def prepared(tmp_path_factory) -> Path:
    """Sixteen face images in FF++ layout in seven identity groups, prepared (with one self-blend
    per real training crop) into train / validation / test."""
    src = tmp_path_factory.mktemp("ffpp")
    (src / "real").mkdir()
    (src / "fake" / "Deepfakes").mkdir(parents=True)
    astronaut = data.astronaut()
    views = panning_frames(astronaut, count=10) + panning_frames(np.ascontiguousarray(astronaut[:, ::-1]), count=2)
    for number in range(1, 11):
        Image.fromarray(views[number - 1]).save(src / "real" / f"{number:03d}.png")
    blended = panning_frames(self_blend(astronaut, BOX, np.random.default_rng(0), ratio=1.0), count=6)
    for (a, b), frame in zip([(1, 2), (2, 1), (3, 4), (5, 6), (7, 8), (11, 12)], blended):
        Image.fromarray(frame).save(src / "fake" / "Deepfakes" / f"{a:03d}_{b:03d}.png")
    out = tmp_path_factory.mktemp("prepared") / "dataset"
    prepare_dataset(src, out, frames=1, size=48, split="0.7,0.15,0.15", sbi=1, seed=0, detector=FaceDetector())
    return out


def _fold_videos(folds: Path, fold: int, part: str) -> set[str]:
    return {video_id(s.path.name) for s in list_split(folds / f"fold-{fold}", part) if not s.path.name.startswith("sbi-")}


def test_assign_folds_balances_videos_and_is_seeded():
    groups = group_videos([f"{i:03d}.mp4" for i in range(40)] + [f"{i:03d}_{i + 1:03d}.mp4" for i in range(0, 40, 4)])
    folds = assign_folds(groups, 4, seed=0)
    sizes = [sum(len(g) for g, f in zip(groups, folds) if f == fold) for fold in range(4)]
    assert sorted(set(folds)) == [0, 1, 2, 3] and max(sizes) - min(sizes) <= 2
    assert assign_folds(groups, 4, seed=0) == folds
    assert assign_folds(groups, 4, seed=1) != folds


def test_folds_keep_identity_groups_together_and_the_test_split_out(prepared, tmp_path):
    summary = make_folds(prepared, tmp_path / "folds", k=3, seed=0)
    records = read_records(prepared)
    pooled_videos = {r["video"] for r in records.values() if r["status"] == "done" and r["split"] != "test"}
    test_videos = {r["video"] for r in records.values() if r["status"] == "done" and r["split"] == "test"}
    assert test_videos, "the fixture must put something in test"
    validation = [_fold_videos(tmp_path / "folds", fold, "validation") for fold in range(3)]
    as_named = [{name.split("-", 1)[-1] for name in fold["videos"]} for fold in summary["folds"]]
    assert [{v.split("-", 1)[-1] for v in fold} for fold in validation] == as_named
    assert set().union(*validation) == pooled_videos, "every non-test video is validated exactly once"
    assert sum(len(v) for v in validation) == len(pooled_videos)
    for fold in range(3):
        training = _fold_videos(tmp_path / "folds", fold, "train")
        assert training == pooled_videos - validation[fold]
        seen = {i for v in training for i in video_ids(v.split("-", 1)[-1])}
        held = {i for v in validation[fold] for i in video_ids(v.split("-", 1)[-1])}
        assert not seen & held, f"fold {fold}: an identity on both sides"
    assert not test_videos & set().union(*validation)


def test_self_blends_and_landmarks_follow_their_real_crops(prepared, tmp_path):
    make_folds(prepared, tmp_path / "folds", k=3, seed=0)
    for fold in range(3):
        root = tmp_path / "folds" / f"fold-{fold}"
        assert not any(s.path.name.startswith("sbi-") for s in list_split(root, "validation"))
        real_train = {s.path.stem for s in list_split(root, "train") if s.label == 0}
        blends = [s.path for s in list_split(root, "train") if s.path.name.startswith("sbi-")]
        assert blends and all(p.stem[len("sbi-"):].rsplit("_", 1)[0] in real_train for p in blends)
        for part in ("train", "validation"):
            marks = load_landmarks(root / part)
            assert {s.path.name for s in list_split(root, part)} == set(marks)
        assert (root / "prepare.json").is_file()
    original = {p.name: p.read_bytes() for p in prepared.glob("*/*/*.png")}
    make_folds(prepared, tmp_path / "folds", k=2, seed=1)  # rebuilding replaces the views only
    assert not (tmp_path / "folds" / "fold-2").exists()
    assert {p.name: p.read_bytes() for p in prepared.glob("*/*/*.png")} == original


def test_folds_refuse_what_cannot_be_folded(prepared, tmp_path):
    with pytest.raises(FoldsError, match="fewer than --k"):
        make_folds(prepared, tmp_path / "a", k=50)
    with pytest.raises(FoldsError, match="not a `trainer prepare` folder"):
        make_folds(tmp_path, tmp_path / "b", k=2)
    (tmp_path / "c").mkdir()
    (tmp_path / "c" / "keep.txt").write_text("mine")
    with pytest.raises(FoldsError, match="not a `trainer folds` folder"):
        make_folds(prepared, tmp_path / "c", k=2)
    assert (tmp_path / "c" / "keep.txt").read_text() == "mine"
    result = runner.invoke(app, ["folds", str(prepared), "--k", "2", "--splits", "train,bogus", "--out", str(tmp_path / "d")])
    assert result.exit_code == 2 and "--splits" in result.output and "Traceback" not in result.output


def _scores(folder: Path, rows: list[tuple[str, int, float]]) -> Path:
    folder.mkdir(parents=True)
    with open(folder / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["crop", "video", "label", "clean"])
        for crop, label, score in rows:
            writer.writerow([crop, video_id(crop), label, f"{score:.6f}"])
    return folder


def test_pool_scores_every_crop_once_and_videos_by_their_mean(tmp_path):
    rng = np.random.default_rng(0)
    folds = []
    for fold in range(3):
        rows = []
        for v in range(6):
            label = v % 2
            shift = 0.3 * label + 0.2 * fold  # each fold ranks well alone, the pool less well
            rows += [(f"{fold}{v:02d}_{frame:04d}_0.png", label, float(np.clip(shift + rng.normal(0.3, 0.1), 0, 1)))
                     for frame in range(4)]
        folds.append(_scores(tmp_path / f"eval-{fold}", rows))
    pooled = pool_reports(folds, threshold=0.5)
    crops = [row for f in folds for row in csv.DictReader(open(f / "scores.csv"))]
    labels = np.array([int(r["label"]) for r in crops])
    scores = np.array([float(r["clean"]) for r in crops])
    assert pooled["frames"]["n"] == len(crops) == 72
    assert pooled["frames"]["auc"] == pytest.approx(roc_auc_score(labels, scores))
    by_video: dict[str, list[int]] = {}
    for i, r in enumerate(crops):
        by_video.setdefault(r["video"], []).append(i)
    video_labels = [labels[i[0]] for i in by_video.values()]
    video_means = [scores[i].mean() for i in by_video.values()]
    assert pooled["videos"]["n"] == 18
    assert pooled["videos"]["auc"] == pytest.approx(roc_auc_score(video_labels, video_means))
    assert all(f["auc"] > pooled["frames"]["auc"] for f in pooled["folds"]), "pooling is not the mean of folds"
    low, high = pooled["videos"]["auc_ci95"]
    assert low <= pooled["videos"]["auc"] <= high and high - low > 0.05
    frame_low, frame_high = pooled["frames"]["auc_ci95"]
    assert frame_low <= pooled["frames"]["auc"] <= frame_high


def test_pool_reports_each_manipulation_against_every_real_video(tmp_path):
    # Deepfakes fakes outscore every real video, FaceSwap fakes underscore them: per method AUC 1 and 0,
    # while all fakes together sit in between. Names as `trainer prepare` gives FF++'s sub-folders.
    reals = [(f"{v:03d}_{f:04d}_0.png", 0, 0.3 + 0.01 * v) for v in range(1, 5) for f in range(2)]
    deepfakes = [(f"Deepfakes-{v:03d}_{v + 1:03d}_{f:04d}_0.png", 1, 0.9) for v in (1, 3) for f in range(2)]
    faceswap = [(f"FaceSwap-{v:03d}_{v + 1:03d}_{f:04d}_0.png", 1, 0.1 + 0.01 * v) for v in (1, 2, 3) for f in range(2)]
    folds = [_scores(tmp_path / "a", reals[:4] + deepfakes[:2] + faceswap[:2]),
             _scores(tmp_path / "b", reals[4:] + deepfakes[2:] + faceswap[2:])]
    pooled = pool_reports(folds, threshold=0.5)
    assert 0 < pooled["videos"]["auc"] < 1
    by_method = pooled["by_method"]
    assert sorted(by_method) == ["Deepfakes", "FaceSwap"]
    assert by_method["Deepfakes"]["auc"] == 1.0 and by_method["Deepfakes"]["fake"] == 2
    assert by_method["FaceSwap"]["auc"] == 0.0 and by_method["FaceSwap"]["fake"] == 3
    assert by_method["Deepfakes"]["real"] == by_method["FaceSwap"]["real"] == 4
    assert by_method["Deepfakes"]["fakes_right"] == 1.0 and by_method["FaceSwap"]["fakes_right"] == 0.0
    result = runner.invoke(app, ["pool", str(folds[0]), str(folds[1])])
    assert result.exit_code == 0
    assert "pooled videos, Deepfakes: 2 fake against 4 real, AUC 1.000" in result.output
    assert "pooled videos, FaceSwap: 3 fake against 4 real, AUC 0.000" in result.output
    # one method only: the pooled video line already says it all
    single = [_scores(tmp_path / "c", reals[:4] + deepfakes[:2]), _scores(tmp_path / "d", reals[4:] + deepfakes[2:])]
    assert pool_reports(single)["by_method"] == {}


def test_pool_refuses_overlapping_folds_and_bad_folders(tmp_path):
    a = _scores(tmp_path / "a", [("001_0000_0.png", 0, 0.1), ("002_0000_0.png", 1, 0.9)])
    b = _scores(tmp_path / "b", [("001_0000_0.png", 0, 0.2), ("003_0000_0.png", 1, 0.8)])
    with pytest.raises(FoldsError, match="overlap"):
        pool_reports([a, b])
    result = runner.invoke(app, ["pool", str(a), str(tmp_path / "missing")])
    assert result.exit_code == 2 and "missing" in result.output and "Traceback" not in result.output
    c = _scores(tmp_path / "c", [("004_0000_0.png", 0, 0.3), ("005_0000_0.png", 1, 0.7)])
    out = tmp_path / "pooled.json"
    result = runner.invoke(app, ["pool", str(a), str(c), "--json", str(out)])
    assert result.exit_code == 0 and "pooled videos: 4 (2 real, 2 fake), AUC 1.000" in result.output
    assert json.loads(out.read_text())["frames"]["n"] == 4


def test_paired_auc_difference_resamples_the_same_videos_for_both_detectors():
    rng = np.random.default_rng(0)
    videos = np.repeat(np.arange(40), 5)
    labels = (videos % 2).astype(int)
    difficulty = rng.normal(0, 1, 40)[videos]  # what makes a video hard, shared by both detectors
    informed = labels + difficulty + rng.normal(0, 0.3, len(labels))
    noisier = informed + rng.normal(0, 0.6, len(labels))
    same = grouped_auc_ci(labels, informed, videos, 300, 0, minus=informed)
    assert same == (0.0, 0.0)  # identical scores differ by nothing on every resample
    low, high = grouped_auc_ci(labels, informed, videos, 300, 0, minus=noisier)
    assert 0 < low < roc_auc_score(labels, informed) - roc_auc_score(labels, noisier) < high
    # pairing removes the videos' shared difficulty: narrower than either detector's own interval
    alone = grouped_auc_ci(labels, noisier, videos, 300, 0)
    assert high - low < alone[1] - alone[0]
