"""The Prior interface: an unnormalised log-density of the latents, its base p0, and a sampler.

    log p(z) = tilt(z) + log p0(z) + const,     p0 = N(0, I)

* :class:`GaussianPrior`      tilt = 0 (the pretrained, "0-stage" model)
* :class:`EnergyTiltedPrior`  tilt = f_alpha(z) (LEBM, ``mle``)
* :class:`RatioProductPrior`  tilt = sum_k log r_k(z) (adaptive multi-stage NCE)
* :class:`JointPrior`         tilt = sum_i f_i(z_i) over a Gaussian hierarchy (multi-layer)

Every prior answers the same verbs (``base_sample``, ``chain_start``, ``tilt``, ``log_prob``, ``sample``) and
serialises itself as a JSON ``spec`` plus a state dict, so that ``sample``, ``reconstruct`` and ``anomaly`` work
for any model without knowing which method made it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ebmtool.config import Langevin
from ebmtool.registry import Registry
from ebmtool.sampling import ChainResult, Latent, langevin, sir


class Prior(nn.Module):
    type_name = "prior"
    supports_sir = True

    def __init__(self, nz: int):
        super().__init__()
        self.nz = nz

    # --- the verbs ---------------------------------------------------------------------------
    def base_sample(self, n: int, device: torch.device | str = "cpu") -> Latent:
        return torch.randn(n, self.nz, device=device)

    def chain_start(self, n: int, device: torch.device | str = "cpu") -> Latent:
        """Where every short-run chain on this prior starts: the prior chain of training negatives and of sampling,
        and posterior inference. p0 here; a short-run chain is a model of its start, so training, sampling and
        scoring share it (:class:`ebmtool.priors.JointPrior` may start from N(0, I) on every layer; the joint methods'
        ``negatives_from=positives`` starts training negatives at the batch's z+ instead)."""
        return self.base_sample(n, device)

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
    ) -> ChainResult:
        """Draw n latents. Gaussian: exact. Otherwise Langevin on log p from :meth:`chain_start`, or SIR from p0.
        ``step_size`` is the sampler's own (LEBM form; a chain config passes :meth:`Langevin.effective_step_size`).
        The caller decides what a diverged chain means (``ChainResult.finite``)."""
        # drawn before the SIR proposals too, as always: a fixed seed keeps giving the same samples
        z0 = self.base_sample(n, device) if self.is_base or sampler == "sir" else self.chain_start(n, device)
        if self.is_base:
            return ChainResult(z0)
        if sampler == "sir":
            if not self.supports_sir:
                raise ValueError("SIR is not available for this prior")
            props = self.base_sample(n * sir_proposals, device)
            return ChainResult(sir(self.tilt, props, n))
        return self.chain(z0, Langevin.stored(steps, step_size), record_every=record_every)

    def chain(self, z0: Latent | int, c: Langevin, what: str = "prior Langevin", record_every: int = 0,
              device: torch.device | str = "cpu") -> ChainResult:
        """The one prior short-run chain (mle and joint negatives, adaptive-NCE ``--prior-sampler langevin``,
        sampling): Langevin on log p from ``z0`` (or from n draws of :meth:`chain_start` when ``z0`` is an int n)."""
        z0 = self.chain_start(z0, device) if isinstance(z0, int) else z0
        return langevin(self.log_prob, z0, c.steps, c.effective_step_size(), noise=c.noise, freeze=[self],
                        record_every=record_every, what=what)

    # --- serialisation -----------------------------------------------------------------------
    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "nz": self.nz}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Prior":
        return cls(spec["nz"])


PRIORS: Registry[type[Prior]] = Registry("prior", Prior)
register_prior = PRIORS.register
prior_from_spec = PRIORS.from_spec


@register_prior("gaussian")
class GaussianPrior(Prior):
    def tilt(self, z):
        return torch.zeros(z.shape[0], device=z.device, dtype=z.dtype)

    @property
    def is_base(self) -> bool:
        return True


