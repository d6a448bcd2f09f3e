"""forensic.bundle (the manifest contract) and forensic.inference (running it in ONNX Runtime),
with tiny real ONNX models exported from PyTorch."""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from forensic.bundle import MANIFEST_NAME, BundleError, load_bundle, sha256_file, write_bundle
from forensic.inference import EnsembleRunner

SIZE = 16
MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


class TinyNet(nn.Module):
    """(N, 3, S, S) -> (N, 2) logits of a few units (tanh-bounded), so softmax is far from flat
    or saturated and the scores differ between inputs, models and normalisations."""

    def __init__(self, seed: int):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Linear(4, 2)
        with torch.no_grad():
            self.conv.weight.copy_(torch.randn(self.conv.weight.shape, generator=generator) * 0.3)
            self.conv.bias.copy_(torch.randn(4, generator=generator) * 0.5)
            self.head.weight.copy_(torch.randn(2, 4, generator=generator) * 1.5)
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.conv(x)).mean(dim=(2, 3)))


class Normalised(nn.Module):
    """Wraps a net so that it takes pixels in [0, 1] and normalises them itself."""

    def __init__(self, net: nn.Module, mean, std):
        super().__init__()
        self.net = net
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, x):
        return self.net((x - self.mean) / self.std)


def export(model: nn.Module, path: Path) -> Path:
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (torch.rand(2, 3, SIZE, SIZE),), str(path), dynamo=False, opset_version=17,
            input_names=["pixels"], output_names=["logits"],
            dynamic_axes={"pixels": {0: "batch"}, "logits": {0: "batch"}},
        )
    return path


def make_manifest(models: list[dict], **overrides) -> dict:
    manifest = {
        "name": "tiny",
        "created": "2024-01-01T00:00:00+00:00",
        "models": models,
        "input": {"size": SIZE, "color_order": "RGB", "layout": "NCHW", "pixel_range": [0, 1],
                  "mean": list(MEAN), "std": list(STD), "normalize_in_graph": True},
        "face_crop": {"margin": 1.3},
        "class_order": ["real", "fake"],
        "decision_threshold": 0.5,
        "temperature": 1.0,
    }
    manifest.update(overrides)
    return manifest


def softmax(logits: np.ndarray) -> np.ndarray:
    logits = logits.astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def torch_logits(model: nn.Module, crops: np.ndarray) -> np.ndarray:
    pixels = torch.from_numpy(crops.astype(np.float32).transpose(0, 3, 1, 2) / 255.0)
    with torch.no_grad():
        return model(pixels).numpy()


@pytest.fixture(scope="module")
def nets(tmp_path_factory) -> dict:
    """Two tiny models (taking pixels in [0, 1]) and their ONNX files."""
    folder = tmp_path_factory.mktemp("onnx")
    first, second = TinyNet(1).eval(), TinyNet(2).eval()
    return {
        "first": (first, export(first, folder / "first.onnx")),
        "second": (second, export(second, folder / "second.onnx")),
    }


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """7 noisy crops of different brightness and tint."""
    rng = np.random.default_rng(0)
    base = np.linspace(10, 245, 7)[:, None, None, None] * rng.uniform(0.6, 1.0, size=(7, 1, 1, 3))
    return np.clip(base + rng.normal(0, 30, size=(7, SIZE, SIZE, 3)), 0, 255).astype(np.uint8)


@pytest.fixture
def bundle_dir(tmp_path, nets) -> Path:
    out = tmp_path / "bundle"
    write_bundle(out, make_manifest([{"name": "first", "file": "model.onnx", "arch": "tiny", "weight": 1.0}]),
                 {"model.onnx": nets["first"][1]})
    return out


def rewrite_manifest(bundle_dir: Path, change) -> None:
    path = bundle_dir / MANIFEST_NAME
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


# --------------------------------------------------------------------------------------------
# write_bundle / load_bundle


