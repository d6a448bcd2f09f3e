"""Mirror averaging (the manifest's input.mirror_average): forensic scores, attacks and maps each
crop as the mean of it and its mirror image, and `trainer export --mirror-average` and `trainer
calibrate` fit the calibration on that mean."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from typer.testing import CliRunner

from forensic.bundle import load_bundle, sha256_file
from forensic.cli import app as forensic_app
from forensic.errors import BundleError
from forensic.inference import EnsembleRunner
from forensic.report import report_schema
from forensic.selftest import GradientOracle
from trainer.cli import app
from trainer.data.datasets import list_split, read_rgb, scan_crop
from trainer.models.registry import Detector

from calibrated_ensembles import BUNDLE_TEMPERATURE, write_calibrated_ensemble

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
RUN_SIZE = 64  # tiny_lite0_run's size (conftest): Lite0's map is 2 x 2 there; at 32 px (1 x 1) a map is its own mirror image
runner = CliRunner()


def _toy(seed: int) -> Detector:
    torch.manual_seed(seed)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1),
                             nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    return Detector(backbone, (0.5,) * 3, (0.25,) * 3, shallow_layer="2").eval()


def test_an_ensemble_is_scored_and_attacked_as_the_mean_of_each_crop_and_its_mirror(tmp_path, sample_media):
    members = {"a": (_toy(0), 2.0, 0.4, 1.5), "b": (_toy(1), 1.0, 3.0, -1.0)}  # weight, temperature, bias
    bundle = write_calibrated_ensemble(tmp_path, members, SIZE, mirror_average=True)
    assert bundle.manifest["schema_version"] == 2 and bundle.mirror_average
    pixels = torch.rand(6, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(3))
    labels = torch.tensor([0, 1, 0, 1, 1, 0])

    x = pixels.clone().requires_grad_(True)
    p_fake, one_view = 0, 0
    for model, weight, temperature, bias in members.values():
        given, mirrored = model(x), model(x.flip(-1))
        mean = (given + mirrored) / 2
        p_fake = p_fake + weight / 3 * torch.sigmoid(((mean[:, 1] - mean[:, 0]) / temperature + bias) / BUNDLE_TEMPERATURE)
        one_view = one_view + weight / 3 * torch.sigmoid(((given[:, 1] - given[:, 0]) / temperature + bias)
                                                         / BUNDLE_TEMPERATURE)
    scores = EnsembleRunner(bundle, device="cpu").predict_pixels(pixels.numpy()).ensemble
    assert np.allclose(scores, p_fake.detach().numpy(), atol=1e-5)
    assert np.abs(scores - one_view.detach().numpy()).max() > 1e-3, "the mirror must be a second view here"
    loss = -torch.where(labels == 1, p_fake, 1 - p_fake).log().sum()
    (expected,) = torch.autograd.grad(loss, x)
    gradient = torch.from_numpy(GradientOracle(bundle, ["CPUExecutionProvider"])(pixels.numpy(), labels.numpy()))
    assert F.cosine_similarity(gradient.flatten(1), expected.flatten(1), dim=1).min() > 0.999
    assert torch.allclose(gradient.flatten(1).norm(dim=1), expected.flatten(1).norm(dim=1), rtol=1e-3)

    # A scan says which way its faces were scored, in the JSON and the HTML report.
    scanned = runner.invoke(forensic_app, ["scan", str(sample_media["astronaut.png"]), "--bundle", str(tmp_path / "bundle"),
                                           "--json", str(tmp_path / "report.json"), "--html", str(tmp_path / "html")])
    assert scanned.exit_code in (0, 1), scanned.output
    report = json.loads((tmp_path / "report.json").read_text())
    jsonschema.validate(report, report_schema())
    assert report["bundle"]["mirror_average"] is True and report["files"][0]["faces"] >= 1
    assert "each face scored as the mean of it and its mirror image" in (tmp_path / "html" / "index.html").read_text()

    # An older forensic reads schema version 1 only: a mirror bundle must not pass for one.
    manifest_path = tmp_path / "bundle" / "manifest.json"
    written = json.loads(manifest_path.read_text())
    manifest_path.write_text(json.dumps({**written, "schema_version": 1}))
    with pytest.raises(BundleError, match="input.mirror_average needs schema_version 2"):
        load_bundle(tmp_path / "bundle")
    plain = write_calibrated_ensemble(tmp_path / "plain", members, SIZE, mirror_average=False)
    assert plain.manifest["schema_version"] == 1 and not plain.mirror_average


def _export(run: Path, out: Path, *options: str) -> None:
    """The run twice, as a two-member ensemble: each member gets its own Platt scaling, which is
    fitted however small the margins of a 2-epoch model are (the ensemble's temperature is bounded)."""
    result = runner.invoke(app, ["export", str(run), str(run), "--weight", "1", "--weight", "1", "--out", str(out),
                                 "--no-gradient-graph", *options])
    assert result.exit_code == 0, result.output


def test_export_and_calibrate_fit_the_calibration_on_the_mirror_averaged_scores(tiny_lite0_run, tmp_path):
    run, data = tiny_lite0_run
    _export(run, tmp_path / "plain")
    _export(run, tmp_path / "mirror", "--mirror-average")
    plain, mirror = load_bundle(tmp_path / "plain"), load_bundle(tmp_path / "mirror")
    assert mirror.manifest["schema_version"] == 2 and mirror.mirror_average and not plain.mirror_average

    # Scores and maps: the mean over each crop and its mirror image, the mirrored map mirrored back.
    crops = np.stack([scan_crop(read_rgb(sample.path), RUN_SIZE) for sample in list_split(data, "validation")])
    pixels = EnsembleRunner.to_pixels(crops)
    flipped = np.ascontiguousarray(pixels[..., ::-1])
    one, two = EnsembleRunner(plain, device="cpu"), EnsembleRunner(mirror, device="cpu")
    name = plain.models[0].name
    given, mirrored = one.margins(pixels)[name], one.margins(flipped)[name]
    assert np.allclose(two.margins(pixels)[name], (given + mirrored) / 2, atol=1e-6)
    assert np.abs(given - mirrored).max() > 1e-4, "the mirror must be a second view here"
    cam = (one.predict_pixels(pixels).cams[name] + one.predict_pixels(flipped).cams[name][..., ::-1]) / 2
    assert np.allclose(two.predict_pixels(pixels).cams[name], cam, atol=1e-5)

    # trainer calibrate refits from the ONNX models what export fitted from PyTorch.
    before = sha256_file(tmp_path / "plain" / "manifest.json")
    result = runner.invoke(app, ["calibrate", str(tmp_path / "plain"), "--data", str(data), "--out",
                                 str(tmp_path / "recalibrated"), "--mirror-average", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "each crop averaged with its mirror image" in result.output
    assert sha256_file(tmp_path / "plain" / "manifest.json") == before, "the source bundle is left as it is"
    recalibrated = load_bundle(tmp_path / "recalibrated")
    warnings = recalibrated.manifest["calibration"]["warnings"]
    assert warnings, "a 2-epoch model's scores hit the temperature's bound: calibrate must warn"
    assert [line for line in result.output.splitlines() if line.startswith("warning: ")] == \
        [f"warning: {warning}" for warning in warnings], "each calibration warning printed, once"
    assert recalibrated.mirror_average and recalibrated.manifest["schema_version"] == 2
    assert recalibrated.models[0].sha256 == plain.models[0].sha256
    assert recalibrated.manifest["calibration"]["recalibrated_from"]["sha256"] == plain.sha256
    def members(bundle):
        return np.array([[entry.temperature, entry.bias] for entry in bundle.models])

    assert np.allclose(members(recalibrated), members(mirror), rtol=1e-2)
    assert recalibrated.threshold == pytest.approx(mirror.threshold, abs=1e-4)
    assert not np.allclose(members(mirror), members(plain), rtol=1e-2), "the two calibrations must differ here"
    back = runner.invoke(app, ["calibrate", str(tmp_path / "mirror"), "--data", str(data), "--out",
                               str(tmp_path / "back"), "--no-mirror-average", "--device", "cpu"])
    assert back.exit_code == 0, back.output
    unmirrored = load_bundle(tmp_path / "back")
    assert unmirrored.manifest["schema_version"] == 1 and not unmirrored.mirror_average
    assert np.allclose(members(unmirrored), members(plain), rtol=1e-2)
    assert unmirrored.threshold == pytest.approx(plain.threshold, abs=1e-4)

    for arguments, problem in [(["--data", str(tmp_path / "nowhere")], "validation: not found"),
                               (["--data", str(data), "--operating-point", "best"], "unknown operating point"),
                               (["--data", str(data), "--device", "tpu"], "--device 'tpu'")]:
        refused = runner.invoke(app, ["calibrate", str(tmp_path / "plain"), "--out", str(tmp_path / "x"), *arguments])
        assert refused.exit_code == 2 and refused.output.startswith("error: ") and problem in refused.output
        assert len(refused.output.strip().splitlines()) == 1
    same = runner.invoke(app, ["calibrate", str(tmp_path / "plain"), "--data", str(data), "--out", str(tmp_path / "plain")])
    assert same.exit_code == 2 and "another folder" in same.output
    taken = runner.invoke(app, ["calibrate", str(tmp_path / "plain"), "--data", str(data), "--out", str(tmp_path / "mirror")])
    assert taken.exit_code == 2 and "exists and is not empty (use --force" in taken.output
    assert load_bundle(tmp_path / "mirror").sha256 == mirror.sha256
    under_a_file = runner.invoke(app, ["calibrate", str(tmp_path / "plain"), "--data", str(data), "--out",
                                       str(tmp_path / "plain" / "manifest.json" / "new")])
    assert under_a_file.exit_code == 2 and "manifest.json is not a folder" in under_a_file.output
