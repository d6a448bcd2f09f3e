"""`trainer eval` (trainer.evaluation, trainer.attacks, trainer.data.corruptions):
metrics against scikit-learn and their definitions, video grouping, attacks, gradient-masking
checks, corruptions, Grad-CAM, bundles (scored as forensic scores them, white-box through their
gradient graphs, black-box only without), the U-Net attack, --save-adv, the report folder and
--compare. No mocks: toy arrays, a tiny conv detector trained here, a deliberately
gradient-masked toy model, real `trainer fit` runs at 32 px and bundles exported here."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import average_precision_score, log_loss, roc_auc_score
from torch import nn
from typer.testing import CliRunner

from trainer.attacks.square import square_attack
from trainer.attacks.suite import DEFAULT_ATTACKS, AttackSpec, run_attack
from trainer.attacks.white_box import scorer_fgsm, scorer_pgd
from trainer.cli import app
from trainer.data.corruptions import DEFAULT_CORRUPTIONS, h264, reencode_video
from trainer.data.datasets import Sample
from trainer.evaluation.errors import EvaluationError
from trainer.evaluation.evaluate import EvalSettings, evaluate_run, stratified_subset
from trainer.evaluation.gradcam import feature_layer, grad_cam
from trainer.evaluation.html_report import masking_table_html
from trainer.evaluation.masking import CHECK_NAMES
from trainer.evaluation.metrics import (auc_score, binary_metrics, bootstrap_auc_ci, equal_error_rate, tpr_at_fpr, video_id,
                                        video_scores)
from trainer.evaluation.scorers import BundleScorer, TorchScorer
from trainer.evaluation.summary import summarise
from trainer.evaluation.sweep import collect
from trainer.models.registry import Detector

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SIZE = 32
runner = CliRunner()


# ----------------------------------------------------------------------------------- metrics

@pytest.fixture(scope="module")
def toy_scores() -> tuple[np.ndarray, np.ndarray]:
    """300 real and 200 fake scores, overlapping, with ties (rounded to 2 decimals)."""
    rng = np.random.default_rng(0)
    real = 1 / (1 + np.exp(-rng.normal(-1.0, 1.2, 300)))
    fake = 1 / (1 + np.exp(-rng.normal(1.0, 1.2, 200)))
    return np.r_[np.zeros(300, int), np.ones(200, int)], np.round(np.r_[real, fake], 2)


def test_metrics_agree_with_scikit_learn(toy_scores):
    y, s = toy_scores
    m = binary_metrics(y, s, bootstrap=200, seed=0)
    assert auc_score(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert m["average_precision"] == pytest.approx(average_precision_score(y, s), abs=1e-12)
    assert m["log_loss"] == pytest.approx(log_loss(y, s), abs=1e-9)
    assert m["accuracy"] == pytest.approx(((s >= 0.5) == y).mean())
    assert m["threshold"] == 0.5
    cm = m["confusion_matrix"]
    assert cm["tn"] == int(((s < 0.5) & (y == 0)).sum()) and cm["tp"] == int(((s >= 0.5) & (y == 1)).sum())
    assert cm["fp"] + cm["tn"] == 300 and cm["fn"] + cm["tp"] == 200
    assert m["counts"] == {"real": 300, "fake": 200} and m["n"] == 500


def _rates(y, s, t):
    return float((s[y == 0] >= t).mean()), float((s[y == 1] >= t).mean())  # FPR, TPR at "fake if >= t"


def test_eer_and_tpr_at_1pct_fpr_by_their_definitions(toy_scores):
    y, s = toy_scores
    thresholds = np.r_[np.inf, np.unique(s)[::-1]]  # every distinct decision rule, strictest first
    rates = [_rates(y, s, t) for t in thresholds]
    # TPR at 1 % FPR: the best TPR of any threshold whose FPR is at most 1 %.
    assert tpr_at_fpr(y, s, 0.01) == pytest.approx(max(tpr for fpr, tpr in rates if fpr <= 0.01))
    # EER: where FPR and FNR are closest (first such threshold), their mean.
    gaps = [abs(fpr - (1 - tpr)) for fpr, tpr in rates]
    best = int(np.argmin(gaps))
    eer, threshold = equal_error_rate(y, s)
    assert eer == pytest.approx((rates[best][0] + 1 - rates[best][1]) / 2)
    assert threshold == pytest.approx(min(thresholds[best], 1.0))
    # A case known by hand: real {.1,.2,.3,.6}, fake {.4,.7,.8,.9}: at t = .6, FPR = FNR = 1/4.
    y2, s2 = np.array([0, 0, 0, 0, 1, 1, 1, 1]), np.array([.1, .2, .3, .6, .4, .7, .8, .9])
    assert equal_error_rate(y2, s2) == (pytest.approx(0.25), pytest.approx(0.6))
    assert tpr_at_fpr(y2, s2, 0.01) == pytest.approx(0.75)


def test_bootstrap_interval_is_seeded_and_brackets_the_auc(toy_scores):
    y, s = toy_scores
    a = bootstrap_auc_ci(y, s, resamples=300, seed=1)
    assert a == bootstrap_auc_ci(y, s, resamples=300, seed=1)
    assert a != bootstrap_auc_ci(y, s, resamples=300, seed=2)
    assert a[0] < roc_auc_score(y, s) < a[1] and a[1] - a[0] < 0.2
    one_class = binary_metrics(np.zeros(5, int), np.linspace(0, 1, 5))
    assert one_class["auc"] is None and one_class["auc_ci95"] is None and one_class["eer"] is None


def test_video_level_groups_crops_by_name():
    assert video_id("Deepfakes-044_945_0012_0.png") == "Deepfakes-044_945"
    assert video_id(Path("x/000_0003_1.png")) == "000"
    assert video_id("loose.png") == "loose"
    assert video_id("Aaron_Peirsol_0001_0000_0.png") == "Aaron_Peirsol_0001"  # prepare's crop of an LFW photo
    # Names not made by trainer prepare are their own videos, not cut at their underscores.
    for name in ("George_W_Bush_0001.png", "celeb_id0_0001.png", "astronaut_000_0.png"):
        assert video_id(name) == Path(name).stem
    names = ["a_0000_0.png", "a_0001_0.png", "b_0000_0.png", "b_0005_1.png", "b_0009_0.png", "c_0000_0.png"]
    labels = np.array([0, 0, 1, 1, 1, 0])
    scores = np.array([0.1, 0.3, 0.9, 0.6, 0.3, 0.7])
    v = video_scores(names, labels, scores)
    assert v["ids"] == ["a", "b", "c"]
    assert v["labels"].tolist() == [0, 1, 0] and v["crops"].tolist() == [2, 3, 1]
    assert v["scores"] == pytest.approx([0.2, 0.6, 0.7])
    with pytest.raises(EvaluationError, match="'a'"):
        video_scores(names, np.array([0, 1, 1, 1, 1, 0]), scores)


def test_limit_takes_a_seeded_class_stratified_subset():
    samples = [Sample(Path(f"{i}.png"), int(i >= 30)) for i in range(40)]  # 30 real, 10 fake
    subset = stratified_subset(samples, 8, seed=0)
    assert len(subset) == 8 and sum(s.label for s in subset) == 2
    assert subset == stratified_subset(samples, 8, seed=0) != stratified_subset(samples, 8, seed=1)
    assert subset == sorted(subset, key=samples.index)
    assert stratified_subset(samples, 2, seed=0)[0].label == 0 and stratified_subset(samples, 2, seed=0)[1].label == 1
    assert stratified_subset(samples, None) == samples == stratified_subset(samples, 100)


# ----------------------------------------------------------------------------------- attacks

def make_batch(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Smooth 'real' images; 'fake' ones carry a high-frequency pattern. Quantised to uint8 levels."""
    g = torch.Generator().manual_seed(seed)
    base = F.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=SIZE, mode="bilinear", align_corners=False)
    labels = torch.arange(n) % 2
    pattern = (torch.rand(n, 1, SIZE, SIZE, generator=g) > 0.5).float() * 2 - 1
    pixels = (base * 1.4 - 0.2 + 0.05 * pattern * labels.view(-1, 1, 1, 1)).clamp(0, 1)
    return (pixels * 255).round() / 255, labels


