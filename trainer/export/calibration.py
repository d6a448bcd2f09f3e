"""A bundle's calibration, fitted on the validation split by minimising the negative
log-likelihood: with several models, first each model's own temperature and bias (Platt
scaling: members trained differently have logit scales and offsets that differ several-fold,
and averaging uncalibrated probabilities would let the most confident member decide alone),
then one temperature for the ensemble; then the decision threshold at the chosen operating
point (equal error rate, a target false-positive rate, or a fixed value), recorded with the
validation FPR/TPR it gives and the counts behind them. The probabilities are
forensic's own (forensic.inference.member_probability), so the bundle is calibrated as it scans.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from scipy.optimize import minimize, minimize_scalar
from sklearn.metrics import roc_curve
from torch.utils.data import DataLoader

from forensic.inference import member_probability
from trainer.data.datasets import FaceCrops, list_split, scan_transform
from trainer.export.errors import ExportError


def _validation_logits(model: torch.nn.Module, loader: DataLoader, mirror_average: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """The model's logits on every crop, as forensic computes them (with `mirror_average`, the
    mean over each crop and its mirror image), and the labels."""
    logits, labels = [], []
    with torch.no_grad():
        for pixels, y in loader:
            z = model(pixels)
            if mirror_average:
                z = (z + model(pixels.flip(-1))) / 2
            logits.append(z.double().numpy())
            labels.append(y.numpy())
    return np.concatenate(logits), np.concatenate(labels)


def validation_loader(data_dir: Path, size: int) -> DataLoader:
    """DATA/validation's crops (labels 0 real, 1 fake) as forensic scan makes them: the bundle is
    calibrated on what it will see."""
    return DataLoader(FaceCrops(list_split(data_dir, "validation"), scan_transform(size)), batch_size=64)


def ensemble_probability(logits: list[np.ndarray], weights: np.ndarray, temperature: float,
                         members: list[tuple[float, float]] | None = None) -> np.ndarray:
    """P(fake) as forensic computes it: the weighted mean of each model's
    sigmoid((margin / member temperature + member bias) / T), margin = fake − real logit
    (members: one (temperature, bias) per model; None: (1, 0) each)."""
    total = np.zeros(len(logits[0]))
    for z, w, (member_t, bias) in zip(logits, weights / weights.sum(), members or [(1.0, 0.0)] * len(logits)):
        total += w * member_probability(z[:, 1] - z[:, 0], member_t, bias, temperature)
    return total


def fit_platt(logits: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    """One model's (temperature, bias) minimising the NLL of sigmoid(margin / temperature + bias)
    (Platt scaling) against Platt's smoothed targets, (N₊ + 1) / (N₊ + 2) for fakes and
    1 / (N₋ + 2) for reals: with 0/1 targets a member that separates the validation crops
    would have its scale grow without bound and decide the ensemble alone. Raises ExportError
    when the model ranks the validation crops backwards."""
    margin = logits[:, 1] - logits[:, 0]
    if not margin.std() > 1e-6:  # the fit would return its starting point: a scale of 1e6
        raise ExportError(f"a model's fake-minus-real logit is constant on the validation split (spread "
                          f"{margin.std():.1e}); it carries no information and cannot be an ensemble member")
    n_fake, n_real = int((labels == 1).sum()), int((labels == 0).sum())
    targets = np.where(labels == 1, (n_fake + 1) / (n_fake + 2), 1 / (n_real + 2))

    def nll(params: np.ndarray) -> float:
        return _nll(member_probability(margin * params[0], bias=params[1]), targets)

    best = minimize(nll, x0=np.array([1.0 / max(margin.std(), 1e-6), 0.0]), method="Nelder-Mead",
                    options={"xatol": 1e-6, "fatol": 1e-9, "maxiter": 4000})
    scale, bias = best.x
    if scale <= 0:
        raise ExportError("a model's fake-minus-real logit is anti-correlated with the labels on the "
                          "validation split; it cannot be an ensemble member")
    return float(1.0 / scale), float(bias)


def _nll(p: np.ndarray, targets: np.ndarray) -> float:
    """Mean cross-entropy of P(fake) against targets in [0, 1] (the labels, or smoothed ones)."""
    p = np.clip(p, 1e-12, 1 - 1e-12)
    return float(-np.mean(targets * np.log(p) + (1 - targets) * np.log(1 - p)))


TEMPERATURE_BOUNDS = (0.05, 20.0)


def fit_temperature(logits: list[np.ndarray], weights: np.ndarray, labels: np.ndarray,
                    members: list[tuple[float, float]] | None = None) -> tuple[float, float, float]:
    """The temperature minimising the ensemble's NLL, within TEMPERATURE_BOUNDS; returns
    (T, NLL at T=1, NLL at T)."""
    def nll(log_t: float) -> float:
        return _nll(ensemble_probability(logits, weights, math.exp(log_t), members), labels)

    low, high = TEMPERATURE_BOUNDS
    best = minimize_scalar(nll, bounds=(math.log(low), math.log(high)), method="bounded")
    return math.exp(best.x), nll(0.0), float(best.fun)


def _temperature_warning(temperature: float) -> str | None:
    """What a temperature at the edge of its search range means: the NLL wanted one beyond it."""
    low, high = TEMPERATURE_BOUNDS
    if temperature <= low * 1.01:
        return (f"the temperature stopped at its lower bound {low:g}: the validation crops are (nearly) "
                f"separable, so the NLL kept sharpening the scores; they are overconfident and many may be "
                f"exactly 0 or 1 — calibrate on more, or harder, validation data")
    if temperature >= high * 0.99:
        return (f"the temperature stopped at its upper bound {high:g}: the scores carry almost no information "
                f"on the validation crops, so every P(fake) is pulled to the same value")
    return None


def parse_operating_point(operating_point: str) -> tuple[str, float | None]:
    """("eer", None), ("fpr", X) or ("fixed", T), X and T in [0, 1]; ExportError otherwise."""
    kind, _, value = operating_point.partition(":")
    if kind == "eer" and not value:
        return "eer", None
    if kind in ("fpr", "fixed"):
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if 0.0 <= number <= 1.0:
            return kind, number
        raise ExportError(f"--operating-point {operating_point!r}: {kind}:X needs a number X in [0, 1]")
    raise ExportError(f"unknown operating point {operating_point!r}: use eer, fpr:X or fixed:T (X, T in [0, 1])")


def choose_threshold(labels: np.ndarray, scores: np.ndarray, operating_point: str) -> dict:
    """The threshold at `operating_point` ("eer", "fpr:X" or "fixed:T") and what it gives on
    these labels. Every ROC point counts (drop_intermediate=False): the thinned curve can lack
    the equal-error point."""
    kind, value = parse_operating_point(operating_point)
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    if kind == "eer":
        index = int(np.argmin(np.abs(fpr - (1 - tpr))))
        threshold = float(thresholds[index])
    elif kind == "fpr":
        allowed = np.where(fpr <= value)[0]  # never empty: the first ROC point has FPR 0
        threshold = float(thresholds[allowed[-1]])
    else:
        threshold = value
    threshold = float(min(max(threshold, 0.0), 1.0))  # the first ROC threshold is +inf
    predicted = scores >= threshold
    if kind == "fpr" and predicted[labels == 0].mean() > value:
        # Only when reals score exactly 1.0: no threshold in [0, 1] keeps them below it.
        raise ExportError(f"--operating-point {operating_point}: no threshold in [0, 1] keeps the validation FPR "
                          f"at or below {value:g} ({int(predicted[labels == 0].sum())} real crops score "
                          f"{threshold:g}); choose another operating point")
    real, fake = labels == 0, labels == 1
    return {"criterion": operating_point, "threshold": threshold,
            "validation_fpr": float(predicted[real].mean()), "validation_tpr": float(predicted[fake].mean()),
            "validation_accuracy": float((predicted == fake).mean()),
            "n_real": int(real.sum()), "n_fake": int(fake.sum())}


def fit_calibration(models: list[torch.nn.Module], weights: np.ndarray, data_dir: Path, size: int, operating_point: str,
                    mirror_average: bool = False) -> dict:
    """The manifest's `calibration`: per-member Platt scaling (several models), the ensemble's
    temperature and the threshold at `operating_point`, fitted on DATA/validation (each crop
    scored with its mirror image too where the bundle is to average them)."""
    loader = validation_loader(data_dir, size)
    logits, labels = [], None
    for model in models:
        z, labels = _validation_logits(model, loader, mirror_average)
        logits.append(z)
    return calibrate_logits(logits, labels, weights, operating_point, data_dir)


def calibrate_logits(logits: list[np.ndarray], labels: np.ndarray, weights: np.ndarray, operating_point: str,
                     data_dir: Path) -> dict:
    """`fit_calibration` on logits already computed: one (N, 2) [real, fake] array per member."""
    if len(set(labels.tolist())) < 2:
        raise ExportError(f"{data_dir}/validation: calibration needs both real and fake crops")
    members = [fit_platt(z, labels) for z in logits] if len(logits) > 1 else None
    temperature, nll_before, nll_after = fit_temperature(logits, weights, labels, members)
    scores = ensemble_probability(logits, weights, temperature, members)
    point = choose_threshold(labels, scores, operating_point)
    calibration = {"temperature": temperature, "data": str(data_dir), "operating_point": point,
                   "nll_uncalibrated": float(_nll(ensemble_probability(logits, weights, 1.0), labels)),
                   "nll_calibrated": nll_after,
                   "warnings": [warning for warning in [_temperature_warning(temperature)] if warning]}
    if members:
        calibration["members"] = [{"temperature": t, "bias": b} for t, b in members]
        calibration["nll_members_calibrated"] = nll_before  # before the ensemble's own temperature
    return calibration
