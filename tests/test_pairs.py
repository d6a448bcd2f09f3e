"""Face-crop pairs (a pairs.csv source like DFDC's), several sources in one dataset, `--paired`
batches and the `uploads` augmentation: real MTCNN, real files, real training steps."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from skimage import data

from forensic.faces import FaceDetector, crop_face
from trainer.config import AUGMENTS, FitConfig
from trainer.data import augment
from trainer.data.augment import RECIPES, degrade, uploads_transform
from trainer.data.corruptions import h264
from trainer.data.datasets import Sample, list_split
from trainer.data.extraction import pad_tight_crop
from trainer.data.pairing import PairedBatchSampler, find_partners, partner_video
from trainer.data.prepare import prepare_dataset
from trainer.data.sources import PrepareError, find_videos
from trainer.data.synthetic import panning_frames, self_blend, write_video
from trainer.fit import fit

BOX = (181.0, 62.0, 268.0, 172.0)  # MTCNN's box of scikit-image's astronaut
SIZE, MARGIN = 48, 1.15


def tight_crop(image: np.ndarray, shift: int = 0) -> np.ndarray:
    """A DFDC-like crop: about the face box itself, 112 px."""
    x1, y1, x2, y2 = BOX
    return crop_face(image, (x1 + shift, y1, x2 + shift, y2), 1.0, 112)


@pytest.fixture(scope="module")
def detector() -> FaceDetector:
    return FaceDetector()


@pytest.fixture(scope="module")
def pairs_source(tmp_path_factory) -> Path:
    """Six real/fake pairs of tight astronaut crops (fakes blended, names unrelated), listed in pairs.csv."""
    src = tmp_path_factory.mktemp("pairs")
    (src / "real").mkdir()
    (src / "fake").mkdir()
    astronaut = data.astronaut()
    rows = []
    for k in range(6):
        real = tight_crop(astronaut, shift=3 * k)
        fake = tight_crop(self_blend(astronaut, BOX, np.random.default_rng(k), ratio=1.0), shift=3 * k)
        Image.fromarray(real).save(src / "real" / f"r{k}abc.jpg", quality=95)
        Image.fromarray(fake).save(src / "fake" / f"zz{k}fake.jpg", quality=95)
        rows.append({"real": f"real/r{k}abc.jpg", "fake": f"fake/zz{k}fake.jpg"})
    with open(src / "pairs.csv", "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["real", "fake"])
        writer.writeheader()
        writer.writerows(rows)
    return src


@pytest.fixture(scope="module")
def ffpp_source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("ffpp")
    (src / "real").mkdir()
    (src / "fake" / "Deepfakes").mkdir(parents=True)
    astronaut = data.astronaut()
    write_video(src / "real" / "044.mp4", panning_frames(astronaut, count=6))
    blended = self_blend(astronaut, BOX, np.random.default_rng(0), ratio=1.0)
    write_video(src / "fake" / "Deepfakes" / "044_945.mp4", panning_frames(blended, count=6))
    return src


@pytest.fixture(scope="module")
def prepared(pairs_source, ffpp_source, detector, tmp_path_factory):
    out = tmp_path_factory.mktemp("prepared") / "dataset"
    result = prepare_dataset([ffpp_source, pairs_source], out, frames=3, size=SIZE, margin=MARGIN,
                             split=(0.5, 0.5, 0), seed=0, detector=detector)
    return out, result


def test_pairs_csv_lists_each_fake_after_its_real_named_after_it(pairs_source):
    videos = find_videos(pairs_source)
    assert [v.name for v in videos[:2]] == ["r0abc", "pair-r0abc"]
    assert videos[1].path.name == "zz0fake.jpg" and videos[1].label == "fake" and videos[1].partner == "r0abc"
    assert all(v.padded and v.kind == "image" for v in videos)


def test_pairs_csv_errors_name_the_line(tmp_path):
    (tmp_path / "real").mkdir()
    Image.fromarray(tight_crop(data.astronaut())).save(tmp_path / "real" / "a.jpg")
    (tmp_path / "pairs.csv").write_text("real,fake\nreal/a.jpg,fake/missing.jpg\n")
    with pytest.raises(PrepareError, match=r"line 2: .*missing\.jpg is not an image file"):
        find_videos(tmp_path)
    (tmp_path / "pairs.csv").write_text("real,fake\nreal/a.jpg,../../etc/passwd\n")
    with pytest.raises(PrepareError, match="line 2"):
        find_videos(tmp_path)


def test_a_pair_shares_a_split_and_the_fake_is_cut_with_its_reals_box(prepared, pairs_source, detector):
    out, result = prepared
    manifest = json.loads((out / "prepare.json").read_text())
    for k in range(6):
        assert manifest["assignment"][f"r{k}abc"] == manifest["assignment"][f"pair-r{k}abc"]
    # both sources are split on their own: the one FF++ group and some pairs in each split used
    splits = {manifest["assignment"][name] for name in ("044", "Deepfakes-044_945")}
    assert len(splits) == 1
    assert {manifest["assignment"][f"r{k}abc"] for k in range(6)} == {"train", "validation"}
    records = {json.loads(line)["video"]: json.loads(line) for line in (out / ".done").read_text().splitlines()}
    real, fake = records["r0abc"], records["pair-r0abc"]
    assert real["box"] == fake["box"] and real["crops"]["r0abc_0000_0.png"] == fake["crops"]["pair-r0abc_0000_0.png"]
    # the crop is crop_face on the mirror-padded source, at the box MTCNN finds on the black-padded one
    image = np.asarray(Image.open(pairs_source / "fake" / "zz0fake.jpg").convert("RGB"))
    black, mirrored, pad = pad_tight_crop(image)
    expected = crop_face(mirrored, tuple(real["box"]), MARGIN, SIZE)
    split = manifest["assignment"]["r0abc"]
    written = np.asarray(Image.open(out / split / "fake" / "pair-r0abc_0000_0.png"))
    assert np.array_equal(written, expected)
    found = detector.detect([pad_tight_crop(np.asarray(Image.open(pairs_source / "real" / "r0abc.jpg").convert("RGB")))[0]])[0]
    assert np.allclose(found[0].box, real["box"], atol=0.01)
    # the padded face sits in the middle: the 1.15 crop is wider than the 112 px source, yet shows no black bars
    assert written[:3].mean() > 20 and written[:, :3].mean() > 20


def test_resuming_reuses_the_reals_box_for_its_fake(prepared, pairs_source, ffpp_source, tmp_path):
    out, _ = prepared
    records = [json.loads(line) for line in (out / ".done").read_text().splitlines()]
    # drop the fake's record, as if the run had stopped between a real and its fake
    kept = [r for r in records if r["video"] != "pair-r1abc"]
    (out / ".done").write_text("".join(json.dumps(r) + "\n" for r in kept))
    again = prepare_dataset([ffpp_source, pairs_source], out, frames=3, size=SIZE, margin=MARGIN,
                            split=(0.5, 0.5, 0), seed=0)  # no detector: none may be needed
    assert again.processed == 1
    records = {json.loads(line)["video"]: json.loads(line) for line in (out / ".done").read_text().splitlines()}
    assert records["pair-r1abc"]["box"] == records["r1abc"]["box"]


def test_partners_follow_the_names_prepare_gives():
    assert partner_video("pair-r0abc") == "r0abc"
    assert partner_video("Deepfakes-044_945") == "044"
    assert partner_video("FaceSwap-100_200") == "100"
    assert partner_video("wild-clip_2023") is None
    names = [("044_0000_0.png", 0), ("044_0010_0.png", 0), ("r0abc_0000_0.png", 0), ("990_0000_0.png", 0),
             ("Deepfakes-044_945_0010_0.png", 1), ("Deepfakes-044_945_0012_0.png", 1), ("pair-r0abc_0000_0.png", 1),
             ("Face2Face-777_778_0000_0.png", 1)]
    samples = [Sample(Path(name), label) for name, label in names]
    assert find_partners(samples) == {4: 1, 5: 1, 6: 2}  # same frame, else the nearest; 777 has no real


def test_paired_batches_hold_each_fake_beside_its_partner():
    fakes, reals = list(range(10, 20)), list(range(10))
    partners = {f: f - 10 for f in fakes[:6]}
    sampler = PairedBatchSampler(fakes, partners, reals, batch_size=7, steps=5, seed=1)
    sampler.set_epoch(1)
    batches = list(sampler)
    assert len(batches) == 5 and all(len(b) == 7 for b in batches)
    for batch in batches:
        for fake, real in zip(batch[0:6:2], batch[1:6:2]):
            assert fake in fakes and real in reals
            if fake in partners:
                assert real == partners[fake]
    drawn = [i for b in batches for i in b[0:6:2]]
    assert sorted(drawn[:10]) == fakes  # one pass over the fakes before any repeats
    assert list(sampler) == batches  # an epoch is reproducible
    sampler.set_epoch(2)
    assert list(sampler) != batches


def test_uploads_augmentation_degrades_within_its_ranges():
    image = crop_face(data.astronaut(), BOX, 1.15, 64)
    torch.manual_seed(0)
    outputs = [degrade(image) for _ in range(200)]
    assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    changed = sum(not np.array_equal(o, image) for o in outputs)
    assert 80 < changed < 200  # most crops get a degradation, some none
    transform = uploads_transform(32)
    tensor = transform(image)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == torch.float32 and 0 <= tensor.min() <= tensor.max() <= 1


def test_uploads_without_h264_never_needs_pyav(monkeypatch):
    image = crop_face(data.astronaut(), BOX, 1.15, 64)
    monkeypatch.setitem(sys.modules, "av", None)  # as on a machine without PyAV: `import av` fails
    torch.manual_seed(0)
    outputs = [degrade(image, RECIPES["uploads-no-h264"]) for _ in range(200)]
    assert sum(not np.array_equal(o, image) for o in outputs) > 60  # the other degradations still fire
    assert uploads_transform(32, "uploads-no-h264")(image).shape == (3, 32, 32)
    torch.manual_seed(0)
    with pytest.raises(ImportError):  # the full recipe reaches H.264 within as many draws
        for _ in range(200):
            degrade(image)


def test_uploads_h264_reencodes_more_crops_and_harder(monkeypatch):
    """The recipe's point is its share of strong H.264: count the real encoder's calls and CRFs."""
    image = crop_face(data.astronaut(), BOX, 1.15, 64)
    crfs = {name: [] for name in ("uploads", "uploads-h264")}
    for name, seen in crfs.items():
        def encode(frames, crf, seen=seen):
            seen.append(crf)
            return h264(frames, crf=crf)

        monkeypatch.setattr(augment, "h264", encode)
        torch.manual_seed(0)
        outputs = [degrade(image, RECIPES[name]) for _ in range(400)]
        assert all(o.shape == image.shape and o.dtype == np.uint8 for o in outputs)
    assert all(20 <= c <= 40 for c in crfs["uploads"]) and all(23 <= c <= 45 for c in crfs["uploads-h264"])
    assert 0.25 < len(crfs["uploads-h264"]) / 400 < 0.45 and 0.08 < len(crfs["uploads"]) / 400 < 0.22
    strong = {name: sum(c >= 35 for c in seen) / 400 for name, seen in crfs.items()}
    assert strong["uploads-h264"] > 0.1 and strong["uploads-h264"] > 2.5 * strong["uploads"]
    assert uploads_transform(32, "uploads-h264")(image).shape == (3, 32, 32)


def test_fit_with_paired_batches_uploads_augmentation_and_self_blends_trains(prepared, tmp_path):
    out, _ = prepared
    config = FitConfig(data=str(out), out=str(tmp_path / "run"), arch="resnet_se", size=SIZE, epochs=1,
                       batch_size=8, epoch_size=16, augment="uploads", sbi=True, paired=True, workers=0)
    best = fit(config)
    assert best["epoch"] == 1
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["fit"]
    assert saved["paired"] is True and saved["augment"] == "uploads" and saved["epoch_size"] == 16
    train = list_split(out, "train")
    assert find_partners(train)  # the prepared pairs found each other


def test_every_uploads_recipe_is_an_augment_fit_accepts():
    assert {a for a in AUGMENTS if a.startswith("uploads")} == set(RECIPES)