def as_uint8(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels * 255).round().to(torch.uint8)


@pytest.fixture(scope="module")
def trained() -> Detector:
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                             nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
                             nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 2))
    model = Detector(backbone, (0.5,) * 3, (0.25,) * 3, shallow_layer="2")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for i in range(80):
        loss = F.cross_entropy(model(make_batch(32, i)[0]), make_batch(32, i)[1])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_eps_zero_attacks_leave_inputs_and_accuracy_unchanged(trained):
    pixels, labels = make_batch(24, seed=500)
    for spec in (AttackSpec("fgsm", 0.0), AttackSpec("pgd", 0.0, 5), AttackSpec("square", 0.0, 50)):
        assert torch.equal(run_attack(TorchScorer(trained), spec, pixels, labels, seed=3), pixels)
    specs = [AttackSpec("fgsm", 0.0), AttackSpec("pgd", 0.0, 10)]
    collected = collect(TorchScorer(trained), [(as_uint8(pixels), labels)], attacks=specs,
                        black_box=AttackSpec("square", 0.0, 20), corruptions=())
    for spec in specs + [collected.black_box]:
        assert np.array_equal(collected.scores[spec.name], collected.scores["clean"])


def test_robust_accuracy_is_at_most_clean_and_an_honest_model_passes_the_checks(trained):
    pixels, labels = make_batch(48, seed=1000)
    batches = [(as_uint8(pixels[:24]), labels[:24]), (as_uint8(pixels[24:]), labels[24:])]
    collected = collect(TorchScorer(trained), batches, n_batches=2, corruptions=(), seed=0)
    summary = summarise(collected, bootstrap=100)
    clean = summary["clean"]["frame"]["accuracy"]
    assert clean >= 0.8
    results = {r["name"]: r for r in summary["attacks"]["results"]}
    assert set(results) == {s.name for s in DEFAULT_ATTACKS} | {"square eps=4/255"}
    for result in results.values():
        assert result["accuracy"] <= clean + 1e-12, result["name"]
        assert 0.0 <= result["success_rate"] <= 1.0
    assert results["pgd20 eps=4/255"]["accuracy"] < clean  # the attacks do bite
    worst = summary["attacks"]["worst_case"]
    assert worst["accuracy"] == min(r["accuracy"] for r in results.values())
    assert worst["per_crop_accuracy"] <= worst["accuracy"]
    masking = summary["gradient_masking"]
    assert masking["nonzero_gradients"]["passed"] and masking["nonzero_gradients"]["mean_abs_gradient"] > 0
    assert masking["more_steps"]["passed"] and len(masking["more_steps"]["pairs"]) == 3
    assert masking["pgd_vs_fgsm"]["passed"] and masking["pgd_vs_fgsm"]["not_checked"] == ["fgsm eps=0.02"]
    assert masking["black_box"]["passed"] and masking["passed"]
    # Same seed, same numbers.
    again = collect(TorchScorer(trained), batches, attacks=DEFAULT_ATTACKS[-1:], corruptions=(), seed=0)
    assert np.array_equal(again.scores["pgd20 eps=4/255"], collected.scores["pgd20 eps=4/255"])
    assert np.array_equal(again.scores["square eps=4/255"], collected.scores["square eps=4/255"])


