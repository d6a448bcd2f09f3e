"""A black-box L∞ attack: a Square-attack-like random search (Andriushchenko et al., "Square
Attack: a query-efficient black-box adversarial attack via random search", ECCV 2020) on a
`trainer eval` scorer's margin, at most SQUARE_QUERIES queries per crop by default. Uses only the
scorer's outputs, so it runs on any run or bundle, with or without gradients.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from trainer.attacks.white_box import check_eps

if TYPE_CHECKING:
    from trainer.evaluation.scorers import Scorer

SQUARE_QUERIES = 100
SQUARE_P_INIT = 0.05


def _square_fraction(p_init: float, iteration: int, queries: int) -> float:
    """The Square attack's schedule of the square's area fraction, rescaled to `queries`."""
    it = int(iteration / max(queries, 1) * 10000)
    for bound, divisor in ((10, 1), (50, 2), (200, 4), (500, 8), (1000, 16), (2000, 32), (4000, 64),
                           (6000, 128), (8000, 256)):
        if it <= bound:
            return p_init / divisor
    return p_init / 512


@torch.no_grad()
def square_attack(scorer: Scorer, pixels: torch.Tensor, labels: torch.Tensor, eps: float,
                  queries: int = SQUARE_QUERIES, p_init: float = SQUARE_P_INIT,
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """A black-box L∞ random search after the Square attack: start from random vertical stripes
    of ±eps (or the clean crop, when its margin is lower), then each query redraws a random
    square window to ±eps per channel and keeps it when the scorer's margin falls. At most
    `queries` scorer calls per crop (two for the start); crops already misclassified stop. Uses
    only the scorer's outputs (no gradients). Seeded by `generator` (CPU; default seed 0)."""
    eps = check_eps(eps)
    x = pixels.detach()
    if eps == 0 or queries < 2:
        return x.clone()
    generator = generator or torch.Generator().manual_seed(0)
    n, c, h, w = x.shape
    device = x.device

    def signs(*shape: int) -> torch.Tensor:
        return (torch.randint(0, 2, shape, generator=generator).float() * 2 - 1).to(device, x.dtype) * eps

    # The clean point is in the ball too: start from whichever of it and the stripes is worse
    # for the model, so the search never ends above the clean loss (one of the queries).
    adv = (x + signs(n, c, 1, w)).clamp(0.0, 1.0)
    margin = scorer.margin(adv, labels)
    clean_margin = scorer.margin(x, labels)
    keep_clean = clean_margin < margin
    adv[keep_clean] = x[keep_clean]
    margin = torch.minimum(margin, clean_margin)
    rows, cols = torch.arange(h, device=device), torch.arange(w, device=device)
    for iteration in range(2, queries):
        # Draws for every crop each time, so the stream does not depend on which are done.
        side = max(1, min(h, w, round(math.sqrt(_square_fraction(p_init, iteration, queries) * h * w))))
        top = torch.randint(0, h - side + 1, (n,), generator=generator).to(device)
        left = torch.randint(0, w - side + 1, (n,), generator=generator).to(device)
        window_signs = signs(n, c, 1, 1)
        active = (margin > 0).nonzero().squeeze(1)
        if len(active) == 0:
            break
        in_rows = (rows[None] >= top[:, None]) & (rows[None] < top[:, None] + side)
        in_cols = (cols[None] >= left[:, None]) & (cols[None] < left[:, None] + side)
        window = (in_rows[:, None, :, None] & in_cols[:, None, None, :])[active]
        delta = torch.where(window, window_signs[active].expand(-1, -1, h, w), adv[active] - x[active])
        candidate = (x[active] + delta).clamp(0.0, 1.0)
        new_margin = scorer.margin(candidate, labels[active])
        better = new_margin < margin[active]
        adv[active[better]] = candidate[better]
        margin[active[better]] = new_margin[better]
    return adv.detach()
