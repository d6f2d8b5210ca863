"""The one Langevin sampler of ebmtool (and sampling-importance-resampling).

The sampler's form (the LEBM code's)::

    z <- z + (s^2 / 2) * grad_z log pi(z) + s * eps,      eps ~ N(0, I)

A chain written in the adaptive-NCE paper's form z + (s/2) grad + sqrt(s) eps (``Langevin.convention =
"xiao-han"``) is this sampler at step sqrt(s); :meth:`ebmtool.config.Langevin.effective_step_size` converts, and
every caller passes its result here (docs/design.md §3).

``log_pi`` is any differentiable function returning one log-density per chain, shape (B,). Latents are one
tensor (B, d) or a tuple of tensors for multi-layer models (all layers move jointly). Inside a chain only
grad_z is computed: one backward pass per step, no parameter gradients (parameters are frozen for the
duration of the chain), no graph kept between steps, no host synchronisation until the chain ends.

The sampler is pure: it neither raises on a diverged chain nor talks to other torchrun ranks. It returns a
:class:`ChainResult` whose ``finite`` flag says whether the chain ended finite; the caller decides. Evaluation
raises :meth:`ChainResult.checked`'s one line; a training step first agrees across ranks
(:func:`ebmtool.training.chain_latents`), so that every rank stops together.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence, Union

import torch
from torch import nn

from ebmtool.errors import DivergenceError

Latent = Union[torch.Tensor, tuple[torch.Tensor, ...]]
LogDensity = Callable[[Latent], torch.Tensor]


@contextlib.contextmanager
def frozen(modules: Iterable[nn.Module]):
    """Temporarily stop parameters from requiring grad, so a chain builds no weight-gradient graph."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def _as_tuple(z: Latent) -> tuple[torch.Tensor, ...]:
    return z if isinstance(z, tuple) else (z,)


def _like(template: Latent, zs: Sequence[torch.Tensor]) -> Latent:
    return tuple(zs) if isinstance(template, tuple) else zs[0]


@dataclass
class Trajectory:
    """Every ``every``-th state of a chain (step 0 = the start) and its log-density per chain."""

    steps: list[int] = field(default_factory=list)
    states: list[tuple[torch.Tensor, ...]] = field(default_factory=list)
    log_probs: list[torch.Tensor] = field(default_factory=list)

    def stacked_log_probs(self) -> torch.Tensor:  # (T, B)
        return torch.stack(self.log_probs)


@dataclass(frozen=True)
class ChainResult:
    """What a chain ends with: the latents (detached), the recorded trajectory (or None) and whether every
    latent is finite (True where no chain ran: exact draws, SIR, an encoder). ``what``, ``steps`` and
    ``step_size`` name the chain in its divergence message."""

    z: Latent
    trajectory: Trajectory | None = None
    finite: bool = True
    what: str = "Langevin chain"
    steps: int = 0
    step_size: float = 0.0

    def divergence_message(self) -> str:
        return (f"{self.what}: latents became non-finite after {self.steps} steps of size {self.step_size} "
                "(try a smaller step size or fewer steps)")

    def checked(self) -> Latent:
        """The latents, or :class:`DivergenceError` (one line, exit 3) when the chain diverged: the decision of a
        caller on one rank (evaluation). A training step agrees across ranks first (``training.chain_latents``)."""
        if not self.finite:
            raise DivergenceError(self.divergence_message())
        return self.z


def langevin(
    log_pi: LogDensity,
    z0: Latent,
    steps: int,
    step_size: float,
    *,
    noise: bool = True,
    freeze: Iterable[nn.Module] = (),
    record_every: int = 0,
    what: str = "Langevin chain",
) -> ChainResult:
    """Run ``steps`` Langevin steps on ``log_pi`` from ``z0``; returns the final latents (detached), the
    trajectory and whether the latents are finite.

    ``freeze``: modules whose parameters must not collect gradients inside the chain.
    ``record_every`` > 0 records the state and log-density every k-th step (and the last one).
    Finiteness is checked once per chain (one host sync at the end), never per step; the sampler does not raise
    on it (see :class:`ChainResult`).
    """
    if steps < 0:
        raise ValueError("steps must be >= 0")
    traj = Trajectory() if record_every > 0 else None
    half_s2 = 0.5 * step_size * step_size
    # autograd even where the caller is in torch.inference_mode() or no_grad(): the chain needs grad_z (its start
    # is copied outside inference mode, so that autograd may record it)
    with torch.inference_mode(False), frozen(freeze), torch.enable_grad():
        zs = [t.detach().clone() for t in _as_tuple(z0)]
        for i in range(steps + (1 if traj is not None else 0)):
            for t in zs:
                t.requires_grad_(True)
            lp = log_pi(_like(z0, zs))  # (B,)
            if traj is not None and (i % record_every == 0 or i == steps):
                traj.steps.append(i)
                traj.states.append(tuple(t.detach().clone() for t in zs))
                traj.log_probs.append(lp.detach().clone())
            if i == steps:
                break
            grads = torch.autograd.grad(lp.sum(), zs)
            with torch.no_grad():
                new = []
                for t, g in zip(zs, grads):
                    t = t.detach().add_(g, alpha=half_s2)
                    if noise:
                        t.add_(torch.randn_like(t), alpha=step_size)
                    new.append(t)
                zs = new
    zs = [t.detach() for t in zs]
    finite = all(bool(torch.isfinite(t).all()) for t in zs)
    return ChainResult(_like(z0, zs), traj, finite, what, steps, step_size)


def sir(log_weight: Callable[[torch.Tensor], torch.Tensor], proposals: torch.Tensor, n: int) -> torch.Tensor:
    """Sampling-importance-resampling: resample ``n`` of the proposals (drawn from p0) with weights
    proportional to exp(log_weight(z)) = p(z)/p0(z) (up to a constant)."""
    with torch.no_grad():
        lw = log_weight(proposals)
        w = torch.softmax(lw - lw.max(), dim=0)
        idx = torch.multinomial(w, n, replacement=True)
    return proposals[idx]