class RoundedBrightness(nn.Module):
    """A gradient-masked toy: rounds its input to 8 levels (torch.round: zero gradient) and calls
    an image fake when its mean quantised brightness exceeds t."""

    def __init__(self, t: float):
        super().__init__()
        self.t = t

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        margin = 200 * ((torch.round(pixels * 7) / 7).mean((1, 2, 3)) - self.t)
        return torch.stack([-margin / 2, margin / 2], 1)


def test_a_gradient_masked_model_trips_the_checks():
    g = torch.Generator().manual_seed(0)
    pixels = (torch.rand(48, 3, SIZE, SIZE, generator=g) * 255).round() / 255
    brightness = ((torch.round(pixels * 7) / 7).mean((1, 2, 3))).sort().values
    model = RoundedBrightness(float(brightness[23] + brightness[24]) / 2)  # between two crops: no ties
    with torch.no_grad():
        labels = model(pixels).argmax(1)  # the model is right on every clean crop
    specs = [AttackSpec("pgd", 4 / 255, 10, "4/255"), AttackSpec("pgd", 4 / 255, 20, "4/255")]
    collected = collect(TorchScorer(model), [(as_uint8(pixels), labels)], attacks=specs, corruptions=(), seed=0)
    summary = summarise(collected, bootstrap=100)
    masking = summary["gradient_masking"]
    assert summary["clean"]["frame"]["accuracy"] == 1.0
    assert masking["nonzero_gradients"]["passed"] is False
    assert masking["nonzero_gradients"]["mean_abs_gradient"] == 0.0
    assert masking["nonzero_gradients"]["zero_gradient_crop_fraction"] == 1.0
    # Gradient attacks get nowhere; a black-box random search does better.
    assert masking["black_box"]["passed"] is False
    assert masking["black_box"]["black_box_accuracy"] < masking["black_box"]["white_box_accuracy"] - masking["tolerance"]
    assert masking["passed"] is False
    # index.html shows each failed check's row in red, and only those.
    failed = [name for name in CHECK_NAMES if masking[name]["passed"] is False]
    table = masking_table_html(masking)
    rows = re.findall(r"<tr( class='fail')?><td>[^<]*</td><td>([^<]*)</td>", table)
    assert len(failed) >= 2 and len(rows) == 4
    assert [bool(css) for css, _ in rows] == [result == "FAILED" for _, result in rows]
    assert sum(bool(css) for css, _ in rows) == len(failed)


def test_scorer_attacks_are_trainer_attacks_for_a_torch_model(trained):
    """The attacks on the scorer interface give exactly the nn.Module attacks' examples (8 crops:
    the mean and the summed loss differ by a power of two, so signs are bit-equal)."""
    from trainer.attacks import white_box as attacks

    pixels, labels = make_batch(8, seed=3)
    scorer = TorchScorer(trained)
    assert torch.equal(scorer_fgsm(scorer, pixels, labels, 0.01), attacks.fgsm(trained, pixels, labels, 0.01))
    ours = scorer_pgd(scorer, pixels, labels, 4 / 255, 5, torch.Generator().manual_seed(7))
    theirs = attacks.pgd(trained, pixels, labels, 4 / 255, 5, generator=torch.Generator().manual_seed(7))
    assert torch.equal(ours, theirs)


