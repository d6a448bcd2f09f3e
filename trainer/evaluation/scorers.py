"""What `trainer eval` evaluates: a PyTorch detector or an exported ONNX bundle, behind one small
interface (`Scorer`), so that the attack and collection loops exist once.

TorchScorer: a `trainer fit` model (a `Detector`): softmax of its logits; the gradient of the
cross-entropy by autograd; Grad-CAM (trainer.evaluation.gradcam); threshold 0.5.

BundleScorer: a bundle as `forensic scan` runs it. P(fake) is forensic.inference.EnsembleRunner's
calibrated ensemble (the weighted mean of each member's calibrated probability, below), not
recomputed here. The gradient comes from forensic.selftest.GradientOracle, as the scan's
self-test takes it: that of the calibrated ensemble's cross-entropy

    −log P_y,   P = Σ_m w_m σ((d_m / t_m + b_m) / T)      (d_m the fake-minus-real logit margin)

recovered exactly from each member's gradient graph (whose own loss is the member's
cross-entropy at temperature 1). A bundle with a member that lacks a
gradient graph has no white-box gradient at all. The black-box margin is how far the calibrated
ensemble P(fake) is on the true class's side of the bundle's threshold, in log-odds:
±(logit(P) − logit(threshold)), + for fakes, P and the threshold clipped to [1e-15, 1 − 1e-15]
(so the black-box attack keeps going until the crop is misclassified at the threshold the
report uses, not at 0.5). Heatmaps are the bundle's class
activation maps, combined and resized as `forensic scan --heatmaps` draws them; threshold: the
manifest's decision_threshold.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from forensic.bundle import Bundle
from forensic.heatmaps import combine
from forensic.inference import EnsembleRunner
from forensic.selftest import GradientOracle
from trainer.evaluation.gradcam import feature_layer, grad_cam
from trainer.evaluation.metrics import RUN_THRESHOLD

LOG_ODDS_CLIP = 1e-15
BUNDLE_LOSS = ("CE(P, y): the cross-entropy of the calibrated ensemble P(fake) the verdict is made of, its gradient "
               "from the members' gradient graphs (forensic.selftest.GradientOracle, as the self-test attacks)")


@dataclass
class Heatmaps:
    maps: np.ndarray | None  # (N, size, size), signed; positive = evidence for "fake"
    method: str  # what the maps are, or why there are none


class Scorer(Protocol):
    """Takes pixels (N, 3, size, size), float32 in [0, 1], as torch tensors on `device`."""

    device: torch.device
    threshold: float  # P(fake) at or above which a crop is called fake
    white_box: bool  # whether loss_gradient is available
    white_box_missing: str | None  # why not
    attacked_loss: str | None  # what loss_gradient differentiates

    def p_fake(self, pixels: torch.Tensor) -> np.ndarray:
        """P(fake) per crop, float64."""

    def margin(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """> 0 when a crop is classified correctly; the black-box attack searches for its decrease."""

    def loss_gradient(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """d (attacked loss) / d pixels, each crop's own."""

    def heatmaps(self, pixels: torch.Tensor) -> Heatmaps:
        """(N, size, size) signed maps of evidence for "fake" and what they are, or None and why."""


