"""Dual-attacker adversarial training (the hybrid seed's regime).

Two attackers during training:
  (a) PGD, L∞ (`trainer.attacks.white_box.pgd`): options pgd_eps (default 4/255), pgd_steps (5),
      pgd_step_size (default 2.5 · eps / steps), random start from the method's generator;
  (b) a tiny U-Net (`trainer.attacks.unet.UNetAttacker`), perturbation eps_unet · tanh(out)
      (eps_unet default 4/255), trained jointly with its own Adam (option unet_lr, default 1e-4)
      to maximise
          J = CE(detector(x + δ), y) − lambda_tv · TV(δ / eps_unet) − lambda_freq · HF(δ)
      where TV is the mean absolute neighbour difference of the perturbation in units of
      eps_unet (so lambda_tv means the same at any eps) and HF the fraction of δ's fft2 energy
      above freq_radius (default 0.25) of Nyquist; lambda_tv = lambda_freq = 0.1 by default.

Each step: PGD examples (detector in eval mode); one attacker update (detector in eval mode,
gradients into the U-Net's parameters only), whose examples (made just before that update, as
in alternating GAN training; regenerating them would cost another U-Net forward, which at
base width 16 and full resolution costs more than an EfficientNet-Lite0 forward) go to one
detector update (train mode) on the concatenated batch [clean; PGD; U-Net] in one forward with

    loss = (mix_clean · CE_clean + mix_pgd · CE_pgd + mix_unet · CE_unet) / (mix_clean + mix_pgd + mix_unet)

i.e. the mix options (defaults 0.4, 0.3, 0.3) are loss weights normalised to sum 1 (every
example is used every step, only its weight differs; the loss stays on the scale of one
cross-entropy so the learning rate means what it means for ERM). One forward over the three
parts means batch-norm statistics are taken over the mixed batch. A weight of 0 skips that
kind's adversarial examples (mix_pgd = 0 saves the PGD passes; mix_unet = 0 still trains the
attacker); the clean part is always forwarded, since accuracy is reported on it.

Logs: loss (the weighted loss), accuracy (on the clean part), pgd_loss, unet_loss (detector's
cross-entropy on each kind, NaN when skipped), attacker_objective (J before the attacker's
update). state_dict() holds the U-Net, its optimizer and the generator, so a resumed run goes
on exactly; artifacts() = {"unet_attacker": U-Net state dict}.

In several processes (DDP) each process attacks its own share of the batch; the U-Net is
wrapped in DDP too (`distribute`), so its gradients are averaged over processes like the
detector's and every process keeps the same attacker.
"""

from __future__ import annotations

import math
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainer.attacks.white_box import eval_mode, pgd
from trainer.distributed import unwrap
from trainer.methods.erm import accuracy
from trainer.methods.registry import TrainingMethod, register_method
from trainer.attacks.unet import UNetAttacker, high_frequency_energy, total_variation


class _Perturbation(nn.Module):
    """The U-Net's perturbation as a module's forward, which is what DDP wraps (the U-Net's own
    forward returns the clamped example, and J needs the perturbation itself)."""

    def __init__(self, unet: UNetAttacker):
        super().__init__()
        self.unet = unet

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.unet.perturbation(pixels)


