"""The attacks `trainer eval` runs, by name, and one function that runs any of them on a scorer
(trainer.evaluation.scorers: a `trainer fit` run or an exported bundle).

Attacks (L∞, pixel space [0, 1] before normalisation, true labels, seeded per batch; frame
level). White-box, on the scorer's loss gradient (a run: cross-entropy by autograd; a bundle:
its gradient graphs, see trainer.evaluation.scorers for exactly which loss): FGSM at
ε ∈ {0.001, 0.005, 0.01, 0.02}; PGD-5 at ε ∈ {0.0001, 0.0005, 0.001}; PGD-10 and PGD-20 at
ε ∈ {1/255, 2/255, 4/255} (random start, step 2.5·ε/steps). A bundle with a model that lacks a
gradient graph gets no white-box attack, and the report says so. Black-box: a Square-attack-like
random search (Andriushchenko et al., ECCV 2020; margin loss, at most SQUARE_QUERIES queries per
crop) at ε = 4/255. Learned: a dual-attacker run's U-Net (unet_attacker.pt, saved at the run's last
epoch; its ε from the run's eps_unet option) applied once to each crop.

Adding an attack: its algorithm in this package, a family in AttackSpec and run_attack, and its
specs in DEFAULT_ATTACKS (or an attack set of its own, chosen in trainer/cli.py).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from trainer.attacks.square import SQUARE_QUERIES, square_attack
from trainer.attacks.unet import DEFAULT_EPS as UNET_DEFAULT_EPS
from trainer.attacks.unet import UNetAttacker
from trainer.attacks.white_box import scorer_fgsm, scorer_pgd
from trainer.evaluation.errors import EvaluationError

if TYPE_CHECKING:
    from trainer.evaluation.scorers import Scorer

UNET_FILE = "unet_attacker.pt"


@dataclass(frozen=True)
class AttackSpec:
    family: str  # fgsm, pgd (white-box), square (black-box) or unet (learned)
    eps: float
    steps: int = 0  # PGD steps; square: query budget
    eps_text: str = ""
    network: nn.Module | None = field(default=None, compare=False, repr=False)  # unet: the attacker

    @property
    def name(self) -> str:
        eps = self.eps_text or f"{self.eps:g}"
        family = f"pgd{self.steps}" if self.family == "pgd" else self.family
        return f"{family} eps={eps}"

    @property
    def group(self) -> str:
        return f"pgd{self.steps}" if self.family == "pgd" else self.family

    @property
    def box(self) -> str:
        return {"square": "black", "unet": "learned"}.get(self.family, "white")


# `--attack-set seeds`: FGSM where the seed methods state their headlines (gradient regularisation at
# 0.001, FGSM fine-tuning at 0.02), one gradient per crop and ε: the cheapest comparison with their claims
SEED_HEADLINE_ATTACKS: tuple[AttackSpec, ...] = tuple(AttackSpec("fgsm", eps) for eps in (0.001, 0.005, 0.01, 0.02))
DEFAULT_ATTACKS: tuple[AttackSpec, ...] = (
    *SEED_HEADLINE_ATTACKS,
    *(AttackSpec("pgd", eps, 5) for eps in (0.0001, 0.0005, 0.001)),
    *(AttackSpec("pgd", k / 255, steps, f"{k}/255") for steps in (10, 20) for k in (1, 2, 4)),
)
BLACK_BOX = AttackSpec("square", 4 / 255, SQUARE_QUERIES, "4/255")
# `--attack-set pgd10`: the two points the robustness goals name, for ranking candidates quickly
SCREENING_ATTACKS: tuple[AttackSpec, ...] = tuple(AttackSpec("pgd", k / 255, 10, f"{k}/255") for k in (1, 4))
# `--attack-set curve`: PGD-10 accuracy against ε from a quarter of the goal's 1/255 up, so that a
# robust-training run's progress shows while every crop still flips at the goals' two points
ROBUSTNESS_CURVE: tuple[AttackSpec, ...] = tuple(AttackSpec("pgd", k / 255, 10, f"{k:g}/255")
                                                 for k in (0.25, 0.5, 1, 2, 4))
ATTACK_SETS = {"full": DEFAULT_ATTACKS, "pgd10": SCREENING_ATTACKS, "curve": ROBUSTNESS_CURVE, "seeds": SEED_HEADLINE_ATTACKS}


def run_attack(scorer: Scorer, spec: AttackSpec, pixels: torch.Tensor, labels: torch.Tensor,
               seed: int = 0) -> torch.Tensor:
    """Adversarial pixels for one attack spec; `seed` seeds the random start / search."""
    if spec.family == "fgsm":
        return scorer_fgsm(scorer, pixels, labels, spec.eps)
    if spec.family == "pgd":
        return scorer_pgd(scorer, pixels, labels, spec.eps, spec.steps,
                          torch.Generator(device=pixels.device).manual_seed(seed))
    if spec.family == "square":
        return square_attack(scorer, pixels, labels, spec.eps, queries=spec.steps,
                             generator=torch.Generator().manual_seed(seed))
    if spec.family == "unet":
        with torch.no_grad():
            return spec.network.to(pixels.device)(pixels).detach()
    raise EvaluationError(f"unknown attack family {spec.family!r}")


def load_unet_attack(run_dir: Path, config: dict) -> AttackSpec | None:
    """The dual-attacker's U-Net saved in the run (None when there is none), as an attack at the
    run's eps_unet."""
    path = Path(run_dir) / UNET_FILE
    if not path.is_file():
        return None
    eps = float((config.get("options") or {}).get("eps_unet", UNET_DEFAULT_EPS))
    network = UNetAttacker(eps=eps)
    try:
        network.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
    except (RuntimeError, OSError, ValueError) as exc:
        raise EvaluationError(f"{path}: not a U-Net attacker state dict ({str(exc).splitlines()[0]})") from None
    eps_text = f"{round(eps * 255)}/255" if abs(eps * 255 - round(eps * 255)) < 1e-9 else ""
    return AttackSpec("unet", eps, eps_text=eps_text, network=network.eval())