def test_write_and_load_round_trip(bundle_dir, nets):
    bundle = load_bundle(bundle_dir)
    manifest_bytes = (bundle_dir / MANIFEST_NAME).read_bytes()
    assert bundle.sha256 == hashlib.sha256(manifest_bytes).hexdigest()
    assert bundle.path == bundle_dir
    assert bundle.name == "tiny"
    assert bundle.input_size == SIZE
    assert bundle.margin == pytest.approx(1.3)
    assert bundle.threshold == pytest.approx(0.5)
    assert bundle.fake_index == 1
    assert bundle.manifest["schema_version"] == 1
    (entry,) = bundle.models
    assert (entry.name, entry.file, entry.arch, entry.weight) == ("first", "model.onnx", "tiny", 1.0)
    assert entry.sha256 == sha256_file(nets["first"][1]) == sha256_file(bundle_dir / "model.onnx")
    assert len(entry.sha256) == 64
    on_disk = json.loads(manifest_bytes)
    assert on_disk["models"][0]["sha256"] == entry.sha256
    # Only the bundle's files, no staging folder left behind.
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["manifest.json", "model.onnx"]
    assert [p.name for p in bundle_dir.parent.iterdir() if p.name.startswith(".")] == []


def test_write_bundle_does_not_modify_the_callers_manifest(tmp_path, nets):
    manifest = make_manifest([{"name": "first", "file": "m.onnx"}])
    snapshot = json.loads(json.dumps(manifest))
    write_bundle(tmp_path / "b", manifest, {"m.onnx": nets["first"][1]})
    assert manifest == snapshot


def test_model_defaults_for_arch_and_weight(tmp_path, nets):
    bundle = write_bundle(tmp_path / "b", make_manifest([{"name": "first", "file": "m.onnx"}]),
                          {"m.onnx": nets["first"][1]})
    assert bundle.models[0].arch == "first"
    assert bundle.models[0].weight == 1.0


def test_modified_model_file_is_refused(bundle_dir):
    model = bundle_dir / "model.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="SHA-256") as info:
        load_bundle(bundle_dir)
    assert "model.onnx" in str(info.value)