@register_method("dual-attacker")
class DualAttacker(TrainingMethod):
    def __init__(self, pgd_eps: float = 4 / 255, pgd_steps: int = 5, pgd_step_size: float | None = None,
                 eps_unet: float = 4 / 255, unet_lr: float = 1e-4, lambda_tv: float = 0.1, lambda_freq: float = 0.1,
                 freq_radius: float = 0.25, mix_clean: float = 0.4, mix_pgd: float = 0.3, mix_unet: float = 0.3,
                 seed: int = 0):
        mix = (float(mix_clean), float(mix_pgd), float(mix_unet))
        if min(mix) < 0 or sum(mix) <= 0:
            raise ValueError(f"dual-attacker needs mix weights >= 0 with a positive sum, got {mix}")
        if pgd_eps < 0 or eps_unet <= 0 or int(pgd_steps) < 0 or unet_lr <= 0:
            raise ValueError("dual-attacker needs pgd_eps >= 0, eps_unet > 0, pgd_steps >= 0, unet_lr > 0")
        self.pgd_eps, self.pgd_steps = float(pgd_eps), int(pgd_steps)
        self.pgd_step_size = None if pgd_step_size is None else float(pgd_step_size)
        self.eps_unet, self.unet_lr = float(eps_unet), float(unet_lr)
        self.lambda_tv, self.lambda_freq, self.freq_radius = float(lambda_tv), float(lambda_freq), float(freq_radius)
        total = sum(mix)
        self.mix_clean, self.mix_pgd, self.mix_unet = (w / total for w in mix)
        self.seed = int(seed)
        self.generator = torch.Generator().manual_seed(self.seed)  # PGD random starts
        self.unet: UNetAttacker | None = None
        self.unet_optimizer: torch.optim.Adam | None = None
        self._perturb: Callable[[torch.Tensor], torch.Tensor] | None = None  # the U-Net's, through DDP once distributed
        self._pending: dict[str, Any] | None = None  # state loaded before setup()

    def setup(self, model: nn.Module, device: torch.device) -> None:
        with torch.random.fork_rng(devices=[]):  # a seeded U-Net init that leaves the global RNG alone
            torch.manual_seed(self.seed)
            self.unet = UNetAttacker(eps=self.eps_unet).to(device)
        self.unet_optimizer = torch.optim.Adam(self.unet.parameters(), lr=self.unet_lr)
        self._perturb = self.unet.perturbation
        if self._pending is not None:
            state, self._pending = self._pending, None
            self.load_state_dict(state)

    def distribute(self, wrap: Callable[[nn.Module], nn.Module]) -> None:
        self._perturb = wrap(_Perturbation(self._require_setup()))

    def _require_setup(self) -> UNetAttacker:
        if self.unet is None:
            raise RuntimeError("dual-attacker: call setup(model, device) before step()")
        return self.unet

    def _objective(self, model: nn.Module, pixels: torch.Tensor,
                   labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """J, its cross-entropy term and the U-Net's examples."""
        self._require_setup()
        delta = self._perturb(pixels)
        adv = (pixels + delta).clamp(0.0, 1.0)
        cross_entropy = F.cross_entropy(model(adv), labels)
        objective = (cross_entropy - self.lambda_tv * total_variation(delta / self.eps_unet)
                     - self.lambda_freq * high_frequency_energy(delta, self.freq_radius))
        return objective, cross_entropy, adv

    def attacker_objective(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(J, CE term) on this batch, differentiable w.r.t. the U-Net's parameters."""
        objective, cross_entropy, _ = self._objective(model, pixels, labels)
        return objective, cross_entropy

    def attacker_step(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        """One Adam step of the U-Net ascending J, with the detector in eval mode; only the U-Net's
        parameters receive gradients."""
        return self._attacker_update(model, pixels, labels)[0]

    def _attacker_update(self, model: nn.Module, pixels: torch.Tensor,
                         labels: torch.Tensor) -> tuple[dict[str, float], torch.Tensor]:
        """attacker_step, also returning the (detached) examples it trained on."""
        unet = self._require_setup()
        self.unet_optimizer.zero_grad(set_to_none=True)
        with eval_mode(model), torch.enable_grad():
            objective, cross_entropy, adv = self._objective(model, pixels.detach(), labels)
            (-objective).backward(inputs=list(unet.parameters()))
        self.unet_optimizer.step()
        logs = {"attacker_objective": objective.item(), "attacker_cross_entropy": cross_entropy.item()}
        return logs, adv.detach()

    def step(self, model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor,
             optimizer: torch.optim.Optimizer) -> dict[str, float]:
        self._require_setup()
        pixels = pixels.detach()
        parts, weights = [pixels], [self.mix_clean]
        detector = unwrap(model)  # attacks take input gradients (the U-Net's too): no detector all-reduce
        if self.mix_pgd > 0:
            parts.append(pgd(detector, pixels, labels, self.pgd_eps, self.pgd_steps, self.pgd_step_size,
                             random_start=True, generator=self.generator))
            weights.append(self.mix_pgd)
        attacker_logs, unet_adv = self._attacker_update(detector, pixels, labels)
        if self.mix_unet > 0:
            parts.append(unet_adv)  # the examples the attacker just trained on (saves a U-Net forward)
            weights.append(self.mix_unet)

        optimizer.zero_grad(set_to_none=True)
        logits = model(torch.cat(parts)).split(len(pixels))
        losses = [F.cross_entropy(part, labels) for part in logits]
        loss = sum(w * part_loss for w, part_loss in zip(weights, losses))
        loss.backward()
        optimizer.step()

        named = dict(zip(["clean"] + (["pgd"] if self.mix_pgd > 0 else []) + (["unet"] if self.mix_unet > 0 else []),
                         losses))
        return {"loss": loss.item(), "accuracy": accuracy(logits[0], labels),
                "clean_loss": named["clean"].item(),
                "pgd_loss": named["pgd"].item() if "pgd" in named else math.nan,
                "unet_loss": named["unet"].item() if "unet" in named else math.nan,
                "attacker_objective": attacker_logs["attacker_objective"]}

    def state_dict(self) -> dict[str, Any]:
        if self.unet is None:
            return dict(self._pending or {})
        return {"unet": self.unet.state_dict(), "unet_optimizer": self.unet_optimizer.state_dict(),
                "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if not state:
            return
        if self.unet is None:
            self._pending = state
            return
        self.unet.load_state_dict(state["unet"])
        self.unet_optimizer.load_state_dict(state["unet_optimizer"])
        self.generator.set_state(state["generator"].cpu())

    def artifacts(self) -> dict[str, dict]:
        return {"unet_attacker": self._require_setup().state_dict()}
