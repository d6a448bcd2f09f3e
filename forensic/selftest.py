"""PGD self-test: how small a perturbation flips a file's verdict ("verdict fragility").

For every analysed face crop of a file, an L∞ attack pushes the ensemble towards the opposite
verdict at each ε of a schedule (pixels in [0, 1], before normalisation, as the models see
them); the file's score is recomputed from the attacked faces exactly as the scan computes it
(identities, aggregation, most fake identity). White-box PGD uses each model's gradient graph
(inputs pixels and labels, outputs per-sample loss and d loss / d pixels), exported and
checked against PyTorch by `trainer export`; the attack ascends the cross-entropy of the
calibrated ensemble's P(fake) — the probability the verdict is made of — whose gradient the
members' graphs give exactly (GradientOracle). A model without a gradient graph makes the whole
self-test fall back to SPSA (gradient-free, on the same loss from the ensemble's own scores),
and the report says so.

What it costs is kept to what the answer needs (a full sweep was 40 gradient steps per crop):
- the schedule is searched by bisection: an attack that flips at ε flips at any larger ε (the
  larger ball holds the smaller one's perturbation), so the smallest flipping ε is found in
  about log2(len(schedule) + 1) trials, and the trials not run are implied by the ones that were;
- an attack stops at the first step after which the file's verdict has flipped (one forward pass
  per step tells), since further steps cannot unfind a flip;
- only the crops of the identities that decide the file's score are attacked: the others do not
  enter the score.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import onnxruntime as ort

from forensic.bundle import Bundle
from forensic.inference import EnsembleRunner, member_probability, mirrored, session_options

DEFAULT_EPSILONS = (1 / 255, 2 / 255, 4 / 255, 8 / 255)
FRAGILE_EPSILON = 1 / 255


@dataclass
class SelfTestSettings:
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    steps: int = 10
    spsa_samples: int = 16  # random directions per SPSA gradient estimate
    seed: int = 0


class GradientOracle:
    """d CE(P, label) / d pixels for a batch of crops, where P is the bundle's calibrated ensemble
    P(fake) (forensic.inference: each member's Platt-calibrated probability, then the bundle's
    temperature, then the weighted mean) and label is 1 for fake, 0 for real.

    Each member's gradient graph gives its two-class cross-entropy at temperature 1 and that loss's
    input gradient. For two classes that loss is softplus(∓ margin) (margin = fake − real logit;
    − for label fake), so both the margin and its input gradient follow from the graph's two
    outputs: margin = ∓ log(expm1(loss)), d margin = ∓ grad / (1 − exp(−loss)). The members'
    raw cross-entropy gradients summed would ascend a loss the verdict is not made of: blind to
    each member's calibration, it over-weights a member the calibration flattens and keeps
    pushing members that have already crossed. With the bundle's mirror_average, each member's
    margin is the mean over the crop and its mirror image, and so is its gradient (the mirrored
    view's gradient mirrored back onto the crop)."""

    def __init__(self, bundle: Bundle, providers: list[str], threads: int = 0):
        self.models, self.bundle_temperature = bundle.models, bundle.temperature
        self.mirror_average = bundle.mirror_average
        self.sessions, self.weights = [], []
        total = sum(entry.weight for entry in bundle.models)
        for entry in bundle.models:
            graph = entry.gradient_graph
            if graph is None:
                raise LookupError(entry.name)
            self.sessions.append(ort.InferenceSession(str(bundle.path / graph), session_options(threads), providers=providers))
            self.weights.append(entry.weight / total)

    @staticmethod
    def _margin_and_slope(session: ort.InferenceSession, pixels: np.ndarray, labels: np.ndarray, side: np.ndarray,
                          per_crop: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """A member's uncalibrated margin and its input gradient, from its gradient graph's outputs."""
        loss, grad = session.run(["loss", "grad"], {"pixels": pixels, "labels": labels})
        loss = np.maximum(loss.astype(np.float64), 0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            other = -np.expm1(-loss).reshape(per_crop)  # the member's uncalibrated probability of the other class
            margin = -side * np.log(np.expm1(loss))  # ±inf where the loss underflowed to 0
            d_margin = np.where(other > 0, grad / other, 0.0)
        return margin, d_margin * -side.reshape(per_crop)

    def __call__(self, pixels: np.ndarray, labels: np.ndarray) -> np.ndarray:
        labels = np.asarray(labels, np.int64)
        fake = labels == 1
        side = np.where(fake, 1.0, -1.0)
        per_crop = (-1,) + (1,) * (pixels.ndim - 1)
        ensemble = np.zeros(len(pixels))
        slope = np.zeros(pixels.shape)  # d P(fake) / d pixels
        views = [pixels, mirrored(pixels)] if self.mirror_average else [pixels]
        for session, weight, entry in zip(self.sessions, self.weights, self.models):
            margin, d_margin = 0.0, 0.0
            for index, view in enumerate(views):  # each its own run: the batch (and memory) stays N
                view_margin, view_slope = self._margin_and_slope(session, view, labels, side, per_crop)
                margin = margin + view_margin / len(views)
                d_margin = d_margin + (mirrored(view_slope) if index else view_slope) / len(views)
            p = member_probability(margin, entry.temperature, entry.bias, self.bundle_temperature)
            ensemble += weight * p
            slope += (weight * p * (1 - p) / (entry.temperature * self.bundle_temperature)).reshape(per_crop) * d_margin
        # floored so that a crop the ensemble already puts far on the other side keeps a finite gradient
        p_label = np.maximum(np.where(fake, ensemble, 1 - ensemble), 1e-12)
        return (-(side / p_label).reshape(per_crop) * slope).astype(np.float32)


def _spsa_gradient(runner: EnsembleRunner, pixels: np.ndarray, labels: np.ndarray, samples: int,
                   delta: float, rng: np.random.Generator) -> np.ndarray:
    """SPSA estimate of d CE(ensemble P(fake), label) / d pixels, one estimate per crop."""
    def loss(x: np.ndarray) -> np.ndarray:
        p_fake = np.clip(runner.predict_pixels(x).ensemble, 1e-7, 1 - 1e-7)
        return -np.where(labels == 1, np.log(p_fake), np.log(1 - p_fake))

    grad = np.zeros_like(pixels)
    for _ in range(samples):
        direction = rng.choice([-1.0, 1.0], size=pixels.shape).astype(np.float32)
        difference = loss(np.clip(pixels + delta * direction, 0, 1)) - loss(np.clip(pixels - delta * direction, 0, 1))
        grad += (difference / (2 * delta)).reshape(-1, 1, 1, 1) * direction
    return grad / samples


def attack(runner: EnsembleRunner, oracle: GradientOracle | None, pixels: np.ndarray, labels: np.ndarray,
           epsilon: float, settings: SelfTestSettings, check: Callable[[], None] | None = None,
           done: Callable[[np.ndarray], bool] | None = None) -> tuple[np.ndarray, int]:
    """L∞ PGD that raises the loss of `labels` (the current verdict), inside the ε-ball and [0, 1].
    Returns the perturbed pixels and the steps taken: `done(pixels)`, called after each step,
    ends the attack early by returning True. `check()` is called before each step: it may raise
    to abandon the attack."""
    rng = np.random.default_rng(settings.seed)
    step = 2.5 * epsilon / settings.steps
    adversarial = pixels.copy()
    for taken in range(1, settings.steps + 1):
        if check:
            check()
        if oracle is not None:
            grad = oracle(adversarial, labels)
        else:
            grad = _spsa_gradient(runner, adversarial, labels, settings.spsa_samples, delta=epsilon / 4, rng=rng)
        adversarial = adversarial + step * np.sign(grad)
        adversarial = np.clip(np.clip(adversarial, pixels - epsilon, pixels + epsilon), 0.0, 1.0).astype(np.float32)
        if done is not None and done(adversarial):
            return adversarial, taken
    return adversarial, settings.steps


def bisect_schedule(epsilons: Sequence[float], flips: Callable[[float], bool]) -> float | None:
    """The smallest ε of the ascending `epsilons` for which `flips(ε)`, assuming a flip at ε means
    a flip at every larger ε; None when the largest does not flip. Calls `flips` about
    log2(len + 1) times, never twice for one ε."""
    low, high = -1, len(epsilons)  # epsilons[low] holds (or is below the schedule), epsilons[high] flips
    while high - low > 1:
        middle = (low + high) // 2
        if flips(epsilons[middle]):
            high = middle
        else:
            low = middle
    return epsilons[high] if high < len(epsilons) else None