def test_grad_cam_at_the_final_features_is_the_class_activation_map(trained):
    """With global average pooling and a linear head, Grad-CAM of the logit margin at the final
    feature map is the class activation map (w_fake − w_real) · A divided by h · w."""
    pixels, _ = make_batch(3, seed=11)
    assert feature_layer(trained, pixels) == "backbone.4"  # the ReLU after the last conv; pooling is 1 x 1
    cams = grad_cam(trained, pixels, "backbone.4")
    with torch.no_grad():
        features = trained.backbone[:5]((pixels - trained.mean) / trained.std)
        weight = trained.backbone[7].weight
        expected = torch.einsum("nchw,c->nhw", features, weight[1] - weight[0]) / (features.shape[2] * features.shape[3])
    assert cams.shape == (3, SIZE // 2, SIZE // 2)
    assert np.allclose(cams, expected.numpy(), atol=1e-6)


def test_square_attack_stays_in_the_ball_and_lowers_the_margin(trained):
    pixels, labels = make_batch(16, seed=7)
    adv = square_attack(TorchScorer(trained), pixels, labels, 0.05, queries=60, generator=torch.Generator().manual_seed(1))
    assert (adv - pixels).abs().max() <= 0.05 + 1e-6 and adv.min() >= 0 and adv.max() <= 1
    with torch.no_grad():
        before = F.cross_entropy(trained(pixels), labels, reduction="none")
        after = F.cross_entropy(trained(adv), labels, reduction="none")
    assert (after >= before - 1e-6).all() and after.mean() > before.mean()


# ------------------------------------------------------------------------------- corruptions

def test_corruptions_are_deterministic_and_keep_shape():
    rng = np.random.default_rng(0)
    images = np.clip(rng.normal(128, 50, (6, 33, 30, 3)), 0, 255).astype(np.uint8)  # odd side: padded for 4:2:0
    for corruption in DEFAULT_CORRUPTIONS:
        a, b = corruption.apply(images, 5), corruption.apply(images, 5)
        assert a.shape == images.shape and a.dtype == np.uint8, corruption.name
        assert np.array_equal(a, b), corruption.name
        assert not np.array_equal(a, images), corruption.name
    noise = DEFAULT_CORRUPTIONS[0]
    assert not np.array_equal(noise.apply(images, 5), noise.apply(images, 6))
    heavy, light = h264(images, crf=35), h264(images, crf=23)
    assert heavy.shape == light.shape == images.shape and not np.array_equal(heavy, light)
    assert np.abs(heavy.astype(int) - images).mean() > np.abs(light.astype(int) - images).mean()


@pytest.mark.parametrize("width", [224, 192, 300])
def test_h264_gives_the_same_clip_on_every_call_at_widths_libx264_mishandles(width):
    # libx264 from PyAV's wheel, on this machine, encoded 224-px crops differently from call to call in
    # one process (most of 10 calls distinct), so `trainer eval`'s H.264 figures could not be reproduced.
    from trainer.data.synthetic import astronaut

    # face crops as a scan makes them: a box that drifts and grows, resized (a plain pan did not show it)
    image = astronaut()[0]
    frames = np.stack([cv2.resize(image[50 + i: 300 + 2 * i, 100 + 2 * i: 350 + 3 * i], (width, 224)) for i in range(16)])
    clips = [h264(frames, crf=35) for _ in range(6)]
    assert all(np.array_equal(clips[0], clip) for clip in clips[1:])
    assert clips[0].shape == frames.shape and not np.array_equal(clips[0], frames)


def _frames_of(path: Path) -> np.ndarray:
    import av

    with av.open(str(path)) as container:
        return np.stack([frame.to_ndarray(format="rgb24") for frame in container.decode(video=0)])


def test_a_video_is_reencoded_whole_at_its_crf_and_its_source_is_left_alone(tmp_path):
    import av

    from trainer.data.synthetic import astronaut, panning_frames

    # lossless source with odd sides (4:2:0 needs even ones: the last row and column go)
    source = tmp_path / "clip.mkv"
    frames = [frame[:135, :201] for frame in panning_frames(astronaut()[0], count=12, width=240, height=160)]
    with av.open(str(source), mode="w") as container:
        stream = container.add_stream("ffv1", rate=10)
        stream.width, stream.height, stream.pix_fmt = 201, 135, "bgr0"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    before = source.read_bytes()
    light, heavy = tmp_path / "crf18.mp4", tmp_path / "crf40.mp4"
    assert reencode_video(source, light, 18) == reencode_video(source, heavy, 40) == 12
    assert source.read_bytes() == before
    original = np.stack(frames)[:, :134, :200].astype(int)
    decoded = {path: _frames_of(path) for path in (light, heavy)}
    assert all(frames.shape == (12, 134, 200, 3) for frames in decoded.values())
    assert heavy.stat().st_size < light.stat().st_size
    assert np.abs(decoded[light] - original).mean() < np.abs(decoded[heavy] - original).mean()
    with av.open(str(heavy)) as container:
        assert container.streams.video[0].codec_context.name == "h264" and container.streams.video[0].average_rate == 10
    # an unreadable source raises and leaves neither the target nor a half-written file
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"not a video")
    with pytest.raises(Exception):
        reencode_video(broken, tmp_path / "out.mp4", 35)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.mp4", "clip.mkv", "crf18.mp4", "crf40.mp4"]


# ------------------------------------------------------------------------ report and --compare

@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> tuple[Path, Path]:
    """A 1-epoch efficientnet_b0 run at 32 px, and a dataset whose test crops form videos of 3."""
    from trainer.config import FitConfig
    from trainer.fit import fit
    from trainer.data.synthetic import make_face_dataset

    root = tmp_path_factory.mktemp("eval")
    data = root / "data"
    make_face_dataset(data, {"train": 4, "validation": 4, "test": 6}, size=SIZE)
    for label in ("real", "fake"):
        for i, path in enumerate(sorted((data / "test" / label).glob("*.png"))):
            path.rename(path.with_name(f"{label}-clip{i // 3}_{i % 3:04d}_0.png"))
    run = root / "run"
    fit(FitConfig(data=str(data), out=str(run), arch="efficientnet_b0", init="random", epochs=1, size=SIZE,
                  batch_size=8, workers=0, device="cpu"))
    return run, data