class TorchScorer:
    """A PyTorch detector (pixels in [0, 1] → logits [real, fake]), put in eval mode."""

    white_box = True
    white_box_missing = None
    attacked_loss = "cross-entropy of softmax(logits) with the true label (PyTorch autograd)"

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu", threshold: float = RUN_THRESHOLD):
        self.device = torch.device(device)
        # Channels-last, as trainer fit trains: oneDNN's convolutions run faster in it on the CPU (BENCHMARKS.md).
        self.model = model.to(self.device, memory_format=torch.channels_last).eval()
        self.threshold = threshold
        self._layer: str | None = None

    def _logits(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model(pixels.contiguous(memory_format=torch.channels_last)).float()

    @torch.no_grad()
    def p_fake(self, pixels: torch.Tensor) -> np.ndarray:
        return self._logits(pixels).softmax(1)[:, 1].double().cpu().numpy()

    @torch.no_grad()
    def margin(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Logit of the true class minus the other's."""
        logits = self._logits(pixels)
        true = logits.gather(1, labels[:, None]).squeeze(1)
        other = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), -math.inf).amax(1)
        return true - other

    def loss_gradient(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """∇ₓ of the summed cross-entropy (each crop's own gradient); parameters' .grad untouched."""
        x = pixels.detach().requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(self._logits(x), labels, reduction="sum")
            (gradient,) = torch.autograd.grad(loss, x)
        return gradient

    def heatmaps(self, pixels: torch.Tensor) -> Heatmaps:
        if self._layer is None:
            self._layer = feature_layer(self.model, pixels)
        cams = grad_cam(self.model, pixels, self._layer)
        size = pixels.shape[-1]
        maps = np.stack([combine({"grad-cam": cam}, {"grad-cam": 1.0}, size) for cam in cams])
        return Heatmaps(maps, f"Grad-CAM of the fake-vs-real logit margin at layer '{self._layer}' "
                              f"(torch hooks), resized to the crop")


class BundleScorer:
    """An exported bundle, scored by forensic's EnsembleRunner (ONNX Runtime)."""

    def __init__(self, bundle: Bundle, device: str = "auto", batch_size: int = 32):
        self.bundle = bundle
        self.runner = EnsembleRunner(bundle, device=device, batch_size=batch_size)
        self.device = torch.device("cpu")  # tensors cross to ONNX Runtime as numpy arrays
        self.threshold = bundle.threshold
        missing = [entry for entry in bundle.models if entry.gradient_graph is None]
        self.white_box = not missing
        self.white_box_missing = "; ".join(
            f"model {entry.name} has no gradient graph ({entry.gradient_graph_missing or 'not exported'})"
            for entry in missing) or None
        self.oracle = GradientOracle(bundle, self.runner.providers) if self.white_box else None
        self.attacked_loss = BUNDLE_LOSS if self.white_box else None

    @staticmethod
    def _numpy(pixels: torch.Tensor) -> np.ndarray:
        return np.ascontiguousarray(pixels.detach().cpu().numpy(), dtype=np.float32)

    def p_fake(self, pixels: torch.Tensor) -> np.ndarray:
        return self.runner.predict_pixels(self._numpy(pixels)).ensemble

    def margin(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Log-odds of the calibrated ensemble P(fake) beyond the threshold's, on the true class's side."""
        def log_odds(p):
            p = np.clip(p, LOG_ODDS_CLIP, 1 - LOG_ODDS_CLIP)
            return np.log(p) - np.log1p(-p)

        sign = np.where(labels.cpu().numpy() == 1, 1.0, -1.0)
        return torch.from_numpy(sign * (log_odds(self.p_fake(pixels)) - log_odds(self.threshold))).to(pixels.device)

    def loss_gradient(self, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.oracle is None:
            raise LookupError(self.white_box_missing)
        gradient = self.oracle(self._numpy(pixels), labels.cpu().numpy().astype(np.int64))
        return torch.from_numpy(gradient).to(pixels.device)

    def heatmaps(self, pixels: torch.Tensor) -> Heatmaps:
        names = self.runner.cam_models
        if not names:
            return Heatmaps(None, f"{self.bundle.path}: no model of this bundle has a class-activation-map output")
        cams = self.runner.predict_pixels(self._numpy(pixels)).cams
        weights = {name: self.runner.model_weight(name) for name in names}
        size = pixels.shape[-1]
        maps = np.stack([combine({name: cams[name][row] for name in names}, weights, size)
                         for row in range(len(pixels))])
        without = [entry.name for entry in self.bundle.models if entry.name not in names]
        return Heatmaps(maps, f"the bundle's class activation maps of the fake-vs-real margin "
                              f"({', '.join(names)}), combined with the ensemble weights and resized as "
                              f"`forensic scan --heatmaps` draws them"
                              + (f"; models without a CAM output: {', '.join(without)}" if without else ""))
