"""LEBM's prior: an energy-tilted Gaussian (Pang et al. 2020, eq. 2)."""

from __future__ import annotations

from ebmtool.nets.mlp import EnergyMLP
from ebmtool.priors.base import Prior, register_prior


@register_prior("energy")
class EnergyTiltedPrior(Prior):
    """p(z) ∝ exp(f(z)) N(z; 0, I) with f an MLP (LEBM eq. 2)."""

    def __init__(self, nz: int, hidden: int = 200, layers: int = 2, slope: float = 0.2):
        super().__init__(nz)
        self.f = EnergyMLP(nz, hidden, layers, slope)
        self.arch = {"hidden": hidden, "layers": layers, "slope": slope}

    def tilt(self, z):
        return self.f(z)

    def spec(self):
        return {**super().spec(), **self.arch}

    @classmethod
    def from_spec(cls, spec):
        return cls(spec["nz"], spec["hidden"], spec["layers"], spec["slope"])
