"""The joint EBM prior over the latents (z_1, ..., z_L) of a multi-layer generator (Cui, Wu & Han, CVPR 2023,
eq. 6-7): an energy term per layer tilting a Gaussian hierarchy; hierarchical sampling of Sec. 5.2."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import torch
from torch import nn

from ebmtool.nets.encoders import GaussianMLP, gaussian_log_prob
from ebmtool.nets.mlp import EnergyMLP
from ebmtool.priors.base import Prior, register_prior
from ebmtool.sampling import ChainResult, langevin, sir

Layers = tuple[torch.Tensor, ...]


# ------------------------------------------------------------------------------------------------
# the prior
# ------------------------------------------------------------------------------------------------
def _take(z: Layers, idx: torch.Tensor) -> Layers:
    return tuple(t[idx] for t in z)


def _insert(free: Sequence[torch.Tensor], k: int, fixed: torch.Tensor) -> Layers:
    """(z_1..z_L without layer k) + z_k -> (z_1, ..., z_L)."""
    free = list(free)
    return tuple(free[:k] + [fixed] + free[k:])


@register_prior("joint")
class JointPrior(Prior):
    """Joint EBM prior over (z_1, ..., z_L) (Cui, Wu & Han 2023, eq. 6-7).

    ``tilt(z) = sum_i f_i(z_i)`` (one :class:`EnergyMLP` per layer) and ``base_log_prob`` is the normalised
    log-density of the Gaussian hierarchy, log N(z_L; 0, I) + sum_{i<L} log N(z_i; mu_i(z_{i+1}), sigma_i^2),
    so ``log_prob`` = tilt + base is eq. 13's target up to log Z. ``base_sample`` is ancestral sampling of the
    hierarchy (SIR's proposals, hierarchical sampling).

    ``start`` is where the short-run chains start (:meth:`chain_start`): ``"noise"``, N(0, I) on every layer as
    in the authors' joint-training code, or ``"ancestral"``, draws of the Gaussian hierarchy. From ancestral
    starts a conditional whose sigma grows puts the chains' z_1 far out, the posterior z_1+ stays where it started,
    the conditional fits that spread, and the loop ran away on MNIST (docs/results/mnist_anomaly_v3.md,
    joint-mle); the noise start breaks it. Models saved before the option existed were trained from ancestral
    starts and keep them.

    ``ebm=False`` drops the energy terms: no f_i, ``tilt`` is 0 and p(z) is the Gaussian hierarchy alone, the
    ablation of the EBM prior (a hierarchical VAE when trained by joint-vi; the paper's baselines have no EBM either).
    """

    STARTS = ("noise", "ancestral")

    def __init__(self, dims: Sequence[int], energy: dict[str, Any], energy_upper: dict[str, Any],
                 conditional: dict[str, Any], start: str = "noise", ebm: bool = True):
        dims = tuple(int(d) for d in dims)
        if len(dims) < 2:
            raise ValueError("a joint prior needs at least 2 latent layers")
        if start not in self.STARTS:
            raise ValueError(f"start must be one of {self.STARTS}, not {start!r}")
        super().__init__(dims[0])
        self.dims = dims
        self.start = start
        self.ebm = bool(ebm)
        self.arch = ({"energy": dict(energy), "energy_upper": dict(energy_upper)} if self.ebm else {}) | {
            "conditional": dict(conditional)}  # without energy terms their networks' settings are not saved
        self.energies = nn.ModuleList(EnergyMLP(d, **(energy if i == 0 else energy_upper))
                                      for i, d in enumerate(dims) if self.ebm)
        # conditionals[i]: p(z_i | z_{i+1}) with 0-based i (the paper's p(z_{i+1} | z_{i+2}), layers numbered from 1)
        self.conditionals = nn.ModuleList(GaussianMLP(dims[i + 1], dims[i], **conditional)
                                          for i in range(len(dims) - 1))

    @property
    def layers(self) -> int:
        return len(self.dims)

    @property
    def is_base(self) -> bool:
        """Without energy terms p(z) is the hierarchy itself, drawn exactly by ancestral sampling."""
        return not self.ebm

    # --- densities ------------------------------------------------------------------------------
    def tilt(self, z: Layers) -> torch.Tensor:
        """sum_i f_i(z_i), shape (B,); zeros without energy terms (``ebm=False``)."""
        if not self.ebm:
            return z[0].new_zeros(len(z[0]))
        return sum(f(t) for f, t in zip(self.energies, z))

    def conditional_log_prob(self, z: Layers) -> torch.Tensor:
        """sum_{i<L} log N(z_i; mu_i(z_{i+1}), sigma_i(z_{i+1})^2), shape (B,)."""
        return sum(gaussian_log_prob(z[i], *c(z[i + 1])) for i, c in enumerate(self.conditionals))

    def base_log_prob(self, z: Layers) -> torch.Tensor:
        """log N(z_L; 0, I) + conditional_log_prob(z): the Gaussian hierarchy, normalised (eq. 2)."""
        top = z[-1]
        log_top = -0.5 * top.pow(2).sum(1) - 0.5 * top.shape[1] * math.log(2 * math.pi)
        return log_top + self.conditional_log_prob(z)

    # --- sampling -------------------------------------------------------------------------------
    def base_sample(self, n: int, device: torch.device | str = "cpu",
                    given: dict[int, torch.Tensor] | None = None) -> Layers:
        """Ancestral sampling: z_L ~ N(0, I), then z_i ~ N(mu_i(z_{i+1}), sigma_i^2) downwards.
        ``given`` {0-based layer: (n, d) tensor} clamps those layers (the layers below are drawn given them)."""
        given = given or {}
        dtype = next(self.parameters()).dtype
        zs: list[torch.Tensor] = [None] * self.layers  # type: ignore[list-item]
        with torch.no_grad():
            for i in reversed(range(self.layers)):
                if i in given:
                    zs[i] = given[i].detach()
                elif i == self.layers - 1:
                    zs[i] = torch.randn(n, self.dims[i], device=device, dtype=dtype)
                else:
                    mu, sigma = self.conditionals[i](zs[i + 1])
                    zs[i] = mu + sigma * torch.randn_like(mu)
        return tuple(zs)

    def chain_start(self, n: int, device: torch.device | str = "cpu") -> Layers:
        """The chains' start: N(0, I) on every layer (``start="noise"``) or :meth:`base_sample`."""
        if self.start == "ancestral":
            return self.base_sample(n, device)
        dtype = next(self.parameters()).dtype
        return tuple(torch.randn(n, d, device=device, dtype=dtype) for d in self.dims)

    def sample(self, n: int, *, steps: int, step_size: float, sampler: str = "langevin", device="cpu",
               record_every: int = 0, sir_proposals: int = 10):
        """Langevin over all layers from :meth:`chain_start` (Prior.sample), or SIR: resample n of n * sir_proposals
        ancestral draws with weights exp(sum_i f_i(z_i)) = p(z) / p_hierarchy(z)."""
        if sampler != "sir":
            return super().sample(n, steps=steps, step_size=step_size, sampler=sampler, device=device,
                                  record_every=record_every, sir_proposals=sir_proposals)
        props = self.base_sample(n * sir_proposals, device)
        idx = sir(lambda i: self.tilt(_take(props, i)), torch.arange(n * sir_proposals, device=device), n)
        return ChainResult(_take(props, idx))

    def resample_layers(self, z: Layers, keep: int, steps: int, step_size: float) -> ChainResult:
        """Hierarchical sampling (Sec. 5.2): hold layer ``keep`` (1 = bottom, L = top) fixed and draw the other
        layers afresh: ancestrally given z_keep below it, from the hierarchy above it, then ``steps`` Langevin
        steps on log p(z) over the free layers only (the conditional p(z_free | z_keep) ∝ p(z)); the result holds all
        layers. The free layers start from the hierarchy given z_keep whatever ``start`` is: that is the section's
        procedure, and an N(0, I) start would ignore the kept layer."""
        if not 1 <= keep <= self.layers:
            raise ValueError(f"keep must be a layer number in 1..{self.layers}")
        k = keep - 1
        fixed = z[k].detach()
        z0 = self.base_sample(len(fixed), fixed.device, given={k: fixed})
        if self.is_base and k == self.layers - 1:  # no energies: the layers below z_L, drawn given it, are exact
            return ChainResult(z0)
        free0 = tuple(t for i, t in enumerate(z0) if i != k)
        res = langevin(lambda f: self.log_prob(_insert(f, k, fixed)), free0, steps, step_size, freeze=[self],
                       what=f"Langevin with layer {keep} fixed")
        return dataclasses.replace(res, z=_insert(res.z, k, fixed))

    # --- serialisation --------------------------------------------------------------------------
    def spec(self):
        return {**super().spec(), "dims": list(self.dims), **self.arch, "chain_start": self.start, "ebm": self.ebm}

    @classmethod
    def from_spec(cls, spec):  # a spec without chain_start predates it: those models were trained from ancestral starts
        return cls(spec["dims"], spec.get("energy", {}), spec.get("energy_upper", {}), spec["conditional"],
                   spec.get("chain_start", "ancestral"), spec.get("ebm", True))
