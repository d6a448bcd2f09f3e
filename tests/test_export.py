"""Calibration, operating points and class activation maps in exported bundles."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

from trainer.export.bundle import ExportError, export_onnx, max_logit_difference
from trainer.export.calibration import (choose_threshold, ensemble_probability, fit_platt, fit_temperature,
                                        parse_operating_point)
from trainer.models import DetectorWithCAM, create_model


def test_temperature_recovers_an_overconfident_model():
    rng = np.random.default_rng(0)
    margin = rng.normal(0, 2, 4000)  # the true logit difference fake - real
    labels = (rng.random(4000) < 1 / (1 + np.exp(-margin))).astype(int)
    logits = np.stack([np.zeros_like(margin), 3.0 * margin], axis=1)  # three times too confident
    temperature, before, after = fit_temperature([logits], np.array([1.0]), labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert after < before


def test_ensemble_probability_is_the_weighted_mean_of_softmaxes():
    a = np.array([[0.0, 2.0], [1.0, -1.0]])
    b = np.array([[0.0, -1.0], [0.0, 0.0]])
    p = ensemble_probability([a, b], np.array([1.0, 3.0]), temperature=2.0)
    sigmoid = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    expected = 0.25 * sigmoid((a[:, 1] - a[:, 0]) / 2) + 0.75 * sigmoid((b[:, 1] - b[:, 0]) / 2)
    assert np.allclose(p, expected)


def test_platt_scaling_recovers_a_models_scale_and_offset():
    rng = np.random.default_rng(3)
    true_logit = rng.normal(0, 2, 6000)
    labels = (rng.random(6000) < 1 / (1 + np.exp(-true_logit))).astype(int)
    margin = 3.0 * (true_logit - 0.5)  # three times too confident and shifted
    temperature, bias = fit_platt(np.stack([np.zeros(6000), margin], axis=1), labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    assert bias == pytest.approx(0.5, abs=0.1)


def test_platt_scaling_refuses_a_model_that_ranks_backwards():
    labels = np.r_[np.zeros(50), np.ones(50)].astype(int)
    margin = np.r_[np.ones(50), -np.ones(50)] + np.random.default_rng(0).normal(0, 0.5, 100)
    with pytest.raises(ExportError, match="anti-correlated"):
        fit_platt(np.stack([np.zeros(100), margin], axis=1), labels)


def test_member_calibration_lets_a_low_scale_offset_member_count():
    # Two independent noisy views of the truth, one ten times too confident, one ten times too
    # timid and offset: with one shared temperature the confident member decides alone.
    rng = np.random.default_rng(2)
    labels = (rng.random(4000) < 0.5).astype(int)
    truth = np.where(labels == 1, 1.0, -1.0)
    views = [truth + rng.normal(0, 1.5, 4000), truth + rng.normal(0, 1.5, 4000) - 2.0]
    logits = [np.stack([np.zeros(4000), scale * view], axis=1) for scale, view in zip((10.0, 0.1), views)]
    weights = np.ones(2)
    members = [fit_platt(z, labels) for z in logits]
    assert members[0][0] > 5 and members[1][0] < 0.2
    alone = roc_auc_score(labels, logits[0][:, 1])
    shared_t, _, shared_nll = fit_temperature(logits, weights, labels)
    calibrated_t, _, calibrated_nll = fit_temperature(logits, weights, labels, members)
    shared = ensemble_probability(logits, weights, shared_t)
    calibrated = ensemble_probability(logits, weights, calibrated_t, members)
    assert calibrated_nll < shared_nll
    assert roc_auc_score(labels, calibrated) > roc_auc_score(labels, shared) + 0.015
    assert roc_auc_score(labels, calibrated) > alone + 0.05


def test_operating_points_agree_with_sklearn():
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(300), np.ones(200)].astype(int)
    scores = np.r_[rng.beta(2, 5, 300), rng.beta(5, 2, 200)]
    fpr, tpr, thresholds = roc_curve(labels, scores)
    at_5 = choose_threshold(labels, scores, "fpr:0.05")
    assert at_5["validation_fpr"] <= 0.05
    assert at_5["validation_tpr"] == pytest.approx(tpr[fpr <= 0.05].max())
    eer = choose_threshold(labels, scores, "eer")
    assert abs(eer["validation_fpr"] - (1 - eer["validation_tpr"])) < 0.02
    fixed = choose_threshold(labels, scores, "fixed:0.5")
    assert fixed["threshold"] == 0.5 and fixed["n_real"] == 300 and fixed["n_fake"] == 200
    assert fixed["validation_fpr"] == pytest.approx((scores[:300] >= 0.5).mean())


def test_eer_threshold_is_the_best_of_all_thresholds_not_of_the_thinned_roc():
    # sklearn's default ROC drops points on straight runs of the curve; with these scores one of
    # them held the equal-error point.
    rng = np.random.default_rng(1)
    labels = np.r_[np.zeros(10), np.ones(20)].astype(int)
    scores = np.r_[np.round(rng.uniform(0, 0.8, 10), 2), np.round(rng.uniform(0.3, 1, 20), 2)]
    chosen = choose_threshold(labels, scores, "eer")
    gaps = {t: abs((scores[:10] >= t).mean() - (scores[10:] < t).mean()) for t in np.unique(scores)}
    best = min(gaps.values())
    assert abs(chosen["validation_fpr"] - (1 - chosen["validation_tpr"])) == pytest.approx(best)
    thinned_fpr, thinned_tpr, _ = roc_curve(labels, scores)
    assert np.abs(thinned_fpr - (1 - thinned_tpr)).min() > best + 0.05  # the case this test is about


def test_platt_scaling_refuses_a_constant_member():
    labels = np.r_[np.zeros(20), np.ones(20)].astype(int)
    margin = 0.3 + np.random.default_rng(0).normal(0, 1e-8, 40)
    with pytest.raises(ExportError, match="constant on the validation split"):
        fit_platt(np.stack([np.zeros(40), margin], axis=1), labels)


def test_platt_scaling_stays_finite_when_validation_is_separable():
    # Unsmoothed 0/1 targets would push the scale up until every P(fake) is 0 or 1 (1e-12 away).
    labels = np.r_[np.zeros(60), np.ones(120)].astype(int)
    margin = np.r_[np.linspace(-1.5, -0.1, 60), np.linspace(0.1, 1.5, 120)]
    temperature, bias = fit_platt(np.stack([np.zeros(180), margin], axis=1), labels)
    p = 1 / (1 + np.exp(-(margin / temperature + bias)))
    assert p[labels == 1].min() > 0.5 > p[labels == 0].max()  # still separates
    # Bounded by Platt's targets (121/122 and 1/62); 0/1 targets gave temperature 0.003 here.
    assert temperature > 0.05 and p[labels == 1].mean() < 0.99 and p[labels == 0].mean() > 0.01


def test_a_temperature_at_its_search_bound_is_warned_about():
    from trainer.export.calibration import TEMPERATURE_BOUNDS, _temperature_warning

    labels = np.r_[np.zeros(60), np.ones(120)].astype(int)
    separable = np.stack([np.zeros(180), np.r_[np.linspace(-1.5, -0.1, 60), np.linspace(0.1, 1.5, 120)]], axis=1)
    temperature, _, _ = fit_temperature([separable], np.array([1.0]), labels)
    assert temperature == pytest.approx(TEMPERATURE_BOUNDS[0], rel=1e-3)
    assert "separable" in _temperature_warning(temperature)
    noise = np.stack([np.zeros(180), np.random.default_rng(0).normal(0, 1e-3, 180)], axis=1)
    temperature, _, _ = fit_temperature([noise], np.array([1.0]), labels)
    assert "almost no information" in _temperature_warning(temperature)
    assert _temperature_warning(1.0) is None


def test_an_fpr_operating_point_that_cannot_be_met_is_refused():
    # Reals scoring exactly 1.0 (saturated scores) stay above every threshold in [0, 1].
    labels = np.r_[np.zeros(10), np.ones(10)].astype(int)
    scores = np.r_[np.full(2, 1.0), np.linspace(0.1, 0.5, 8), np.full(10, 1.0)]
    with pytest.raises(ExportError, match="no threshold in \\[0, 1\\] keeps the validation FPR at or below 0.01"):
        choose_threshold(labels, scores, "fpr:0.01")
    assert choose_threshold(labels, scores, "fpr:0.2")["validation_fpr"] == 0.2


@pytest.mark.parametrize("text", ["fpr:abc", "fpr:", "fpr:-0.1", "fixed:1.5", "fixed:x", "eer:2", "best", ""])
def test_bad_operating_points_are_refused_in_one_line(text):
    with pytest.raises(ExportError, match="operating.point") as info:
        parse_operating_point(text)
    assert "\n" not in str(info.value)


def test_good_operating_points_parse():
    assert parse_operating_point("eer") == ("eer", None)
    assert parse_operating_point("fpr:0.01") == ("fpr", 0.01)
    assert parse_operating_point("fixed:1") == ("fixed", 1.0)


def test_cam_output_explains_the_logit_margin(tmp_path):
    model = create_model("efficientnet_b0", init="random").eval()
    path = tmp_path / "cam.onnx"
    export_onnx(model, 64, path, with_cam=True)
    assert max_logit_difference(model, path, 64) <= 1e-4
    assert not model.training  # exporting through the wrapper leaves the model in eval mode
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    pixels = torch.rand(3, 3, 64, 64)
    logits, cam = session.run(None, {"pixels": pixels.numpy()})
    assert cam.shape == (3, 2, 2)  # efficientnet's stride 32
    bias = model.backbone.get_classifier().bias.detach().numpy()
    assert np.allclose(cam.mean(axis=(1, 2)) + bias[1] - bias[0], logits[:, 1] - logits[:, 0], atol=1e-4)


def test_cam_needs_a_linear_head():
    with pytest.raises(TypeError):
        DetectorWithCAM(create_model("resnet_se", init="random"))
