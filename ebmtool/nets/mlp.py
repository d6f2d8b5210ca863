"""Energy / log-ratio MLP: d -> hidden (x layers) -> 1. Returns f(z) = -energy (a log-density tilt)."""

from __future__ import annotations

import torch
from torch import nn


def check_parameters(n: int, what: str) -> None:
    """Refuse, before any weight is allocated, a network whose ``n`` float32 parameters alone exceed this machine's
    memory (sizes within the configs' limits can still combine into one: docs/usage.md, "Limits")."""
    from ebmtool.runtime import check_fits_memory

    check_fits_memory(4 * n, f"{what}: its {n:,} parameters", "use smaller layers")


def mlp_blocks(dims: list[int], d_out: int, slope: float, what: str) -> nn.Sequential:
    """Linear + LeakyReLU through ``dims``, then a Linear to ``d_out`` (size checked before allocation)."""
    check_parameters(sum((a + 1) * b for a, b in zip(dims, dims[1:] + [d_out])), what)
    blocks: list[nn.Module] = []
    for a, b in zip(dims[:-1], dims[1:]):
        blocks += [nn.Linear(a, b), nn.LeakyReLU(slope)]
    blocks.append(nn.Linear(dims[-1], d_out))
    return nn.Sequential(*blocks)


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
        self.net = mlp_blocks([nz] + [hidden] * layers, 1, slope, f"an energy MLP {nz} -> {hidden} x {layers} -> 1")
        self.nz = nz
        xavier_init(self)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, nz) -> (B,)
        return self.net(z).squeeze(-1)
