"""From a dataset to a verdict: trainer fit → trainer export → forensic scan, through the CLIs."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from typer.testing import CliRunner

from forensic import __version__
from forensic.bundle import load_bundle, sha256_file
from forensic.cli import app as forensic_app
from forensic.report import report_schema
from forensic.scan import Scanner, verdict_for
from forensic.selftest import GradientOracle, SelfTestSettings, attack
from trainer.cli import app as trainer_app

runner = CliRunner()


@pytest.fixture(scope="module")
def run_dir(face_dataset, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "b0"
    result = runner.invoke(trainer_app, [
        "fit", "--data", str(face_dataset), "--arch", "efficientnet_b0", "--epochs", "1", "--size", "64",
        "--batch-size", "8", "--workers", "0", "--out", str(out),
    ])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def bundle_dir(run_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bundles") / "tiny"
    result = runner.invoke(trainer_app, ["export", str(run_dir), "--out", str(out)])
    assert result.exit_code == 0, result.output
    # trainer synth's crops have no prepare.json: export says which margin it used, and why.
    assert "face crops at margin 1.3 (the default: the runs' training data has no prepare.json)" in result.output
    return out


def test_fit_writes_config_metrics_and_checkpoints(run_dir):
    config = json.loads((run_dir / "config.json").read_text())
    assert config["fit"]["arch"] == "efficientnet_b0" and config["fit"]["size"] == 64
    assert config["counts"]["train"] == {"real": 12, "fake": 12}
    epochs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in epochs] == [1]
    assert 0.0 <= epochs[0]["val_accuracy"] <= 1.0 and 0.0 <= epochs[0]["val_auc"] <= 1.0
    # The rate the last step trained with, not the cosine's 0 after it (3 steps: warm-up is 0).
    assert epochs[0]["lr"] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 2 / 3)))
    assert (run_dir / "best.pt").is_file() and (run_dir / "last.pt").is_file()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"))
    events.Reload()
    assert [e.value for e in events.Scalars("val_accuracy")] == pytest.approx([epochs[0]["val_accuracy"]])


def test_fit_resume_continues_and_refuses_to_overwrite(run_dir, face_dataset):
    again = runner.invoke(trainer_app, ["fit", "--data", str(face_dataset), "--arch", "efficientnet_b0",
                                        "--epochs", "1", "--size", "64", "--workers", "0", "--out", str(run_dir)])
    assert again.exit_code == 2 and "--resume" in again.output
    resumed = runner.invoke(trainer_app, ["fit", "--data", str(face_dataset), "--arch", "efficientnet_b0", "--epochs", "2",
                                          "--size", "64", "--batch-size", "8", "--workers", "0", "--out", str(run_dir), "--resume"])
    assert resumed.exit_code == 0, resumed.output
    epochs = [json.loads(line)["epoch"] for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    # A setting that changes what the run learns is refused, in one line, before any work ...
    other = runner.invoke(trainer_app, ["fit", "--out", str(run_dir), "--epochs", "3", "--lr", "0.1", "--resume"])
    assert other.exit_code == 2 and other.output.strip().count("\n") == 0
    assert "cannot resume with other settings (lr 0.0003 → 0.1)" in other.output
    # ... and a finished run is not silently retrained.
    done = runner.invoke(trainer_app, ["fit", "--out", str(run_dir), "--resume"])
    assert done.exit_code == 2 and "already trained for 2 epochs" in done.output


def test_export_writes_a_verified_calibrated_bundle(bundle_dir):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    entry = manifest["models"][0]
    assert entry["sha256"] == sha256_file(bundle_dir / "model.onnx")
    assert entry["onnx_max_difference"] <= 1e-4 and entry["outputs"] == ["logits", "cam"]
    assert manifest["input"]["size"] == 64 and manifest["class_order"] == ["real", "fake"]
    assert manifest["face_crop"]["margin"] == 1.3 and manifest["uncertain_band"] == 0.05
    point = manifest["calibration"]["operating_point"]
    assert point["criterion"] == "eer" and manifest["decision_threshold"] == point["threshold"]
    assert (point["n_real"], point["n_fake"]) == (4, 4)
    assert manifest["calibration"]["nll_calibrated"] <= manifest["calibration"]["nll_uncalibrated"] + 1e-9
    assert {"torch", "timm", "onnx"} <= set(manifest["producer"])
    assert load_bundle(bundle_dir).name == "tiny"


def test_scan_images_videos_and_junk(bundle_dir, sample_media, tmp_path):
    report_path = tmp_path / "report.json"
    paths = [sample_media[name] for name in ("astronaut.png", "astronaut_pan.mp4", "coffee_no_face.jpg", "corrupt.jpg")]
    result = runner.invoke(forensic_app, ["scan", *map(str, paths), "--bundle", str(bundle_dir),
                                          "--json", str(report_path), "--frames", "6"])
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, report_schema())
    files = {Path(f["path"]).name: f for f in report["files"]}
    assert report["provider"] == "CPUExecutionProvider"
    assert report["bundle"]["sha256"] == sha256_file(bundle_dir / "manifest.json")

    image = files["astronaut.png"]
    assert image["kind"] == "image"
    assert image["faces"] == 1 and image["frames_analyzed"] == 1
    assert image["sha256"] == sha256_file(sample_media["astronaut.png"])
    band = report["settings"]["uncertain_band"]
    assert image["verdict"] == verdict_for(image["score"], image["threshold"], band)

    video = files["astronaut_pan.mp4"]
    assert video["kind"] == "video" and video["frames_analyzed"] == 6 and video["faces"] == 1
    assert [frame["index"] for frame in video["frames"]] == [0, 4, 8, 11, 15, 19]

    assert files["coffee_no_face.jpg"]["verdict"] == "no-face" and files["coffee_no_face.jpg"]["score"] is None

    junk = files["corrupt.jpg"]
    assert junk["verdict"] == "error" and "corrupt.jpg" in junk["error"] and junk["score"] is None
    assert result.exit_code == 1, result.output  # completed, but a file could not be analysed


def test_exit_status_for_pipelines(bundle_dir, sample_media):
    image = str(sample_media["astronaut.png"])
    always_fake = ["--threshold", "0", "--bundle", str(bundle_dir)]
    assert runner.invoke(forensic_app, ["scan", image, *always_fake]).exit_code == 0
    assert runner.invoke(forensic_app, ["scan", image, *always_fake, "--fail-on-fake"]).exit_code == 3
    never_fake = ["--threshold", "1", "--bundle", str(bundle_dir), "--fail-on-fake"]
    assert runner.invoke(forensic_app, ["scan", image, *never_fake]).exit_code == 0
    assert runner.invoke(forensic_app, ["scan", image, str(sample_media["corrupt.jpg"]), *never_fake]).exit_code == 1


def test_scan_folder_recurses_and_json_to_stdout_is_pure(bundle_dir, sample_media, tmp_path):
    folder = sample_media["astronaut.png"].parent
    completed = subprocess.run(
        [sys.executable, "-m", "forensic", "scan", str(folder), "--bundle", str(bundle_dir), "--json", "-", "--frames", "2"],
        capture_output=True, text=True, timeout=300,
    )
    report = json.loads(completed.stdout)  # nothing but the report on stdout
    jsonschema.validate(report, report_schema())
    assert sorted(Path(f["path"]).name for f in report["files"]) == sorted(sample_media)
    assert "corrupt.jpg" in completed.stderr and "Traceback" not in completed.stderr
    assert completed.returncode == 1


def test_scan_refuses_a_tampered_bundle(bundle_dir, sample_media, tmp_path):
    tampered = tmp_path / "tampered"
    tampered.mkdir()
    (tampered / "manifest.json").write_text((bundle_dir / "manifest.json").read_text())
    (tampered / "model.onnx").write_bytes((bundle_dir / "model.onnx").read_bytes() + b"\0")
    result = runner.invoke(forensic_app, ["scan", str(sample_media["astronaut.png"]), "--bundle", str(tampered)])
    assert result.exit_code == 2
    assert "SHA-256" in result.output and "Traceback" not in result.output


def test_fit_reports_a_malformed_dataset_in_one_line(tmp_path):
    (tmp_path / "train" / "real").mkdir(parents=True)
    result = runner.invoke(trainer_app, ["fit", "--data", str(tmp_path), "--out", str(tmp_path / "run"), "--epochs", "1"])
    assert result.exit_code == 2
    assert "error:" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("app,name", [(forensic_app, "forensic"), (trainer_app, "trainer")])
def test_version_and_help_with_examples(app, name):
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.strip() == f"{name} {__version__}"
    help_text = runner.invoke(app, ["--help"]).output
    assert "Examples:" in help_text


def test_heatmaps_and_html_report(bundle_dir, sample_media, tmp_path):
    import re

    import numpy as np
    from PIL import Image

    heatmaps, html_dir, report_path = tmp_path / "heatmaps", tmp_path / "html", tmp_path / "report.json"
    paths = [str(sample_media[name]) for name in ("astronaut.png", "astronaut_pan.mp4", "corrupt.jpg")]
    result = runner.invoke(forensic_app, ["scan", *paths, "--bundle", str(bundle_dir), "--frames", "3",
                                          "--heatmaps", str(heatmaps), "--html", str(html_dir), "--json", str(report_path)])
    assert result.exit_code == 1, result.output
    report = json.loads(report_path.read_text())
    listed = [identity["heatmap"] for f in report["files"] for identity in f["identities"]]
    assert len(listed) == 2 and all(Path(p).is_file() for p in listed)
    heatmap = np.asarray(Image.open(listed[0]))
    assert heatmap.shape == (64, 64, 3)  # the bundle's input size: the face crop, overlaid
    page = (html_dir / "index.html").read_text()
    assert report["bundle"]["sha256"] in page and "corrupt.jpg" in page
    assert page.count("<svg") == 1  # one timeline: the video
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 4  # face + heatmap per identity
    assert "src=\"http" not in page  # self-contained


def test_a_heatmap_that_cannot_be_written_fails_its_file_not_the_batch(bundle_dir, sample_media, tmp_path):
    heatmaps, report_path = tmp_path / "heatmaps", tmp_path / "report.json"
    image, video = sample_media["astronaut.png"], sample_media["astronaut_pan.mp4"]
    # A folder where the photo's heatmap file must go: writing it fails.
    blocked = heatmaps / f"{image.stem}_{sha256_file(image)[:8]}_identity0.png"
    blocked.mkdir(parents=True)
    result = runner.invoke(forensic_app, ["scan", str(image), str(video), "--bundle", str(bundle_dir), "--frames", "3",
                                          "--heatmaps", str(heatmaps), "--json", str(report_path)])
    assert result.exit_code == 1, result.output
    photo, clip = json.loads(report_path.read_text())["files"]
    assert photo["verdict"] == "error" and photo["error"] == f"{blocked}: cannot write the heatmap (Is a directory)"
    assert f"error: {blocked}: cannot write the heatmap" in result.output
    assert clip["verdict"] in ("real", "fake", "uncertain") and Path(clip["identities"][0]["heatmap"]).is_file()

    # A legal 246-character name made a heatmap name over 255 bytes: the verdict was lost.
    long_name = tmp_path / ("a" * 246 + ".png")
    long_name.write_bytes(image.read_bytes())
    result = runner.invoke(forensic_app, ["scan", str(long_name), "--bundle", str(bundle_dir),
                                          "--heatmaps", str(heatmaps), "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    [entry] = json.loads(report_path.read_text())["files"]
    assert entry["verdict"] in ("real", "fake", "uncertain") and Path(entry["identities"][0]["heatmap"]).is_file()

    # A heatmap folder that cannot be made is refused before anything is scanned.
    not_a_folder = tmp_path / "file.txt"
    not_a_folder.write_text("x")
    refused = runner.invoke(forensic_app, ["scan", str(image), "--bundle", str(bundle_dir),
                                           "--heatmaps", str(not_a_folder / "maps")])
    assert refused.exit_code == 2 and refused.output.startswith(f"error: {not_a_folder / 'maps'}: cannot make")


def test_self_test_attacks_within_epsilon_and_reports_fragility(bundle_dir, sample_media, tmp_path):
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    assert manifest["models"][0]["gradient_graph"]["cosine"] >= 0.999  # verified at export
    report_path = tmp_path / "report.json"
    result = runner.invoke(forensic_app, ["scan", str(sample_media["astronaut.png"]), "--bundle", str(bundle_dir),
                                          "--self-test", "--self-test-eps", "1/255,4/255,16/255", "--self-test-steps", "5",
                                          "--json", str(report_path)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    jsonschema.validate(report, report_schema())
    entry = report["files"][0]
    test = entry["self_test"]
    assert test["attack"] == "pgd" and test["fallback_reason"] is None and test["faces_attacked"] == 1
    schedule = [1 / 255, 4 / 255, 16 / 255]
    assert test["epsilons"] == pytest.approx(schedule) and test["search"] == "bisection"
    tried = [t["epsilon"] for t in test["trials"]]
    assert tried == sorted(tried) and set(tried) <= set(test["epsilons"]) and len(tried) <= 2, "bisection: 2 of 3"
    for trial in test["trials"]:
        assert 0 < trial["max_perturbation"] <= trial["epsilon"] + 1e-6
        assert trial["flipped"] == ((trial["score"] >= entry["threshold"]) == (test["towards"] == "fake"))
        assert 1 <= trial["steps"] <= 5 and (trial["flipped"] or trial["steps"] == 5), "only a flip stops early"
    flipped = [t["epsilon"] for t in test["trials"] if t["flipped"]]
    assert flipped, "PGD should flip an untrained 1-epoch model's verdict within 16/255"
    below = [t for t in test["trials"] if t["epsilon"] < min(flipped)]
    assert min(flipped) == test["epsilons"][0] or (below and not below[-1]["flipped"]
                                                   and test["epsilons"].index(below[-1]["epsilon"]) + 1
                                                   == test["epsilons"].index(min(flipped))), "bracketed"
    assert test["fragility"] == min(flipped) and test["fragile"] == (min(flipped) <= 1 / 255 + 1e-9)
    # The full sweep the bisection and early stops replace (every ε, every step) finds the same ε.
    bundle = load_bundle(bundle_dir)
    scanner = Scanner(bundle, device="cpu", keep_crops=True)
    crops = scanner.scan_file(sample_media["astronaut.png"]).crops
    assert len(crops) == 1
    pixels = scanner.runner.to_pixels(np.stack([crop[0] for crop in crops.values()]))
    labels = np.full(1, int(test["towards"] == "real"), dtype=np.int64)  # the verdict the attack pushes away from
    oracle = GradientOracle(bundle, ["CPUExecutionProvider"])
    swept = [eps for eps in schedule
             if (scanner.runner.predict_pixels(attack(scanner.runner, oracle, pixels, labels, eps,
                                                      SelfTestSettings(steps=5))[0]).ensemble[0]
                 >= entry["threshold"]) != bool(labels[0])]
    assert test["fragility"] == pytest.approx(min(swept))