def test_eval_writes_the_report_and_compare_prints_both(tiny_run, tmp_path):
    run, data = tiny_run
    full, quick = tmp_path / "full", tmp_path / "quick"
    result = runner.invoke(app, ["eval", str(run), "--data", str(data), "--out", str(full), "--limit", "6",
                                 "--batch-size", "6", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "pgd20 eps=4/255" in result.output and "gradient masking" in result.output
    # Not a terminal: one timestamped line per phase instead of a progress bar a log cannot show.
    phases = re.findall(r"^\[ *\d+\.\ds\] (.+)$", result.output, flags=re.MULTILINE)
    assert len(phases) >= 3 and len(phases) == len(set(phases))
    report = json.loads((full / "metrics.json").read_text())
    assert report["arch"] == "efficientnet_b0" and report["method"] == "erm" and report["split"] == "test"
    assert report["counts"]["crops"] == {"real": 3, "fake": 3} and report["counts"]["crops_in_split"] == {"real": 6, "fake": 6}
    assert report["threshold"] == 0.5 and report["seed"] == 0 and "torch" in report["versions"]
    assert report["clean"]["video"] is not None and report["clean"]["video"]["n"] <= 4
    assert {"more_steps", "pgd_vs_fgsm", "nonzero_gradients", "black_box"} <= set(report["gradient_masking"])
    assert len(report["attacks"]["results"]) == 14 and len(report["corruptions"]["results"]) == 9
    assert report["not_done"] == [] and report["white_box"]["available"]
    heatmaps = report["heatmaps"]
    assert heatmaps["method"].startswith("Grad-CAM") and heatmaps["skipped"] is None
    assert 1 <= len(heatmaps["files"]) <= 16 and {f["cell"] for f in heatmaps["files"]} <= {"tp", "fp", "tn", "fn"}
    with open(full / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert rows[0]["condition"] == "clean" and len(rows) == 1 + 1 + 14 + 9
    assert set(rows[0]) == {"condition", "kind", "accuracy", "auc", "n"}
    assert set(report["plots"]) == {"accuracy_vs_eps.png", "roc.png", "corruptions.png", "score_histograms.png",
                                    "confusion_matrix.png"}
    page = (full / "index.html").read_text()
    referenced = re.findall(r"(?:src|href)='([^']+)'", page)
    assert set(report["plots"]) <= set(referenced) and "metrics.json" in referenced
    assert {f["file"] for f in heatmaps["files"]} <= set(referenced)
    assert all((full / name).is_file() for name in referenced)

    # A second report (no attacks, no corruptions, another seed), then both side by side.
    result = runner.invoke(app, ["eval", str(run), "--data", str(data), "--out", str(quick), "--no-attacks",
                                 "--no-corruptions", "--seed", "1", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    quick_report = json.loads((quick / "metrics.json").read_text())
    assert quick_report["attacks"] is None and quick_report["corruptions"] is None
    assert quick_report["counts"]["crops"] == {"real": 6, "fake": 6}
    page = (quick / "index.html").read_text()
    assert all((quick / name).is_file() for name in re.findall(r"(?:src|href)='([^']+)'", page))

    out = tmp_path / "cmp"
    result = runner.invoke(app, ["eval", "--compare", str(full), str(quick), "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "efficientnet_b0+erm (full)" in result.output and "efficientnet_b0+erm (quick)" in result.output
    for value in (report["clean"]["frame"]["auc"], quick_report["clean"]["frame"]["auc"],
                  report["attacks"]["results"][0]["accuracy"]):
        assert f"{value:.4f}" in result.output
    with open(out / "compare.csv") as handle:
        table = {row[0]: row[1:] for row in csv.reader(handle)}
    assert table["metric"] == ["efficientnet_b0+erm (full)", "efficientnet_b0+erm (quick)"]
    assert float(table["clean AUC"][1]) == pytest.approx(quick_report["clean"]["frame"]["auc"])
    assert table["fgsm eps=0.001 acc"][1] == ""  # the quick report ran no attacks
    assert (out / "compare.md").read_text().startswith("| metric |")


def test_eval_usage_errors_are_one_line(tiny_run, tmp_path):
    run, data = tiny_run
    for args in (["eval", str(run)], ["eval", "--compare", str(tmp_path)],
                 ["eval", str(tmp_path / "nope"), "--data", str(data), "--out", str(tmp_path / "r")],
                 ["eval", "--compare", str(tmp_path), str(tmp_path)],
                 ["eval", str(run), "--bundle", str(tmp_path), "--data", str(data), "--out", str(tmp_path / "r")],
                 ["eval", "--bundle", str(tmp_path / "nope"), "--data", str(data), "--out", str(tmp_path / "r")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, args
        assert result.output.startswith("error: ") and result.output.count("\n") == 1, result.output


def test_eval_scores_only_the_corruptions_named(tiny_run, tmp_path):
    run, data = tiny_run
    out = tmp_path / "two"
    result = runner.invoke(app, ["eval", str(run), "--data", str(data), "--out", str(out), "--no-attacks",
                                 "--corruption", "h264 crf=35", "--corruption", "jpeg q=50", "--heatmaps", "0",
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "metrics.json").read_text())
    # in the report's own order, whatever the command line's
    assert [r["name"] for r in report["corruptions"]["results"]] == ["jpeg q=50", "h264 crf=35"]
    with open(out / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["crop", "video", "label", "clean", "jpeg q=50", "h264 crf=35"]
    # the same figures as the whole sweep gives those two
    every = tmp_path / "every"
    result = runner.invoke(app, ["eval", str(run), "--data", str(data), "--out", str(every), "--no-attacks",
                                 "--heatmaps", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    swept = {r["name"]: r for r in json.loads((every / "metrics.json").read_text())["corruptions"]["results"]}
    assert len(swept) == 9
    assert report["corruptions"]["results"] == [swept["jpeg q=50"], swept["h264 crf=35"]]
    for args, message in ((["--corruption", "jpeg q=55"], "unknown corruption 'jpeg q=55'; known: 'gaussian_noise"),
                          (["--corruption", "jpeg q=50", "--no-corruptions"], "--corruption and --no-corruptions")):
        wrong = runner.invoke(app, ["eval", str(run), "--data", str(data), "--out", str(tmp_path / "x"), *args])
        assert wrong.exit_code == 2 and wrong.output.startswith(f"error: {message}"), wrong.output
        assert wrong.output.count("\n") == 1 and not (tmp_path / "x").exists()


# ------------------------------------------------------------------------------------ bundles

def l_inf_to_clean(adversarial: Path, clean: Path) -> float:
    """L∞ in [0, 1] between a saved 16-bit adversarial PNG and its 8-bit clean crop."""
    adv = cv2.imread(str(adversarial), cv2.IMREAD_UNCHANGED)
    original = cv2.imread(str(clean), cv2.IMREAD_UNCHANGED)
    assert adv.dtype == np.uint16 and original.dtype == np.uint8 and adv.shape == original.shape
    return float(np.abs(adv / 65535.0 - original / 255.0).max())


def test_screening_attack_set_runs_pgd10_at_the_goals_two_points_only(tiny_run, tmp_path):
    run, data = tiny_run
    out = tmp_path / "screen"
    result = runner.invoke(app, ["eval", str(run), "--data", str(data), "--out", str(out), "--limit", "6",
                                 "--attack-set", "pgd10", "--no-corruptions", "--heatmaps", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    attacks = json.loads((out / "metrics.json").read_text())["attacks"]
    assert [(r["name"], r["box"]) for r in attacks["results"]] == [("pgd10 eps=1/255", "white"), ("pgd10 eps=4/255", "white")]
    curve = tmp_path / "curve"
    result = runner.invoke(app, ["eval", str(run), "--data", str(data), "--out", str(curve), "--limit", "6",
                                 "--attack-set", "curve", "--no-corruptions", "--heatmaps", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    results = json.loads((curve / "metrics.json").read_text())["attacks"]["results"]
    assert [r["name"] for r in results] == [f"pgd10 eps={k}/255" for k in ("0.25", "0.5", "1", "2", "4")]
    assert results[0]["accuracy"] >= results[-1]["accuracy"]  # a 16 times larger ball does not help the detector
    seeds = tmp_path / "seeds"
    result = runner.invoke(app, ["eval", str(run), "--data", str(data), "--out", str(seeds), "--limit", "6",
                                 "--attack-set", "seeds", "--no-corruptions", "--heatmaps", "0", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    results = json.loads((seeds / "metrics.json").read_text())["attacks"]["results"]
    assert [r["name"] for r in results] == [f"fgsm eps={eps}" for eps in ("0.001", "0.005", "0.01", "0.02")]
    wrong = runner.invoke(app, ["eval", str(run), "--data", str(data), "--out", str(out), "--attack-set", "all"])
    assert wrong.exit_code == 2 and wrong.output.startswith("error: --attack-set")


@pytest.fixture(scope="module")
def white_box_bundle(trained, tmp_path_factory) -> Path:
    """The trained toy detector as a bundle with its verified gradient graph, temperature 2 and
    threshold 0.4."""
    from forensic.bundle import write_bundle
    from trainer.export.bundle import export_onnx
    from trainer.export.gradient_graph import export_gradient_graph

    scratch = tmp_path_factory.mktemp("white-box")
    export_onnx(trained, SIZE, scratch / "model.onnx")
    export_gradient_graph(trained, SIZE, scratch / "model.grad.onnx")
    manifest = {"name": "toy", "models": [{"name": "toy", "file": "model.onnx", "arch": "toy", "weight": 1.0,
                                           "gradient_graph": {"file": "model.grad.onnx"}}],
                "input": {"size": SIZE, "mean": [0.5] * 3, "std": [0.25] * 3, "normalize_in_graph": True},
                "face_crop": {"margin": 1.3}, "class_order": ["real", "fake"], "decision_threshold": 0.4,
                "temperature": 2.0}
    out = scratch / "bundle"
    write_bundle(out, manifest, {"model.onnx": scratch / "model.onnx", "model.grad.onnx": scratch / "model.grad.onnx"})
    return out


def test_the_input_gradient_statistic_is_computed_only_when_an_attack_runs(trained):
    """It serves only the masking checks; without an attack it would cost every clean batch a
    gradient pass (and, for a bundle, the gradient graphs' memory: 6.5 GB on 256 DFDC crops)."""
    class Counting(TorchScorer):
        calls = 0

        def loss_gradient(self, pixels, labels):
            Counting.calls += 1
            return super().loss_gradient(pixels, labels)

    pixels, labels = make_batch(8, seed=3000)
    batches = [(as_uint8(pixels), labels)]
    plain = collect(Counting(trained), batches, attacks=(), black_box=None, corruptions=(), seed=0)
    assert Counting.calls == 0 and plain.gradient_mean_abs is None
    attacked = collect(Counting(trained), batches, attacks=[AttackSpec("fgsm", 0.02)], black_box=None,
                       corruptions=(), seed=0)
    assert Counting.calls >= 2 and attacked.gradient_mean_abs > 0  # the statistic's pass and FGSM's


def test_bundle_white_box_attacks_go_through_its_gradient_graph(trained, white_box_bundle):
    from forensic.bundle import load_bundle

    scorer = BundleScorer(load_bundle(white_box_bundle), device="cpu")
    assert scorer.white_box and scorer.threshold == 0.4
    pixels, labels = make_batch(16, seed=1000)
    with torch.no_grad():
        logits = trained(pixels)
    # P(fake) is the calibrated one (temperature 2).
    assert np.allclose(scorer.p_fake(pixels), (logits / 2).softmax(1)[:, 1].numpy(), atol=1e-6)
    # The black-box margin is positive exactly for the crops called right at the bundle's threshold (0.4).
    called_fake = scorer.p_fake(pixels) >= 0.4
    assert 0 < called_fake.sum() < len(pixels)
    np.testing.assert_array_equal(scorer.margin(pixels, labels).numpy() > 0, called_fake == (labels.numpy() == 1))
    # The gradient is that of the calibrated probability's cross-entropy (temperature 2), crop by crop.
    gradient = scorer.loss_gradient(pixels, labels)
    x = pixels.clone().requires_grad_(True)
    (calibrated,) = torch.autograd.grad(F.cross_entropy(trained(x) / 2, labels, reduction="sum"), x)
    assert F.cosine_similarity(gradient.flatten(1), calibrated.flatten(1), dim=1).min() > 0.999
    assert torch.allclose(gradient.flatten(1).norm(dim=1), calibrated.flatten(1).norm(dim=1), rtol=1e-3)

    specs = [AttackSpec("fgsm", 0.02), AttackSpec("pgd", 4 / 255, 10, "4/255")]
    collected = collect(scorer, [(as_uint8(pixels), labels)], attacks=specs, black_box=None, corruptions=(), seed=0)
    summary = summarise(collected, bootstrap=50)
    clean = summary["clean"]["frame"]
    assert clean["threshold"] == 0.4 and clean["accuracy"] >= 0.8
    results = {r["name"]: r for r in summary["attacks"]["results"]}
    assert results["pgd10 eps=4/255"]["accuracy"] < clean["accuracy"]
    assert summary["gradient_masking"]["nonzero_gradients"]["passed"]


def test_an_ensemble_is_attacked_along_its_calibrated_decision(trained, tmp_path):
    """Two different members with their own calibration: the oracle's gradient is autograd's of
    −log P_y for the calibrated ensemble P(fake) that forensic computes, not the members' raw
    cross-entropies summed (which points elsewhere here)."""
    import copy

    from calibrated_ensembles import BUNDLE_TEMPERATURE, write_calibrated_ensemble

    other = copy.deepcopy(trained)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():  # a second member whose input gradients point elsewhere (cosine 0.2-0.6)
        for parameter in other.parameters():
            parameter.add_(0.5 * parameter.std() * torch.randn(parameter.shape, generator=generator))
    members = {"a": (trained, 2.0, 0.4, 1.5), "b": (other, 1.0, 3.0, -1.0)}  # weight, temperature, bias
    bundle = write_calibrated_ensemble(tmp_path, members, SIZE)
    scorer = BundleScorer(bundle, device="cpu")
    pixels, labels = make_batch(16, seed=2000)

    x = pixels.clone().requires_grad_(True)
    p_fake = 0
    for model, weight, temperature, bias in members.values():
        logits = model(x)
        p_fake = p_fake + weight / 3 * torch.sigmoid(((logits[:, 1] - logits[:, 0]) / temperature + bias)
                                                        / BUNDLE_TEMPERATURE)
    assert np.allclose(scorer.p_fake(pixels), p_fake.detach().numpy(), atol=1e-5)
    loss = -torch.where(labels == 1, p_fake, 1 - p_fake).log().sum()
    (expected,) = torch.autograd.grad(loss, x)
    gradient = scorer.loss_gradient(pixels, labels)
    assert F.cosine_similarity(gradient.flatten(1), expected.flatten(1), dim=1).min() > 0.999
    assert torch.allclose(gradient.flatten(1).norm(dim=1), expected.flatten(1).norm(dim=1), rtol=1e-3)

    summed = sum(weight / 3 * TorchScorer(model).loss_gradient(pixels, labels)
                 for model, weight, _, _ in members.values())
    assert F.cosine_similarity(summed.flatten(1), expected.flatten(1), dim=1).min() < 0.99, \
        "the members' raw losses must point elsewhere, or this test proves nothing"


@pytest.fixture(scope="module")
def black_box_bundle(tiny_run, tmp_path_factory) -> tuple[Path, Path]:
    """The tiny run exported without a gradient graph (it has a CAM output), and a 48 px test
    split, so the crops are shrunk to the bundle's 32 px."""
    from trainer.export.bundle import export_bundle
    from trainer.data.synthetic import make_face_dataset

    run, data = tiny_run
    root = tmp_path_factory.mktemp("black-box")
    export_bundle([run], root / "bundle", data=data, gradient_graphs=False)
    make_face_dataset(root / "data48", {"test": 4}, size=48, seed=1)
    return root / "bundle", root / "data48"


def test_bundle_eval_scores_as_forensic_and_is_black_box_only_without_gradient_graph(black_box_bundle, tmp_path):
    from forensic.bundle import load_bundle
    from forensic.inference import EnsembleRunner
    from trainer.data.datasets import list_split, read_rgb

    bundle_dir, data = black_box_bundle
    out = tmp_path / "report"
    (out / "heatmaps").mkdir(parents=True)
    (out / "heatmaps" / "notes.txt").write_text("the user's own file")
    (out / "heatmaps" / "tp-00099-fake-from_an_earlier_report.png").write_bytes(b"old")
    result = runner.invoke(app, ["eval", "--bundle", str(bundle_dir), "--data", str(data), "--out", str(out),
                                 "--no-corruptions", "--save-adv", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "black-box only" in result.output
    report = json.loads((out / "metrics.json").read_text())
    bundle = load_bundle(bundle_dir)
    assert report["threshold"] == bundle.threshold and report["bundle"]["sha256"] == bundle.sha256

    # Clean scores: forensic's EnsembleRunner on the crops shrunk as forensic scan shrinks its crops.
    samples = list_split(data, "test")
    crops = np.stack([cv2.resize(read_rgb(s.path), (SIZE, SIZE), interpolation=cv2.INTER_AREA) for s in samples])
    expected = EnsembleRunner(bundle, device="cpu").predict(crops).ensemble
    with open(out / "scores.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["label"]) for r in rows] == [s.label for s in samples]
    assert np.allclose([float(r["clean"]) for r in rows], expected, atol=1e-6)
    labels = np.array([s.label for s in samples])
    assert report["clean"]["frame"]["accuracy"] == pytest.approx(((expected >= bundle.threshold) == labels).mean())

    # No gradient graph: no white-box attack, the black-box one, and the report says so.
    white_box = report["white_box"]
    assert white_box["available"] is False and "has no gradient graph" in white_box["missing"]
    assert white_box["skipped_attacks"] == [spec.name for spec in DEFAULT_ATTACKS]
    assert [r["name"] for r in report["attacks"]["results"]] == ["square eps=4/255"]
    assert report["gradient_masking"]["nonzero_gradients"]["passed"] is None
    assert report["gradient_masking"]["passed"] is None  # nothing could be checked: not "passed"
    page = (out / "index.html").read_text()
    assert "<p class='fail'>Black-box only" in page and "has no gradient graph" in page

    # Heatmaps from the bundle's CAM output; every referenced file exists.
    assert "class activation maps" in report["heatmaps"]["method"] and report["heatmaps"]["files"]
    referenced = re.findall(r"(?:src|href)='([^']+)'", page)
    assert {f["file"] for f in report["heatmaps"]["files"]} <= set(referenced)
    assert all((out / name).is_file() for name in referenced)
    assert (out / "heatmaps" / "notes.txt").read_text() == "the user's own file"  # only old heatmaps go
    assert not (out / "heatmaps" / "tp-00099-fake-from_an_earlier_report.png").exists()

    # --save-adv: REPORT/adversarial/, within eps of the clean crops.
    saved = sorted((out / "adversarial" / "square_eps=4-255").glob("*.png"))
    assert len(saved) == report["adversarial_examples"]["files"] // 2 == 8
    for path in saved:
        assert l_inf_to_clean(path, out / "adversarial" / "clean" / path.name) <= 4 / 255 + 1e-6


@pytest.fixture(scope="module")
def dual_attacker_run(tiny_run, tmp_path_factory) -> Path:
    """A 1-epoch dual-attacker run (it saves unet_attacker.pt) on the tiny run's data."""
    from trainer.config import FitConfig
    from trainer.fit import fit

    _, data = tiny_run
    run = tmp_path_factory.mktemp("dual") / "run"
    fit(FitConfig(data=str(data), out=str(run), arch="efficientnet_b0", method="dual-attacker", init="random",
                  epochs=1, size=SIZE, batch_size=8, workers=0, device="cpu", options={"pgd_steps": 1}))
    return run


def test_unet_attack_of_a_dual_attacker_run_and_saved_examples_within_eps(dual_attacker_run, tiny_run, tmp_path):
    _, data = tiny_run
    adversarial = tmp_path / "adversarial"
    settings = EvalSettings(limit=6, batch_size=6, attacks=[AttackSpec("fgsm", 0.01)], black_box=None, corruptions=(),
                            heatmaps_per_cell=0, save_adv=adversarial, device="cpu", bootstrap=100)
    report = evaluate_run(dual_attacker_run, data, tmp_path / "report", settings)
    results = {r["name"]: r for r in report["attacks"]["results"]}
    assert set(results) == {"fgsm eps=0.01", "unet eps=4/255"}
    assert results["unet eps=4/255"]["box"] == "learned" and results["unet eps=4/255"]["accuracy"] is not None
    with open(tmp_path / "report" / "metrics.csv") as handle:
        kinds = {row["condition"]: row["kind"] for row in csv.DictReader(handle)}
    assert kinds["unet eps=4/255"] == "attack-learned"
    # The first 4 crops of each class (3 each here), per attack, within that attack's eps.
    clean = sorted(p.name for p in (adversarial / "clean").glob("*.png"))
    assert len(clean) == 6 and report["adversarial_examples"]["files"] == 18
    for folder, eps, least in (("fgsm_eps=0.01", 0.01, 0.005), ("unet_eps=4-255", 4 / 255, 0.0)):
        assert sorted(p.name for p in (adversarial / folder).glob("*.png")) == clean
        distances = [l_inf_to_clean(adversarial / folder / name, adversarial / "clean" / name) for name in clean]
        assert least < max(distances) <= eps + 1e-6, folder
