"""The one Langevin sampler against closed forms, and SIR.

Convention: z <- z + (s^2/2) grad log pi(z) + s eps. For a Gaussian target with precision P the unadjusted chain
is a linear AR(1) process whose stationary covariance is known exactly: along an eigenvector of P with
eigenvalue lam, variance 1 / (lam (1 - s^2 lam / 4)), i.e. a relative discretisation bias of s^2 lam / 4.
The tests pick s so that bias (and the remaining distance from the start) sit well inside the tolerance."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ebmtool.errors import DivergenceError, UserError
from ebmtool.training import chain_latents
from ebmtool.sampling import frozen, langevin, sir


class LinearGenerator(nn.Module):
    """g(z) = W z."""

    def __init__(self, W: torch.Tensor):
        super().__init__()
        self.lin = nn.Linear(W.shape[1], W.shape[0], bias=False)
        with torch.no_grad():
            self.lin.weight.copy_(W)

    def forward(self, z):  # (B, d) -> (B, D)
        return self.lin(z)


W = torch.tensor([[1.0, 0.3, 0.0], [0.0, 0.8, -0.4], [0.5, 0.0, 0.6], [0.2, -0.3, 0.4]])  # D=4, d=3
SIGMA = 0.7


def _posterior_closed_form(x: torch.Tensor):
    d = W.shape[1]
    P = torch.eye(d, dtype=torch.float64) + W.double().T @ W.double() / SIGMA**2
    cov = torch.linalg.inv(P)
    mean = cov @ W.double().T @ x.double() / SIGMA**2
    return mean, cov, P


def test_langevin_matches_gaussian_posterior_of_linear_generator():
    torch.manual_seed(0)
    g = LinearGenerator(W)
    x = torch.tensor([0.9, -0.5, 1.2, 0.3])
    mean, cov, P = _posterior_closed_form(x)
    lam = torch.linalg.eigvalsh(P)
    s = 0.1
    assert float(s * s * lam.max() / 4) < 0.011  # discretisation bias ~1% of the variance at most
    steps = 1200
    assert (1 - s * s * float(lam.min()) / 2) ** steps < 1e-3  # start (N(0, I)) forgotten

    def log_pi(z):  # log N(z; 0, I) + log N(x; W z, sigma^2 I), per chain
        return -0.5 * z.pow(2).sum(1) - (x - g(z)).pow(2).sum(1) / (2 * SIGMA**2)

    n = 4000
    res = langevin(log_pi, torch.randn(n, 3), steps, s, freeze=[g])
    z, traj = res.checked(), res.trajectory
    assert res.finite and traj is None and z.shape == (n, 3) and not z.requires_grad
    zd = z.double()
    m_hat = zd.mean(0)
    c_hat = torch.cov(zd.T)
    # Monte-Carlo standard errors: sd/sqrt(n) ~ 0.012 for the mean, ~0.01 for covariance entries
    assert torch.allclose(m_hat, mean, atol=0.05), (m_hat, mean)
    assert torch.allclose(c_hat, cov, atol=0.04), (c_hat, cov)
    assert float(torch.linalg.norm(c_hat - cov) / torch.linalg.norm(cov)) < 0.1


def test_langevin_without_noise_is_gradient_ascent_to_the_mode():
    g = LinearGenerator(W)
    x = torch.tensor([0.9, -0.5, 1.2, 0.3])
    mean, _, _ = _posterior_closed_form(x)
    log_pi = lambda z: -0.5 * z.pow(2).sum(1) - (x - g(z)).pow(2).sum(1) / (2 * SIGMA**2)  # noqa: E731
    z = langevin(log_pi, torch.zeros(2, 3), 2000, 0.3, noise=False).checked()
    assert torch.allclose(z.double(), mean.expand(2, 3), atol=1e-4)


def test_multilayer_tuple_latents_move_jointly():
    torch.manual_seed(1)
    target1, target2 = torch.tensor([1.0, -1.0]), torch.tensor([2.0, 0.0, -2.0])

    def log_pi(zs):
        z1, z2 = zs
        return -0.5 * (z1 - target1).pow(2).sum(1) - 0.5 * (z2 - target2).pow(2).sum(1) / 0.25

    z0 = (torch.zeros(3000, 2), torch.zeros(3000, 3))
    out = langevin(log_pi, z0, 400, 0.3).checked()
    assert isinstance(out, tuple) and len(out) == 2
    assert out[0].shape == (3000, 2) and out[1].shape == (3000, 3)
    assert torch.allclose(out[0].mean(0), target1, atol=0.08)
    assert torch.allclose(out[1].mean(0), target2, atol=0.05)
    assert abs(float(out[1].var(0).mean()) - 0.25) < 0.04  # precision 4
    assert z0[0].abs().sum() == 0  # the start is not modified in place


def test_chain_populates_no_parameter_grad_and_restores_requires_grad():
    g = LinearGenerator(W)
    prior = nn.Linear(3, 1)
    fixed = nn.Linear(3, 1)
    fixed.requires_grad_(False)
    x = torch.randn(4)

    def log_pi(z):
        inside = [p.requires_grad for p in (*g.parameters(), *prior.parameters())]
        assert not any(inside), "parameters must be frozen inside the chain"
        return prior(z).squeeze(1) + fixed(z).squeeze(1) - (x - g(z)).pow(2).sum(1)

    langevin(log_pi, torch.randn(16, 3), 5, 0.1, freeze=[g, prior, fixed])
    for p in (*g.parameters(), *prior.parameters()):
        assert p.grad is None
        assert p.requires_grad
    for p in fixed.parameters():
        assert p.grad is None and not p.requires_grad  # stays frozen: only what was trainable is restored

    # even when the chain raises, requires_grad is restored
    with pytest.raises(RuntimeError):
        with frozen([g]):
            raise RuntimeError("boom")
    assert all(p.requires_grad for p in g.parameters())


def test_chain_without_freeze_still_leaves_no_grad():
    g = LinearGenerator(W)
    langevin(lambda z: -g(z).pow(2).sum(1), torch.randn(8, 3), 3, 0.1)
    assert all(p.grad is None for p in g.parameters())


def test_trajectory_records_expected_steps():
    torch.manual_seed(0)
    log_pi = lambda z: -0.5 * z.pow(2).sum(1)  # noqa: E731
    res = langevin(log_pi, torch.randn(5, 2), 10, 0.1, record_every=3)
    z, traj = res.z, res.trajectory
    assert traj.steps == [0, 3, 6, 9, 10]
    assert len(traj.states) == 5 and traj.states[0][0].shape == (5, 2)
    assert traj.stacked_log_probs().shape == (5, 5)
    assert torch.equal(traj.states[-1][0], z)  # the last recorded state is the returned one
    # recorded log-probabilities are those of the recorded states
    assert torch.allclose(traj.log_probs[2], log_pi(traj.states[2][0]))
    traj = langevin(log_pi, torch.randn(5, 2), 4, 0.1, record_every=1).trajectory
    assert traj.steps == [0, 1, 2, 3, 4]
    traj = langevin(log_pi, torch.randn(5, 2), 0, 0.1, record_every=2).trajectory
    assert traj.steps == [0]


def test_non_finite_chain_is_flagged_and_the_caller_raises():
    """The sampler does not raise on divergence: it reports ``finite``; ``checked()`` (evaluation) raises the one
    line, and a finite chain's ``checked()`` is its latents."""
    log_pi = lambda z: 500.0 * z.pow(2).sum(1)  # noqa: E731  - explodes geometrically
    res = langevin(log_pi, torch.ones(4, 2), 300, 1.0, what="test chain")
    assert not res.finite and not bool(torch.isfinite(res.z).all())
    with pytest.raises(DivergenceError) as e:
        res.checked()
    assert "test chain" in str(e.value) and "non-finite" in str(e.value) and "300 steps of size 1.0" in str(e.value)
    assert "try a smaller step size" in str(e.value) and len(str(e.value).splitlines()) == 1
    assert isinstance(e.value, UserError) and e.value.exit_code == 3
    # a training step raises the same line through chain_latents (which agrees across ranks first)
    with pytest.raises(DivergenceError, match="test chain: latents became non-finite"):
        chain_latents(res)
    ok = langevin(lambda z: -0.5 * z.pow(2).sum(1), torch.zeros(3, 2), 2, 0.1)
    assert ok.finite and ok.checked() is ok.z and chain_latents(ok) is ok.z


def test_sir_recovers_shifted_gaussian_mean():
    torch.manual_seed(0)
    mu = 0.7
    props = torch.randn(100_000, 1)
    # log N(z; mu, 1) - log N(z; 0, 1) = mu z - mu^2 / 2
    out = sir(lambda z: mu * z[:, 0] - mu * mu / 2, props, 20_000)
    assert out.shape == (20_000, 1)
    assert abs(float(out.mean()) - mu) < 0.03
    assert abs(float(out.var()) - 1.0) < 0.05


def test_sir_keeps_gradients_off():
    props = torch.randn(100, 2)
    w = nn.Linear(2, 1)
    out = sir(lambda z: w(z).squeeze(1), props, 10)
    assert not out.requires_grad and all(p.grad is None for p in w.parameters())
    assert math.isfinite(float(out.sum()))
