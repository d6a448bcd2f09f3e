"""`trainer calibrate` given several bundles: one ensemble of all their models, its files copied
and renamed, scored by forensic as its sources score, and calibrated together on the data."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from forensic.bundle import load_bundle, sha256_file
from forensic.inference import EnsembleRunner
from trainer.cli import app
from trainer.data.datasets import list_split, read_rgb, scan_crop
from trainer.export.calibration import choose_threshold

pytestmark = pytest.mark.usefixtures("one_torch_thread")

runner = CliRunner()


def _one_line_error(result, problem: str) -> None:
    assert result.exit_code == 2, result.output
    assert result.output.startswith("error: ") and problem in result.output, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def test_calibrate_makes_one_calibrated_ensemble_of_several_bundles(tiny_lite0_run, tmp_path):
    run, data = tiny_lite0_run
    pair, single, combined = tmp_path / "pair", tmp_path / "single", tmp_path / "combined"
    exported = runner.invoke(app, ["export", str(run), str(run), "--weight", "1", "--weight", "3", "--out", str(pair),
                                   "--no-gradient-graph"])
    assert exported.exit_code == 0, exported.output
    exported = runner.invoke(app, ["export", str(run), "--out", str(single)])  # with its gradient graph
    assert exported.exit_code == 0, exported.output
    sources = [load_bundle(pair), load_bundle(single)]
    assert sources[1].models[0].gradient_graph, "the single bundle must carry a gradient graph to be renamed"

    result = runner.invoke(app, ["calibrate", str(pair), str(single), "--data", str(data), "--out", str(combined),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert f"the 3 models of {pair}, {single} as one ensemble" in result.output
    assert [sha256_file(source.path / "manifest.json") for source in sources] == [s.sha256 for s in sources], \
        "the source bundles are left as they are"

    bundle = load_bundle(combined)  # forensic's loader checks every file against its SHA-256
    originals = [(source, entry) for source in sources for entry in source.models]
    assert [entry.name for entry in bundle.models] == ["0-efficientnet_lite0", "1-efficientnet_lite0", "2-efficientnet_lite0"]
    assert [entry.file for entry in bundle.models] == [f"model_{i}_efficientnet_lite0.onnx" for i in range(3)]
    assert [entry.sha256 for entry in bundle.models] == [entry.sha256 for _, entry in originals]
    assert [entry.weight for entry in bundle.models] == [1.0, 1.0, 1.0], "several bundles: equal weights"
    assert bundle.models[2].gradient_graph == "model_2_efficientnet_lite0.grad.onnx"
    assert sha256_file(combined / bundle.models[2].gradient_graph) == \
        sha256_file(single / sources[1].models[0].gradient_graph)
    records = [entry["source_bundle"] for entry in bundle.manifest["models"]]
    assert [(r["sha256"], r["model"]) for r in records] == [(s.sha256, e.name) for s, e in originals]
    assert [r["sha256"] for r in bundle.manifest["calibration"]["combined_from"]] == [s.sha256 for s in sources]
    assert bundle.margin == sources[0].margin and bundle.input_size == sources[0].input_size

    # Each member scores a crop as it does in its own bundle; the threshold is the combined ensemble's
    # equal-error point on the validation crops.
    samples = list_split(data, "validation")
    pixels = EnsembleRunner.to_pixels(np.stack([scan_crop(read_rgb(s.path), bundle.input_size) for s in samples]))
    margins = EnsembleRunner(bundle, device="cpu").margins(pixels)
    for member, (source, entry) in zip(bundle.models, originals):
        assert np.allclose(margins[member.name], EnsembleRunner(source, device="cpu").margins(pixels)[entry.name])
    scores = EnsembleRunner(bundle, device="cpu").predict_pixels(pixels).ensemble
    labels = np.array([s.label for s in samples])
    assert bundle.threshold == pytest.approx(choose_threshold(labels, scores, "eer")["threshold"], abs=1e-5)
    point = bundle.manifest["calibration"]["operating_point"]
    assert point["n_real"] + point["n_fake"] == len(samples)

    weighted = runner.invoke(app, ["calibrate", str(pair), str(single), "--data", str(data), "--out",
                                   str(tmp_path / "weighted"), "--weight", "2", "--weight", "1", "--weight", "1"])
    assert weighted.exit_code == 0, weighted.output
    assert [entry.weight for entry in load_bundle(tmp_path / "weighted").models] == [2.0, 1.0, 1.0]

    # BUNDLE:MODEL takes one model of a bundle: here the pair's second, beside the single bundle's.
    chosen = runner.invoke(app, ["calibrate", f"{pair}:1-efficientnet_lite0", str(single), "--data", str(data),
                                 "--out", str(tmp_path / "chosen")])
    assert chosen.exit_code == 0, chosen.output
    picked = load_bundle(tmp_path / "chosen")
    assert [entry.sha256 for entry in picked.models] == [sources[0].models[1].sha256, sources[1].models[0].sha256]
    assert picked.manifest["models"][0]["source_bundle"]["model"] == "1-efficientnet_lite0"


def test_calibrate_refuses_bundles_that_cannot_share_crops_in_one_line(tiny_lite0_run, tmp_path):
    run, data = tiny_lite0_run
    plain = tmp_path / "plain"
    exported = runner.invoke(app, ["export", str(run), "--out", str(plain), "--no-gradient-graph"])
    assert exported.exit_code == 0, exported.output
    wider = tmp_path / "wider"
    shutil.copytree(plain, wider)
    manifest = json.loads((wider / "manifest.json").read_text())
    manifest["face_crop"]["margin"] = 1.6
    (wider / "manifest.json").write_text(json.dumps(manifest))
    mirrored = runner.invoke(app, ["calibrate", str(plain), "--data", str(data), "--out", str(tmp_path / "mirror"),
                                   "--mirror-average"])
    assert mirrored.exit_code == 0, mirrored.output

    def combine(*arguments: str | Path):
        return runner.invoke(app, ["calibrate", *map(str, arguments), "--data", str(data), "--out", str(tmp_path / "out")])

    _one_line_error(combine(plain, wider), "face crop margin (1.6) differ from")
    _one_line_error(combine(plain, tmp_path / "mirror"), "differ in mirror averaging")
    _one_line_error(combine(plain, plain, "--weight", "1"), "1 --weight value(s) for 2 models")
    _one_line_error(combine(plain, plain, "--weight", "1", "--weight", "0"), "each weight must be a finite number > 0")
    _one_line_error(combine(f"{plain}:no-such-model", plain), "no model 'no-such-model' in it (its models: 'efficientnet_lite0')")
    assert not (tmp_path / "out").exists(), "a refused combination writes nothing"
    both = combine(plain, tmp_path / "mirror", "--no-mirror-average")
    assert both.exit_code == 0, both.output
    assert not load_bundle(tmp_path / "out").mirror_average
