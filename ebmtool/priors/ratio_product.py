"""The adaptive multi-stage NCE prior: p0 times a product of density ratios (Xiao & Han 2022, Sec. 3.3)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ebmtool.nets.mlp import EnergyMLP
from ebmtool.priors.base import Prior, register_prior


@register_prior("ratio_product")
class RatioProductPrior(Prior):
    """p_K(z) = p0(z) prod_{k<K} r_k(z), log r_k = MLP_k(z) (adaptive multi-stage NCE)."""

    def __init__(self, nz: int, hidden: int = 200, layers: int = 2, slope: float = 0.1, stages: int = 0):
        super().__init__(nz)
        self.arch = {"hidden": hidden, "layers": layers, "slope": slope}
        self.stages = nn.ModuleList(self.new_ratio() for _ in range(stages))

    def new_ratio(self) -> EnergyMLP:
        return EnergyMLP(self.nz, **self.arch)

    def add_stage(self, r: EnergyMLP) -> None:
        for p in r.parameters():
            p.requires_grad_(False)
        self.stages.append(r)

    def tilt(self, z, upto: int | None = None):
        out = torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)
        for r in list(self.stages)[:upto]:
            out = out + r(z)
        return out

    def log_prob_upto(self, k: int) -> Callable[[torch.Tensor], torch.Tensor]:
        return lambda z: self.tilt(z, k) + self.base_log_prob(z)

    @property
    def is_base(self) -> bool:
        return len(self.stages) == 0

    def spec(self):
        return {**super().spec(), **self.arch, "stages": len(self.stages)}

    @classmethod
    def from_spec(cls, spec):
        return cls(spec["nz"], spec["hidden"], spec["layers"], spec["slope"], spec["stages"])
