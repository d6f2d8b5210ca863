"""Energy / log-ratio MLP: d -> hidden (x layers) -> 1. Returns f(z) = -energy (a log-density tilt)."""

from __future__ import annotations

import torch
from torch import nn


def xavier_init(module: nn.Module) -> nn.Module:
    """Xavier-normal weights and zero biases for every linear / (transposed) conv layer."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.xavier_normal_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return module


class EnergyMLP(nn.Module):
    def __init__(self, nz: int, hidden: int = 200, layers: int = 2, slope: float = 0.2):
        super().__init__()
        dims = [nz] + [hidden] * layers
        blocks: list[nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            blocks += [nn.Linear(a, b), nn.LeakyReLU(slope)]
        blocks.append(nn.Linear(dims[-1], 1))
        self.net = nn.Sequential(*blocks)
        self.nz = nz
        xavier_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, nz) -> (B,)
        return self.net(z).squeeze(-1)
