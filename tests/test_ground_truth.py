"""Ground truth on latents alone (ebmtool.eval.ground_truth): the fitted priors estimate what they should.

* the grid KL against the closed form KL(N(mu, I) || N(0, I)) = |mu|^2/2;
* small gap: single-stage NCE between N(mu, I) (|mu| = 0.5) and N(0, I) recovers the linear log-ratio
  mu.z - |mu|^2/2 (RMSE < 0.15 over samples of both; measured 0.04, an untrained ratio 0.6);
* large gap (the synthetic dataset's 8-mode ring): at the same total of 400 NCE iterations the 4-stage
  adaptive prior is closer to the target in KL than the 1-stage one (measured 0.43 vs 0.68 nats over 5 seeds:
  0.39-0.44 vs 0.68-0.70), and both are closer than N(0, I) (1.76);
* LEBM: short-run samples of the fitted energy prior have a higher mean target log-density (measured about
  -6 vs -10.2) and are nearer the ring's modes (0.69 vs 0.98) than N(0, I) samples.

Each claim also runs its criterion on an *untrained* prior and checks that it fails there, so the assertions
test the fitting and not the set-up. Fixed seeds; one torch thread (the nets are small, and the test machines
are shared): about 17 s of CPU time, 50 s wall on 2 cores at load average 5.
"""

from __future__ import annotations

import math

import pytest
import torch

from ebmtool.data.sources import ring_log_density, ring_means
from ebmtool.eval import ground_truth as G
from ebmtool.priors import EnergyTiltedPrior, GaussianPrior, RatioProductPrior

MU = [0.3, 0.4]  # |mu| = 0.5
RMSE_TOL = 0.15


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ring():
    sample, log_p = G.ring_target()
    return sample, log_p


# ------------------------------------------------------------------------------------------------ quadrature
@pytest.mark.parametrize("mu", [[0.5, 0.0], [0.6, 0.8], [1.0, -1.0]])
def test_kl_on_grid_matches_closed_form(mu):
    _, log_p = G.gaussian_target(mu)
    kl = G.kl_on_grid(log_p, GaussianPrior(2).log_prob)  # unnormalised q: -|z|^2/2
    assert kl == pytest.approx(0.5 * sum(m * m for m in mu), abs=1e-4)


def test_kl_on_grid_ring_against_base_and_itself(ring):
    _, log_p = ring
    assert G.kl_on_grid(log_p, log_p) == pytest.approx(0.0, abs=1e-9)
    kl0 = G.kl_on_grid(log_p, GaussianPrior(2).log_prob)
    assert kl0 == pytest.approx(G.kl_on_grid(log_p, GaussianPrior(2).log_prob, lim=7.0, n=500), abs=1e-5)
    assert 1.70 < kl0 < 1.82


def test_kl_on_grid_warns_when_q_leaves_the_box(ring):
    _, log_p = ring
    with pytest.warns(RuntimeWarning, match="larger lim"):
        G.kl_on_grid(log_p, lambda z: -0.5 * z.pow(2).sum(1) / 9.0)  # N(0, 9 I): mass beyond |z| = 5.4


def test_ring_target_matches_the_synthetic_dataset(ring):
    sample, log_p = ring
    z = torch.randn(5, 2)
    assert torch.allclose(log_p(z), ring_log_density(z))
    torch.manual_seed(0)
    zs = sample(4000)
    assert G.mode_distance(zs, ring_means()) == pytest.approx(0.25 * math.sqrt(math.pi / 2), rel=0.05)
    rows = G.from_tensor(zs[:10])(50)  # a finite data set of latents as the target sampler
    assert rows.shape == (50, 2) and all(any(torch.equal(r, z) for z in zs[:10]) for r in rows)


def test_fits_are_seeded_and_leave_the_global_rng_alone():
    sample, _ = G.gaussian_target(MU)
    torch.manual_seed(7)
    state = torch.get_rng_state()
    a = G.fit_ratio_prior(sample, stages=2, iters_per_stage=3, batch=16, lr=1e-3, seed=3, sir_pool=512)
    b = G.fit_ratio_prior(sample, stages=2, iters_per_stage=3, batch=16, lr=1e-3, seed=3, sir_pool=512)
    assert torch.equal(torch.get_rng_state(), state)
    assert isinstance(a, RatioProductPrior) and len(a.stages) == 2
    assert all(not p.requires_grad for p in a.parameters())  # every stage frozen
    z = torch.randn(10, 2)
    assert torch.equal(a.tilt(z), b.tilt(z))
    state = torch.get_rng_state()
    e = G.fit_energy_prior(sample, iters=2, batch=16, lr=1e-3, seed=3, steps=3, step_size=0.4)
    assert isinstance(e, EnergyTiltedPrior)
    assert torch.equal(torch.get_rng_state(), state)


