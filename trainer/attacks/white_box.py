"""White-box L∞ attacks in pixel space [0, 1] (a `Detector` normalises inside).

FGSM and PGD are written once, on a gradient function `gradient(pixels, labels) -> ∇ₓ loss`,
and offered for the two gradient sources, which is why each has two names:

    fgsm, pgd                 an nn.Module (training methods, benchmarks): ∇ₓ of the mean
                              cross-entropy by autograd, with the model in eval mode
    scorer_fgsm, scorer_pgd   a `trainer eval` scorer (trainer.evaluation.scorers): its
                              loss_gradient, by autograd for a run, from the bundle's ONNX
                              gradient graphs for a bundle

For a PyTorch model both give the same examples (tests check it): the mean and the summed
loss's gradients differ by a positive factor, so their signs agree.

The module attacks run the model in eval mode while generating (batch-norm uses its running
statistics and does not update them; dropout is off), then put every sub-module back in the
train/eval mode it had. Gradients are taken with `torch.autograd.grad` with respect to the
input only, so no parameter's `.grad` is created or accumulated, and the returned examples are
detached. `eps = 0` returns the input's values unchanged.

    fgsm: Goodfellow et al., "Explaining and Harnessing Adversarial Examples", ICLR 2015.
    pgd:  Madry et al., "Towards Deep Learning Models Resistant to Adversarial Attacks", ICLR 2018.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from trainer.evaluation.scorers import Scorer

PGD_SEED = 0  # the random start's seed when no generator is given

Gradient = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (pixels, labels) -> ∇ₓ loss


@contextmanager
def eval_mode(model: nn.Module):
    """Evaluation mode inside the block; afterwards each sub-module gets its own previous mode
    back (a model whose frozen batch-norm layers stay in eval mode keeps them that way)."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def input_gradient(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """∇ₓ of the mean cross-entropy, without touching any parameter's .grad."""
    x = pixels.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = F.cross_entropy(model(x), labels)
        (gradient,) = torch.autograd.grad(loss, x)
    return gradient


def check_eps(eps: float) -> float:
    eps = float(eps)
    if eps < 0:
        raise ValueError(f"eps must be >= 0, got {eps}")
    return eps


# ----------------------------------------------------------------- the attacks, on a gradient

def _fgsm(gradient: Gradient, pixels: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    eps = check_eps(eps)
    if eps == 0:
        return pixels.detach().clone()
    return (pixels.detach() + eps * gradient(pixels, labels).sign()).clamp_(0.0, 1.0)


def _pgd(gradient: Gradient, pixels: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
         step_size: float | None, random_start: bool, generator: torch.Generator | None) -> torch.Tensor:
    eps = check_eps(eps)
    if eps == 0:
        return pixels.detach().clone()
    step_size = 2.5 * eps / max(steps, 1) if step_size is None else float(step_size)
    x = pixels.detach()
    lower, upper = (x - eps).clamp(min=0.0), (x + eps).clamp(max=1.0)
    adv = x.clone()
    if random_start:
        if generator is None:
            generator = torch.Generator(device=x.device).manual_seed(PGD_SEED)
        noise = torch.rand(x.shape, generator=generator, device=generator.device, dtype=x.dtype)
        adv = torch.max(torch.min(adv + (2.0 * noise.to(x.device) - 1.0) * eps, upper), lower)
    for _ in range(steps):
        adv = torch.max(torch.min(adv + step_size * gradient(adv, labels).sign(), upper), lower)
    return adv.detach()


# ------------------------------------------------------------------------- on an nn.Module

def fgsm(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step of size eps: clamp(x + eps · sign(∇ₓ CE), 0, 1)."""
    with eval_mode(model):
        return _fgsm(lambda x, y: input_gradient(model, x, y), pixels, labels, eps)


def pgd(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
        step_size: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """`steps` signed-gradient ascent steps of `step_size` (default 2.5 · eps / steps), each
    projected onto the L∞ ball of radius eps around x and onto [0, 1]. With `random_start`
    it starts from a uniform point of the ball, drawn from `generator` (default: a fresh one
    seeded with PGD_SEED, so the attack is deterministic)."""
    eps = check_eps(eps)
    steps = int(steps)
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    with eval_mode(model):
        return _pgd(lambda x, y: input_gradient(model, x, y), pixels, labels, eps, steps, step_size, random_start,
                    generator)


# ----------------------------------------------------------------------------- on a scorer

def scorer_fgsm(scorer: Scorer, pixels: torch.Tensor, labels: torch.Tensor, eps: float) -> torch.Tensor:
    """One signed-gradient step (Goodfellow et al., ICLR 2015) on the scorer's loss gradient:
    clamp(x + eps · sign(∇ₓ loss), 0, 1)."""
    return _fgsm(scorer.loss_gradient, pixels, labels, eps)


def scorer_pgd(scorer: Scorer, pixels: torch.Tensor, labels: torch.Tensor, eps: float, steps: int,
               generator: torch.Generator) -> torch.Tensor:
    """PGD (Madry et al., ICLR 2018) on the scorer's loss gradient: from a uniform random point
    of the L∞ ball (drawn from `generator`), `steps` signed-gradient steps of 2.5 · eps / steps,
    each projected onto the ball and [0, 1]."""
    return _pgd(scorer.loss_gradient, pixels, labels, eps, steps, None, True, generator)
