"""The Prior interface: an unnormalised log-density of the latents, its base p0, and a sampler.

    log p(z) = tilt(z) + log p0(z) + const,     p0 = N(0, I)

* :class:`GaussianPrior`      tilt = 0 (the pretrained, "0-stage" model)
* :class:`EnergyTiltedPrior`  tilt = f_alpha(z) (LEBM, ``mle``)
* :class:`RatioProductPrior`  tilt = sum_k log r_k(z) (adaptive multi-stage NCE)
* :class:`~ebmtool.joint.JointPrior` (multi-layer, in ``ebmtool.joint``)

Every prior answers the same verbs (``base_sample``, ``tilt``, ``log_prob``, ``sample``) and serialises
itself as a JSON ``spec`` plus a state dict, so that ``sample``, ``reconstruct`` and ``anomaly`` work for
any model without knowing which method made it.
"""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import nn

from ebmtool.nets.mlp import EnergyMLP
from ebmtool.sampling import Latent, langevin, sir

PRIOR_TYPES: dict[str, type["Prior"]] = {}


def register_prior(name: str):
    def deco(cls):
        if name in PRIOR_TYPES:
            raise ValueError(f"prior type {name!r} registered twice")
        cls.type_name = name
        PRIOR_TYPES[name] = cls
        return cls

    return deco


class Prior(nn.Module):
    type_name = "prior"
    supports_sir = True

    def __init__(self, nz: int):
        super().__init__()
        self.nz = nz

    # --- the verbs ---------------------------------------------------------------------------
    def base_sample(self, n: int, device: torch.device | str = "cpu") -> Latent:
        return torch.randn(n, self.nz, device=device)

    def base_log_prob(self, z: Latent) -> torch.Tensor:
        return -0.5 * z.pow(2).sum(dim=1)

    def tilt(self, z: Latent) -> torch.Tensor:
        """log p(z) - log p0(z), unnormalised; shape (B,)."""
        raise NotImplementedError

    def log_prob(self, z: Latent) -> torch.Tensor:
        return self.tilt(z) + self.base_log_prob(z)

    @property
    def is_base(self) -> bool:
        return False

    def sample(
        self, n: int, *, steps: int, step_size: float, sampler: str = "langevin", device="cpu",
        record_every: int = 0, sir_proposals: int = 10,
    ):
        """Draw n latents. Gaussian: exact. Otherwise Langevin from p0 on log p, or SIR from p0."""
        z0 = self.base_sample(n, device)
        if self.is_base:
            return z0, None
        if sampler == "sir":
            if not self.supports_sir:
                raise ValueError("SIR is not available for this prior")
            props = self.base_sample(n * sir_proposals, device)
            return sir(self.tilt, props, n), None
        return langevin(self.log_prob, z0, steps, step_size, freeze=[self], record_every=record_every,
                        what="prior Langevin")

    # --- serialisation -----------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "nz": self.nz}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Prior":
        return cls(spec["nz"])


def prior_from_spec(spec: dict[str, Any]) -> Prior:
    t = spec.get("type")
    if t not in PRIOR_TYPES:
        raise KeyError(f"unknown prior type {t!r}")
    return PRIOR_TYPES[t].from_spec(spec)


@register_prior("gaussian")
class GaussianPrior(Prior):
    def tilt(self, z):
        return torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)

    @property
    def is_base(self) -> bool:
        return True


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