# ------------------------------------------------------------------------------------------------ small gap
def test_single_stage_nce_recovers_a_small_gap_log_ratio():
    sample, _ = G.gaussian_target(MU)
    true_log_r = G.gaussian_log_ratio(MU)
    with torch.random.fork_rng():
        torch.manual_seed(123)
        z = torch.cat([sample(2000), torch.randn(2000, 2)])  # high-mass region of both densities
    prior = G.fit_ratio_prior(sample, stages=1, iters_per_stage=300, batch=512, lr=5e-4, seed=0)
    rmse = G.log_ratio_error(prior.tilt, true_log_r, z)
    assert rmse < RMSE_TOL, f"learned log r deviates from mu.z - |mu|^2/2 by RMSE {rmse:.3f}"
    # the constant is learned too (NCE between normalised densities): centring gains little
    assert G.log_ratio_error(prior.tilt, true_log_r, z, center=True) <= rmse + 1e-12
    # control: an untrained ratio (and the zero ratio, i.e. p0 itself) fail the same criterion
    untrained = RatioProductPrior(2, slope=0.1)
    torch.manual_seed(0)
    untrained.add_stage(untrained.new_ratio())
    assert G.log_ratio_error(untrained.tilt, true_log_r, z) > 3 * RMSE_TOL
    assert G.log_ratio_error(lambda z: torch.zeros(len(z)), true_log_r, z) > 3 * RMSE_TOL


# ------------------------------------------------------------------------------------------------ large gap
def test_four_stage_prior_beats_one_stage_on_the_ring(ring):
    sample, log_p = ring
    total = 400
    kl0 = G.kl_on_grid(log_p, GaussianPrior(2).log_prob)
    one = G.fit_ratio_prior(sample, stages=1, iters_per_stage=total, batch=256, lr=1e-3, seed=0, sir_pool=32768)
    four = G.fit_ratio_prior(sample, stages=4, iters_per_stage=total // 4, batch=256, lr=1e-3, seed=0,
                             sir_pool=32768)
    kl1, kl4 = G.kl_on_grid(log_p, one.log_prob), G.kl_on_grid(log_p, four.log_prob)
    assert kl4 < 0.8 * kl1, f"4 stages KL {kl4:.3f} not clearly below 1 stage {kl1:.3f}"
    assert kl1 < 0.6 * kl0 and kl4 < 0.6 * kl0, (kl0, kl1, kl4)
    # each added stage brings the prior nearer the target
    kls = [G.kl_on_grid(log_p, four.log_prob_upto(k)) for k in range(1, 5)]
    assert all(b < a for a, b in zip(kls, kls[1:])), kls
    # control: the same architecture untrained is no better than N(0, I)
    torch.manual_seed(0)
    untrained = RatioProductPrior(2, slope=0.1)
    for _ in range(4):
        untrained.add_stage(untrained.new_ratio())
    assert G.kl_on_grid(log_p, untrained.log_prob) > 0.6 * kl0


# ------------------------------------------------------------------------------------------------ LEBM
def test_lebm_prior_moves_samples_toward_the_ring_modes(ring):
    sample, log_p = ring
    means = ring_means()
    steps, s = 40, 0.4
    with torch.random.fork_rng():
        torch.manual_seed(1)
        z0 = torch.randn(2000, 2)
    base_lp, base_d = float(log_p(z0).mean()), G.mode_distance(z0, means)

    def gains(prior):
        z = G.prior_samples(prior, 2000, seed=1, steps=steps, step_size=s)
        return float(log_p(z).mean()) - base_lp, base_d - G.mode_distance(z, means)

    prior = G.fit_energy_prior(sample, iters=150, batch=128, lr=3e-3, seed=0, steps=steps, step_size=s, hidden=64)
    d_lp, d_dist = gains(prior)
    assert d_lp > 2.0, f"mean target log-density rose by only {d_lp:.2f} nats over N(0, I)"
    assert d_dist > 0.15, f"mean distance to the nearest mode fell by only {d_dist:.3f}"
    # control: an untrained energy prior, sampled the same way, does not pass
    torch.manual_seed(0)
    u_lp, u_dist = gains(EnergyTiltedPrior(2, hidden=64))
    assert u_lp < 2.0 and u_dist < 0.15, (u_lp, u_dist)
