"""A tiny U-Net that learns to attack a detector (the dual-attacker method's second attacker).

Two down and two up blocks with skip connections, base width 16 (16-32-64 channels), 3 output
channels; the perturbation is eps · tanh(out), so it is bounded by eps in L∞ by construction,
and the adversarial example is clamp(x + perturbation, 0, 1). No batch-norm (GroupNorm
instead): the attacker behaves the same in train and eval mode and does not depend on the
batch's composition. Any input size works (the up path resizes to the skip's size).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DEFAULT_EPS = 4 / 255


def _block(in_channels: int, out_channels: int) -> nn.Sequential:
    groups = 4 if out_channels % 4 == 0 else 1
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.LeakyReLU(0.2, inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1),
        nn.GroupNorm(groups, out_channels),
        nn.LeakyReLU(0.2, inplace=True),
    )


class UNetAttacker(nn.Module):
    def __init__(self, eps: float = DEFAULT_EPS, base: int = 16):
        super().__init__()
        if eps < 0:
            raise ValueError(f"eps must be >= 0, got {eps}")
        self.eps = float(eps)
        self.enc0 = _block(3, base)  # full resolution
        self.enc1 = _block(base, 2 * base)  # 1/2
        self.enc2 = _block(2 * base, 4 * base)  # 1/4 (bottleneck)
        self.dec1 = _block(4 * base + 2 * base, 2 * base)  # up to 1/2, skip from enc1
        self.dec0 = _block(2 * base + base, base)  # up to full, skip from enc0
        self.out = nn.Conv2d(base, 3, 1)

    def raw(self, pixels: torch.Tensor) -> torch.Tensor:
        """The unbounded output (before tanh)."""
        s0 = self.enc0(pixels * 2.0 - 1.0)
        s1 = self.enc1(F.max_pool2d(s0, 2, ceil_mode=True))
        bottom = self.enc2(F.max_pool2d(s1, 2, ceil_mode=True))
        up1 = F.interpolate(bottom, size=s1.shape[-2:], mode="bilinear", align_corners=False)
        d1 = self.dec1(torch.cat([up1, s1], 1))
        up0 = F.interpolate(d1, size=s0.shape[-2:], mode="bilinear", align_corners=False)
        return self.out(self.dec0(torch.cat([up0, s0], 1)))

    def perturbation(self, pixels: torch.Tensor) -> torch.Tensor:
        """eps · tanh(out): |perturbation| <= eps everywhere."""
        return self.eps * torch.tanh(self.raw(pixels))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """The adversarial example clamp(x + perturbation, 0, 1)."""
        return (pixels + self.perturbation(pixels)).clamp(0.0, 1.0)


def total_variation(perturbation: torch.Tensor) -> torch.Tensor:
    """Mean absolute difference between vertical and horizontal neighbours (anisotropic TV),
    averaged over the batch: 0 for a constant perturbation."""
    dy = (perturbation[..., 1:, :] - perturbation[..., :-1, :]).abs().mean()
    dx = (perturbation[..., :, 1:] - perturbation[..., :, :-1]).abs().mean()
    return dy + dx


def high_frequency_energy(perturbation: torch.Tensor, radius: float = 0.25) -> torch.Tensor:
    """Fraction, in [0, 1], of the perturbation's spectral energy (|fft2|², per image and
    channel) at radial frequencies above `radius` · Nyquist; averaged over the batch."""
    height, width = perturbation.shape[-2:]
    spectrum = torch.fft.fft2(perturbation.float()).abs().pow(2)
    fy = torch.fft.fftfreq(height, device=perturbation.device).view(-1, 1)
    fx = torch.fft.fftfreq(width, device=perturbation.device).view(1, -1)
    high = (torch.sqrt(fy ** 2 + fx ** 2) > radius * 0.5).to(spectrum.dtype)  # Nyquist = 0.5 cycle/pixel
    total = spectrum.sum(dim=(-2, -1))
    return ((spectrum * high).sum(dim=(-2, -1)) / (total + 1e-12)).mean()