def _external_data_copy(onnx_path: Path, folder: Path) -> Path:
    """The same model saved with its weights in a separate external-data file beside it."""
    import onnx

    folder.mkdir(parents=True, exist_ok=True)
    onnx.save_model(onnx.load(str(onnx_path)), str(folder / "model.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="model.weights", size_threshold=0)
    assert (folder / "model.weights").is_file()
    return folder / "model.onnx"


def test_model_with_external_data_is_refused_on_load(bundle_dir, nets, tmp_path):
    # Its weights would be loaded by ONNX Runtime from a file no SHA-256 pins.
    external = _external_data_copy(nets["first"][1], tmp_path / "external")
    (bundle_dir / "model.onnx").write_bytes(external.read_bytes())
    (bundle_dir / "model.weights").write_bytes((tmp_path / "external" / "model.weights").read_bytes())
    rewrite_manifest(bundle_dir, lambda m: m["models"][0].update(sha256=sha256_file(bundle_dir / "model.onnx")))
    with pytest.raises(BundleError, match="external data file \\(model.weights\\)") as info:
        load_bundle(bundle_dir)
    assert "model.onnx" in str(info.value)


def test_write_bundle_refuses_a_model_with_external_data(tmp_path, nets):
    external = _external_data_copy(nets["first"][1], tmp_path / "external")
    with pytest.raises(BundleError, match="external data"):
        write_bundle(tmp_path / "b", make_manifest([{"name": "n", "file": "n.onnx"}]), {"n.onnx": external})
    assert not (tmp_path / "b").exists()


def test_missing_model_file_is_refused(bundle_dir):
    (bundle_dir / "model.onnx").unlink()
    with pytest.raises(BundleError, match="missing"):
        load_bundle(bundle_dir)


def test_missing_manifest(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(tmp_path / "empty")
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(tmp_path / "nowhere")


def test_bad_json(bundle_dir):
    (bundle_dir / MANIFEST_NAME).write_text("{ not json", encoding="utf-8")
    with pytest.raises(BundleError, match="manifest.json") as info:
        load_bundle(bundle_dir)
    assert "JSON" in str(info.value)


def test_manifest_not_an_object(bundle_dir):
    (bundle_dir / MANIFEST_NAME).write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(bundle_dir)


def test_manifest_not_utf8(bundle_dir):
    (bundle_dir / MANIFEST_NAME).write_bytes(b"\xff\xfe\x00{")
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("version", [3, 0, "1", None, 1.0, True])
def test_wrong_schema_version(bundle_dir, version):
    rewrite_manifest(bundle_dir, lambda m: m.__setitem__("schema_version", version))
    with pytest.raises(BundleError, match="manifest.json") as info:
        load_bundle(bundle_dir)
    assert "schema_version" in str(info.value)


@pytest.mark.parametrize("key", ["name", "models", "input", "face_crop", "class_order", "decision_threshold"])
def test_missing_top_level_key(bundle_dir, key):
    rewrite_manifest(bundle_dir, lambda m: m.pop(key))
    with pytest.raises(BundleError, match="manifest.json") as info:
        load_bundle(bundle_dir)
    assert key in str(info.value)


@pytest.mark.parametrize("key", ["name", "file", "sha256"])
def test_model_entry_missing_key(bundle_dir, key):
    rewrite_manifest(bundle_dir, lambda m: m["models"][0].pop(key))
    with pytest.raises(BundleError, match="manifest.json") as info:
        load_bundle(bundle_dir)
    assert key in str(info.value)


@pytest.mark.parametrize("key", ["size", "mean", "std", "normalize_in_graph"])
def test_input_missing_key(bundle_dir, key):
    rewrite_manifest(bundle_dir, lambda m: m["input"].pop(key))
    with pytest.raises(BundleError, match="manifest.json") as info:
        load_bundle(bundle_dir)
    assert key in str(info.value)


@pytest.mark.parametrize("models", [[], {}, "model.onnx"])
def test_models_must_be_a_non_empty_list(bundle_dir, models):
    rewrite_manifest(bundle_dir, lambda m: m.__setitem__("models", models))
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("order", [["real"], ["real", "real"], ["real", "fake", "unsure"], ["Real", "Fake"], []])
def test_bad_class_order(bundle_dir, order):
    rewrite_manifest(bundle_dir, lambda m: m.__setitem__("class_order", order))
    with pytest.raises(BundleError, match="manifest.json") as info:
        load_bundle(bundle_dir)
    assert "class_order" in str(info.value)


@pytest.mark.parametrize("key, value", [
    ("class_order", None),
    ("class_order", 3),
    ("models", [1]),
    ("input", "size mean std normalize_in_graph"),
])
def test_wrongly_typed_manifest_field_is_a_bundle_error(bundle_dir, key, value):
    rewrite_manifest(bundle_dir, lambda m: m.__setitem__(key, value))
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("face_crop", [{}, None])
def test_face_crop_without_margin_is_a_bundle_error(bundle_dir, face_crop):
    rewrite_manifest(bundle_dir, lambda m: m.__setitem__("face_crop", face_crop))
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("weight", [0.0, -1.0, "heavy", float("inf")])
def test_non_positive_model_weight_is_a_bundle_error(bundle_dir, weight):
    rewrite_manifest(bundle_dir, lambda m: m["models"][0].__setitem__("weight", weight))
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("temperature", [0.0, -2.0, "warm", None, float("inf")])
def test_non_positive_model_temperature_is_a_bundle_error(bundle_dir, temperature):
    rewrite_manifest(bundle_dir, lambda m: m["models"][0].__setitem__("temperature", temperature))
    with pytest.raises(BundleError, match="temperature must be a finite number > 0"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("bias", ["high", None, float("inf")])
def test_non_finite_model_bias_is_a_bundle_error(bundle_dir, bias):
    rewrite_manifest(bundle_dir, lambda m: m["models"][0].__setitem__("bias", bias))
    with pytest.raises(BundleError, match="bias must be a finite number"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("file", ["../model.onnx", "/tmp/model.onnx", "sub/model.onnx", "..", "", 5, None])
def test_model_file_outside_the_bundle_is_a_bundle_error(bundle_dir, file):
    # The manifest must not make forensic read (or trainer export delete) files elsewhere.
    rewrite_manifest(bundle_dir, lambda m: m["models"][0].__setitem__("file", file))
    with pytest.raises(BundleError, match="must be a plain file name inside the bundle"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("sha256", [5, "abc", "A" * 64, None])
def test_malformed_sha256_is_a_bundle_error(bundle_dir, sha256):
    rewrite_manifest(bundle_dir, lambda m: m["models"][0].__setitem__("sha256", sha256))
    with pytest.raises(BundleError, match="sha256 must be 64 lowercase hex digits"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("name", [["a"], "", 3])
def test_model_name_must_be_a_string(bundle_dir, name):
    rewrite_manifest(bundle_dir, lambda m: m["models"][0].__setitem__("name", name))
    with pytest.raises(BundleError, match="must be a non-empty string"):
        load_bundle(bundle_dir)


def test_duplicate_model_names_are_a_bundle_error(bundle_dir):
    # Two entries of one name would make the runner silently score one model twice.
    rewrite_manifest(bundle_dir, lambda m: m["models"].append(dict(m["models"][0])))
    with pytest.raises(BundleError, match="model names must be unique"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("graph, problem", [
    ("model.grad.onnx", "gradient_graph must be an object"),
    ({"file": "../g.onnx", "sha256": "0" * 64}, "plain file name"),
    ({"file": "g.onnx"}, "sha256 must be 64 lowercase hex digits"),
])
def test_malformed_gradient_graph_entry_is_a_bundle_error(bundle_dir, graph, problem):
    rewrite_manifest(bundle_dir, lambda m: m["models"][0].__setitem__("gradient_graph", graph))
    with pytest.raises(BundleError, match=problem):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("key, value, problem", [
    ("size", "224", "input.size must be an integer in 1..2048"),
    ("size", 0, "input.size must be an integer in 1..2048"),
    ("size", 2049, "input.size must be an integer in 1..2048"),
    ("size", 10**30, "input.size must be an integer in 1..2048"),
    ("mean", [0.5, 0.5], "input.mean must be three finite numbers"),
    ("std", [0.5, float("nan"), 0.5], "input.std must be three finite numbers"),
    ("std", [0.5, 0.0, 0.5], "input.std must be > 0"),
    ("normalize_in_graph", "yes", "normalize_in_graph must be true or false"),
])
def test_malformed_input_spec_is_a_bundle_error(bundle_dir, key, value, problem):
    rewrite_manifest(bundle_dir, lambda m: m["input"].__setitem__(key, value))
    with pytest.raises(BundleError, match=problem):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("key, value", [("color_order", "BGR"), ("layout", "NHWC")])
def test_unsupported_input_layout(bundle_dir, key, value):
    rewrite_manifest(bundle_dir, lambda m: m["input"].__setitem__(key, value))
    with pytest.raises(BundleError, match="manifest.json"):
        load_bundle(bundle_dir)


@pytest.mark.parametrize("threshold", [-0.01, 1.01, 5, "0.5", None])
def test_threshold_out_of_range(bundle_dir, threshold):
    rewrite_manifest(bundle_dir, lambda m: m.__setitem__("decision_threshold", threshold))
    with pytest.raises(BundleError, match="manifest.json") as info:
        load_bundle(bundle_dir)
    assert "decision_threshold" in str(info.value)


@pytest.mark.parametrize("threshold", [0, 0.0, 1, 1.0, 0.73])
def test_threshold_bounds_are_accepted(bundle_dir, threshold):
    # Edited manifests are still verified by content, so re-pinning is not needed for this.
    rewrite_manifest(bundle_dir, lambda m: m.__setitem__("decision_threshold", threshold))
    assert load_bundle(bundle_dir).threshold == pytest.approx(threshold)


def test_write_bundle_validates_before_writing(tmp_path, nets):
    out = tmp_path / "bad"
    with pytest.raises(BundleError, match="decision_threshold"):
        write_bundle(out, make_manifest([{"name": "first", "file": "m.onnx"}], decision_threshold=2.0),
                     {"m.onnx": nets["first"][1]})
    assert not out.exists()
    assert list(tmp_path.iterdir()) == [], "a failed write must not leave a staging folder"


def test_write_bundle_refuses_non_empty_folder_without_force(bundle_dir, nets):
    before = (bundle_dir / MANIFEST_NAME).read_bytes()
    with pytest.raises(BundleError, match="force"):
        write_bundle(bundle_dir, make_manifest([{"name": "second", "file": "model.onnx"}]),
                     {"model.onnx": nets["second"][1]})
    assert (bundle_dir / MANIFEST_NAME).read_bytes() == before


def test_write_bundle_into_existing_empty_folder(tmp_path, nets):
    out = tmp_path / "empty"
    out.mkdir()
    bundle = write_bundle(out, make_manifest([{"name": "first", "file": "m.onnx"}]), {"m.onnx": nets["first"][1]})
    assert bundle.models[0].sha256 == sha256_file(nets["first"][1])


def test_write_bundle_force_replaces_manifest_and_keeps_other_files(bundle_dir, nets):
    card = bundle_dir / "MODEL_CARD.md"
    card.write_text("# keep me\n")
    old_sha = load_bundle(bundle_dir).sha256
    bundle = write_bundle(
        bundle_dir,
        make_manifest([{"name": "second", "file": "model.onnx", "weight": 2.0}], name="replaced"),
        {"model.onnx": nets["second"][1]},
        force=True,
    )
    assert card.read_text() == "# keep me\n"
    assert bundle.name == "replaced"
    assert bundle.sha256 != old_sha
    assert bundle.models[0].name == "second"
    assert bundle.models[0].sha256 == sha256_file(nets["second"][1]) == sha256_file(bundle_dir / "model.onnx")
    assert load_bundle(bundle_dir).sha256 == bundle.sha256
    assert [p.name for p in bundle_dir.parent.iterdir() if p.name.startswith(".")] == []


# --------------------------------------------------------------------------------------------
# EnsembleRunner


def test_runner_matches_torch_softmax(bundle_dir, nets, crops):
    runner = EnsembleRunner(load_bundle(bundle_dir), device="cpu")
    assert runner.providers == ["CPUExecutionProvider"]
    prediction = runner.predict(crops)
    expected = softmax(torch_logits(nets["first"][0], crops))[:, 1]
    assert prediction.ensemble.shape == (len(crops),)
    np.testing.assert_allclose(prediction.ensemble, expected, atol=1e-5)
    np.testing.assert_allclose(prediction.per_model["first"], expected, atol=1e-5)
    # The test would be vacuous if every score were the same.
    assert expected.max() - expected.min() > 0.05


def test_runner_batches_give_the_same_result(bundle_dir, crops):
    bundle = load_bundle(bundle_dir)
    whole = EnsembleRunner(bundle, device="cpu", batch_size=32).predict(crops).ensemble
    pieces = EnsembleRunner(bundle, device="cpu", batch_size=3).predict(crops).ensemble
    assert pieces.shape == (len(crops),)
    np.testing.assert_allclose(pieces, whole, atol=1e-6)


def test_runner_empty_input(bundle_dir):
    prediction = EnsembleRunner(load_bundle(bundle_dir), device="cpu").predict(np.zeros((0, SIZE, SIZE, 3), np.uint8))
    assert prediction.ensemble.shape == (0,)
    assert prediction.per_model["first"].shape == (0,)


def test_ensemble_weights(tmp_path, nets, crops):
    bundle = write_bundle(
        tmp_path / "pair",
        make_manifest([{"name": "a", "file": "a.onnx", "weight": 1.0}, {"name": "b", "file": "b.onnx", "weight": 3.0}]),
        {"a.onnx": nets["first"][1], "b.onnx": nets["second"][1]},
    )
    prediction = EnsembleRunner(bundle, device="cpu").predict(crops)
    p1 = softmax(torch_logits(nets["first"][0], crops))[:, 1]
    p2 = softmax(torch_logits(nets["second"][0], crops))[:, 1]
    assert np.abs(p1 - p2).max() > 0.05, "the two test models must disagree"
    np.testing.assert_allclose(prediction.per_model["a"], p1, atol=1e-5)
    np.testing.assert_allclose(prediction.per_model["b"], p2, atol=1e-5)
    np.testing.assert_allclose(prediction.ensemble, 0.25 * p1 + 0.75 * p2, atol=1e-5)


def test_temperature_divides_the_logits(tmp_path, nets, crops):
    bundle = write_bundle(tmp_path / "t2", make_manifest([{"name": "first", "file": "m.onnx"}], temperature=2.0),
                          {"m.onnx": nets["first"][1]})
    prediction = EnsembleRunner(bundle, device="cpu").predict(crops)
    logits = torch_logits(nets["first"][0], crops)
    np.testing.assert_allclose(prediction.ensemble, softmax(logits / 2.0)[:, 1], atol=1e-5)
    assert np.abs(softmax(logits)[:, 1] - softmax(logits / 2.0)[:, 1]).max() > 0.01


def test_class_order_fake_first_is_honoured(tmp_path, nets, crops):
    bundle = write_bundle(tmp_path / "rev", make_manifest([{"name": "first", "file": "m.onnx"}], class_order=["fake", "real"]),
                          {"m.onnx": nets["first"][1]})
    assert bundle.fake_index == 0
    prediction = EnsembleRunner(bundle, device="cpu").predict(crops)
    np.testing.assert_allclose(prediction.ensemble, softmax(torch_logits(nets["first"][0], crops))[:, 0], atol=1e-5)


def test_runner_normalises_when_the_graph_does_not(tmp_path, nets, crops):
    raw = nets["first"][0]  # this net, exported alone, expects normalised input
    bundle = write_bundle(
        tmp_path / "norm",
        make_manifest([{"name": "first", "file": "m.onnx"}],
                      input={"size": SIZE, "mean": list(MEAN), "std": list(STD), "normalize_in_graph": False}),
        {"m.onnx": nets["first"][1]},
    )
    prediction = EnsembleRunner(bundle, device="cpu").predict(crops)
    expected = softmax(torch_logits(Normalised(raw, MEAN, STD).eval(), crops))[:, 1]
    np.testing.assert_allclose(prediction.ensemble, expected, atol=1e-5)
    unnormalised = softmax(torch_logits(raw, crops))[:, 1]
    assert np.abs(expected - unnormalised).max() > 0.01, "normalisation must change the result"


def test_runner_does_not_normalise_twice(tmp_path, crops):
    # A graph that normalises itself (normalize_in_graph true) must receive raw [0, 1] pixels.
    model = Normalised(TinyNet(3), MEAN, STD).eval()
    onnx_path = export(model, tmp_path / "in_graph.onnx")
    bundle = write_bundle(tmp_path / "b", make_manifest([{"name": "n", "file": "n.onnx"}]), {"n.onnx": onnx_path})
    prediction = EnsembleRunner(bundle, device="cpu").predict(crops)
    np.testing.assert_allclose(prediction.ensemble, softmax(torch_logits(model, crops))[:, 1], atol=1e-5)


def test_unloadable_model_is_a_bundle_error(tmp_path):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not an onnx model")
    bundle = write_bundle(tmp_path / "b", make_manifest([{"name": "junk", "file": "junk.onnx"}]), {"junk.onnx": junk})
    with pytest.raises(BundleError, match="junk.onnx"):
        EnsembleRunner(bundle, device="cpu")


def test_decision_threshold_is_honoured_by_the_scanner(tmp_path, nets):
    from skimage import data

    from forensic.faces import FaceDetector
    from forensic.scan import Scanner

    image_path = tmp_path / "astronaut.png"
    Image.fromarray(data.astronaut()).save(image_path)
    detector = FaceDetector(device="cpu")
    verdicts = {}
    for threshold in (0.0, 1.0):
        bundle = write_bundle(tmp_path / f"t{threshold}",
                              make_manifest([{"name": "first", "file": "m.onnx"}], decision_threshold=threshold),
                              {"m.onnx": nets["first"][1]})
        scanner = Scanner(bundle, device="cpu", detector=detector)
        assert scanner.threshold == threshold
        result = scanner.scan_file(image_path)
        assert result.error is None
        assert result.threshold == threshold
        assert 0.0 < result.score < 1.0
        verdicts[threshold] = result.verdict
    # Score >= 0 always, so threshold 0 calls it fake; a score below 1 with threshold 1 is real.
    assert verdicts == {0.0: "fake", 1.0: "real"}


def test_write_bundle_force_removes_the_old_model_files_the_new_manifest_drops(bundle_dir, nets):
    card = bundle_dir / "MODEL_CARD.md"
    card.write_text("# keep me\n")
    write_bundle(bundle_dir, make_manifest([{"name": "a", "file": "model_0_a.onnx"}, {"name": "b", "file": "model_1_b.onnx"}]),
                 {"model_0_a.onnx": nets["first"][1], "model_1_b.onnx": nets["second"][1]}, force=True)
    assert sorted(p.name for p in bundle_dir.iterdir()) == ["MODEL_CARD.md", MANIFEST_NAME, "model_0_a.onnx", "model_1_b.onnx"]
    assert load_bundle(bundle_dir).models[1].name == "b"


class NaNNet(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))[:, :2] * float("nan")


def test_a_model_giving_nan_makes_an_error_verdict_not_a_real_one(tmp_path, sample_media):
    # NaN >= threshold is False, so a NaN score would have been called "real".
    from forensic.scan import Scanner

    bundle = write_bundle(tmp_path / "nan", make_manifest([{"name": "nan", "file": "m.onnx"}]),
                          {"m.onnx": export(NaNNet(), tmp_path / "nan.onnx")})
    scanner = Scanner(bundle, device="cpu")
    face, no_face = (scanner.scan_file(sample_media[name]) for name in ("astronaut.png", "coffee_no_face.jpg"))
    assert face.verdict == "error" and face.score is None
    assert face.error == f"{sample_media['astronaut.png']}: the bundle's models gave a non-finite score (NaN or infinity); no verdict"
    assert no_face.verdict == "no-face"
