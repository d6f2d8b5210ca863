"""joint-mle / joint-vi (Cui, Wu & Han 2023): the joint EBM prior's density against the closed form of a linear-Gaussian
hierarchy, hierarchical resampling against a tilted Gaussian conditional, SIR on layered latents, the direction each
module's gradient moves its own term (eq. 9-11, 16-19), checkpoint resume, and end-to-end runs (the CLI smoke fit
as a real subprocess, beside two quick in-process fits on the synthetic data that must learn)."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from ebmtool import artifacts, stages
from ebmtool.checkpoint import Checkpointer
from ebmtool.config import resolve
from ebmtool.data import DataConfig
from ebmtool.errors import UserError
from ebmtool.methods import METHODS
from ebmtool.config import Langevin
from ebmtool.methods.joint import joint_loss
from ebmtool.models import LatentModel, hierarchical_sample, load_model
from ebmtool.priors import JointPrior
from ebmtool.nets.encoders import BottomUpGaussianEncoder
from ebmtool.nets.generators import Generator
from ebmtool.priors import GaussianPrior
from ebmtool.sampling import langevin

from conftest import ebmtool_command, run_cli

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "COLUMNS": "200"}  # small shared CPUs: more threads only contend
# synthetic runs: a generator that learns within seconds (the paper's lr 1e-4 needs many epochs; the
# conditionals keep 1e-4) and a posterior chain that moves far enough in 15 steps
FAST = {"epochs": 4, "nz_top": 4, "opt_g": {"lr": 3e-3}, "seed": 0, "device": "cpu"}
FAST_MLE = {**FAST, "batch_size": 50, "posterior": {"steps": 15, "step_size": 0.25}}
FAST_VI = {**FAST, "opt_q": {"lr": 3e-3}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Data (300 digits to train, 100 to evaluate, 500 synthetic) and three joint models: the CLI smoke fit on
    digits (a real subprocess, run while the two synthetic models train in this process through stages.train)."""
    d = tmp_path_factory.mktemp("joint")
    res = {k: d / f"{k}.safetensors" for k in ("digits", "digits_eval", "synth", "mle_digits", "mle_synth", "vi_synth")}
    stages.data_prepare(DataConfig(dataset="digits", limit=300), str(res["digits"]))
    argv = ebmtool_command() + ["fit-prior", "--method", "joint-mle", "--layers", "2", "--preset", "smoke", "--data",
                                res["digits"], "-o", res["mle_digits"], "--seed", "0", "-q", "--json"]
    smoke = subprocess.Popen(list(map(str, argv)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    stages.data_prepare(DataConfig(dataset="digits", limit=100), str(res["digits_eval"]))
    stages.data_prepare(DataConfig(dataset="synthetic", limit=500), str(res["synth"]))
    for method, flags, out in (("joint-mle", FAST_MLE, "mle_synth"), ("joint-vi", FAST_VI, "vi_synth")):
        cfg = resolve(METHODS[method].config, method=method, preset="smoke", toml=None, flags=flags)
        stages.train(method, cfg, str(res["synth"]), str(res[out]), quiet=True)
    _, err = smoke.communicate(timeout=300)
    assert smoke.returncode == 0, err
    return res


def cli(*args) -> dict:
    """Run the CLI in this process (no start-up cost) with --json; it must succeed; return its JSON object."""
    r = run_cli([*map(str, args), "--json"]).ok()
    return json.loads(r.out)


# ------------------------------------------------------------------------------------------------ densities
def _linear_gaussian_prior(dims, scales) -> JointPrior:
    """Joint prior with zero energies and linear-Gaussian conditionals z_i = A_i z_{i+1} + b_i + s_i eps
    (identity activations via slope 1; the log-sigma half of the output layer set to a constant)."""
    torch.manual_seed(0)
    p = JointPrior(dims, dict(hidden=5, layers=2, slope=1.0), dict(hidden=4, layers=1, slope=0.2),
                   dict(hidden=6, layers=1, slope=1.0, floor=0.01))
    with torch.no_grad():
        for f in p.energies:
            f.net[-1].weight.zero_()
            f.net[-1].bias.zero_()
        for c, s in zip(p.conditionals, scales):
            out = c.net[-1]
            out.weight[c.d_out:].zero_()
            out.bias[c.d_out:] = math.log(s - 0.01)
    return p


def _affine(c) -> tuple[torch.Tensor, torch.Tensor]:
    """mu(h) = A h + b of a one-hidden-layer identity-activation GaussianMLP."""
    l1, l2 = c.net[0], c.net[-1]
    w2, b2 = l2.weight[: c.d_out], l2.bias[: c.d_out]
    return w2 @ l1.weight, w2 @ l1.bias + b2


def test_log_prob_with_zero_energies_is_the_gaussian_hierarchy_closed_form():
    """z_L = e_L, z_i = A_i z_{i+1} + b_i + s_i e_i is jointly Gaussian: z = M e + c, cov = M M^T."""
    dims, scales = (3, 2, 2), (0.5, 0.8)
    p = _linear_gaussian_prior(dims, scales)
    L, off = len(dims), [sum(dims[:i]) for i in range(len(dims) + 1)]
    with torch.no_grad():
        M, c = torch.zeros(off[-1], off[-1], dtype=torch.float64), torch.zeros(off[-1], dtype=torch.float64)
        M[off[L - 1]:, off[L - 1]:] = torch.eye(dims[-1])
        for i in reversed(range(L - 1)):  # rows of z_i = A_i (rows of z_{i+1}) + s_i e_i
            A, b = (t.double() for t in _affine(p.conditionals[i]))
            M[off[i]:off[i + 1]] = A @ M[off[i + 1]:off[i + 2]]
            M[off[i]:off[i + 1], off[i]:off[i + 1]] += scales[i] * torch.eye(dims[i], dtype=torch.float64)
            c[off[i]:off[i + 1]] = A @ c[off[i + 1]:off[i + 2]] + b
        exact = torch.distributions.MultivariateNormal(c, covariance_matrix=M @ M.T)
        z = tuple(t.double() * 1.5 for t in p.base_sample(64))
        p = p.double()
        got = p.log_prob(z)
        want = exact.log_prob(torch.cat(z, 1))
    assert torch.allclose(got, want, atol=1e-8), (got - want).abs().max()
    assert torch.allclose(p.tilt(z), torch.zeros(64, dtype=torch.float64))


def test_resample_layers_keeps_layer_and_draws_the_rest_from_the_tilted_conditional():
    """Top layer held, linear energy f_1(z_1) = a.z_1 on the bottom: z_1 | z_2 is the tilted Gaussian
    exp(a.z_1) N(A z_2 + b, s^2 I) = N(A z_2 + b + s^2 a, s^2 I); the chains start untilted, so Langevin must move them."""
    p = _linear_gaussian_prior((2, 3), (0.5,))
    with torch.no_grad():
        p.energies[0].net[-1].weight.fill_(1.0)  # f_1 affine (slope-1 activations), gradient a below
    zz = torch.zeros(1, 2, requires_grad=True)
    a = torch.autograd.grad(p.energies[0](zz).sum(), zz)[0][0]
    shift = 0.25 * a
    assert shift.abs().max() > 0.2  # the tilt is large enough for the check to see it
    torch.manual_seed(1)
    z2 = torch.randn(1, 3).expand(3000, 3).contiguous()
    z = p.resample_layers((torch.zeros(3000, 2), z2), keep=2, steps=300, step_size=0.1).checked()
    assert torch.equal(z[1], z2)
    A, b = _affine(p.conditionals[0])
    mean = (z2[0] @ A.T + b + shift).detach()
    assert torch.allclose(z[0].mean(0), mean, atol=0.05), (z[0].mean(0), mean)
    assert torch.allclose(z[0].std(0), torch.full((2,), 0.5), atol=0.05), z[0].std(0)
    # bottom held: the top layer moves, the bottom does not
    z = p.resample_layers((torch.randn(500, 2), torch.randn(500, 3)), keep=1, steps=20, step_size=0.1).checked()
    assert z[1].std(0).min() > 0.3


def test_sir_on_layered_latents_follows_the_tilt():
    """SIR weights exp(sum_i f_i): an energy rewarding z_2[:, 0] > 0 must select mostly such proposals."""
    p = _linear_gaussian_prior((2, 3), (0.5,))
    with torch.no_grad():
        top = p.energies[1].net
        top[0].weight.zero_()
        top[0].weight[0, 0] = 1.0  # hidden unit 0 = z_2[0]; LeakyReLU keeps its sign
        top[0].bias.zero_()
        top[-1].weight.zero_()
        top[-1].weight[0, 0] = 5.0
    torch.manual_seed(0)
    z = p.sample(400, steps=1, step_size=0.1, sampler="sir", sir_proposals=20).checked()
    assert [t.shape for t in z] == [torch.Size([400, 2]), torch.Size([400, 3])]
    assert (z[1][:, 0] > 0).float().mean() > 0.95


@pytest.mark.parametrize("vi", [False, True], ids=["mle", "vi"])
def test_joint_loss_moves_each_module_the_way_its_equation_says(vi):
    """A small gradient-descent step of joint_loss on one module alone must raise that module's own term by about
    lr * |grad|^2: generator log p(x|z+) (eq. 9/16), energies f(z+) - f(z-) (eq. 10/17), conditionals
    log p_h(z+) - log p_h(z-) (eq. 11/18), inference model the ELBO (eq. 19)."""
    torch.manual_seed(0)
    prior = JointPrior((3, 2), dict(hidden=8, layers=2, slope=0.2), dict(hidden=8, layers=1, slope=0.2),
                       dict(hidden=8, layers=2, slope=0.2))
    enc = BottomUpGaussianEncoder((1, 8, 8), (3, 2), nef=4, hidden=8, layers=1) if vi else None
    model = LatentModel(Generator("digits8", 3, 4, 1), prior, 0.3, (1, 8, 8), inference=Langevin(steps=5, step_size=0.1),
                        sampling=Langevin(steps=5, step_size=0.4), encoder=enc).double()
    x = torch.rand(16, 1, 8, 8, dtype=torch.float64) * 2 - 1
    z_neg = tuple(t.double() for t in prior.base_sample(16))
    z_fixed = tuple(t + 0.5 for t in z_neg)  # posterior stand-in for joint-mle: shifted latents

    def positives():
        if not vi:
            return z_fixed, None
        torch.manual_seed(1)  # the same reparametrisation noise at every evaluation
        return enc.rsample(x)

    def term(name):
        with torch.no_grad():
            z_pos, log_q = positives()
            ll = model.log_lik(x, z_pos)
            return {"generator": ll, "energies": prior.tilt(z_pos) - prior.tilt(z_neg),
                    "conditionals": prior.base_log_prob(z_pos) - prior.base_log_prob(z_neg),
                    "encoder": ll + prior.log_prob(z_pos) - (log_q if vi else 0)}[name].mean()

    for name, module in [("generator", model.generator), ("energies", prior.energies),
                         ("conditionals", prior.conditionals)] + ([("encoder", enc)] if vi else []):
        before = term(name)
        z_pos, log_q = positives()
        loss, stats = joint_loss(model, x, z_pos, z_neg, log_q)
        if vi:  # the reported ELBO is the objective whose negative the loss descends
            assert torch.allclose(stats["elbo"], term("encoder")), (stats["elbo"], term("encoder"))
        model.zero_grad()
        loss.backward()
        g2 = sum(p.grad.pow(2).sum() for p in module.parameters())
        lr = 1e-5 / g2.sqrt()  # a step of length 1e-5 in parameter space: first order dominates
        with torch.no_grad():
            for p in module.parameters():
                p -= lr * p.grad
        gain = term(name) - before
        assert g2 > 0 and gain > 0.5 * lr * g2, (name, float(gain), float(lr * g2))  # first order: lr * g2


def test_encoder_log_q_is_the_bottom_up_gaussian_density():
    """log q(z|x) from rsample = log N(z_1; mu(x), sigma(x)^2) + log N(z_2; mu(z_1), sigma(z_1)^2)."""
    torch.manual_seed(0)
    enc = BottomUpGaussianEncoder((1, 8, 8), (3, 2), nef=4, hidden=8, layers=1)
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    (z1, z2), log_q = enc.rsample(x)
    with torch.no_grad():
        mu1, ls1 = enc.head(enc.trunk(x)).chunk(2, dim=1)
        mu2, s2 = enc.up[0](z1)
        want = (torch.distributions.Normal(mu1, ls1.exp() + 0.01).log_prob(z1).sum(1)
                + torch.distributions.Normal(mu2, s2).log_prob(z2).sum(1))
    assert torch.allclose(log_q.detach(), want, atol=1e-5)
    assert [t.shape for t in enc.sample(x)] == [torch.Size([5, 3]), torch.Size([5, 2])]
    rebuilt = BottomUpGaussianEncoder.from_spec(enc.spec())
    assert rebuilt.spec() == enc.spec()
    assert sum(p.numel() for p in rebuilt.parameters()) == sum(p.numel() for p in enc.parameters())


# ------------------------------------------------------------------------------------------------ CLI
@pytest.mark.parametrize("method", ["joint-mle", "joint-vi"])
def test_layers_1_is_one_line_user_error(method, tmp_path):
    data = stages.data_prepare(DataConfig(dataset="synthetic", limit=10), str(tmp_path / "d.safetensors"))["output"]
    r = run_cli(["fit-prior", "--method", method, "--layers", "1", "--preset", "smoke", "--data", data,
                 "-o", tmp_path / "m.safetensors"])
    assert r.code == 2 and len(r.err_lines) == 1, r.err
    assert "joint methods need --layers >= 2" in r.err_lines[0]
    assert not (tmp_path / "m.safetensors").exists()


def test_smoke_fit_on_digits_loss_decreases(runs):
    art = artifacts.load(runs["mle_digits"], "model")
    loss_g = art.tensors["history.loss_g"]
    assert len(loss_g) == 2 and loss_g[-1] < loss_g[0] - 2, loss_g  # smoke: 2 epochs
    assert art.meta["model"]["prior"]["type"] == "joint" and len(art.meta["latent_dims"]) == 2


def test_joint_mle_learns_on_synthetic(runs):
    """Reconstructions beat decoding random latents; prior samples land nearer the training images than samples
    of the untrained model (same architecture, fresh weights) and than the best constant image (the data mean)."""
    model, _ = load_model(runs["mle_synth"], device="cpu")
    x = stages.open_training_data(str(runs["synth"]), torch.device("cpu")).x
    torch.manual_seed(0)
    xhat, _ = model.reconstruct(x[:200])
    with torch.no_grad():
        x_rand = model.generator(model.prior.base_sample(200)[0])
    mse, mse_rand = (xhat - x[:200]).pow(2).mean(), (x_rand - x[:200]).pow(2).mean()
    assert mse < 0.25 * mse_rand, (mse, mse_rand)

    def nearest(imgs):  # mean distance of each image to its nearest training image
        return torch.cdist(imgs.flatten(1), x.flatten(1)).min(1).values.mean()

    torch.manual_seed(0)
    untrained = LatentModel.from_spec(model.spec())
    with torch.no_grad():
        d_untrained = nearest(untrained.generator(untrained.prior.base_sample(300)[0]))
    d_mean = nearest(x.mean(0, keepdim=True))
    d_trained = nearest(model.sample(300).images)
    assert d_trained < 0.7 * d_untrained and d_trained < 0.7 * d_mean, (d_trained, d_untrained, d_mean)


def test_joint_vi_elbo_rises_and_encoder_reconstructs(runs):
    art = artifacts.load(runs["vi_synth"], "model")
    elbo = art.tensors["history.elbo"]
    assert elbo[-1] > elbo[0], elbo
    assert art.meta["model"]["encoder"]["type"] == "bottom_up_gaussian"
    model, _ = load_model(art.path, device="cpu")
    x = stages.open_training_data(str(runs["synth"]), torch.device("cpu")).x[:200]
    torch.manual_seed(0)
    xhat, z = model.reconstruct(x)
    assert isinstance(z, tuple) and [t.shape[1] for t in z] == [8, 4]
    with torch.no_grad():
        x_rand = model.generator(model.prior.base_sample(200)[0])
    assert (xhat - x).pow(2).mean() < 0.25 * (x_rand - x).pow(2).mean()


def test_explicit_steps_refine_the_encoders_latents(runs):
    """With an encoder, --steps K runs K posterior Langevin steps from q's sample instead of being ignored:
    noise-free steps climb log p(x, z); --steps 0 is the encoder alone."""
    model, _ = load_model(runs["vi_synth"], device="cpu")
    x = stages.open_training_data(str(runs["synth"]), torch.device("cpu")).x[:100]
    torch.manual_seed(0)
    z_q = model.infer(x).checked()
    torch.manual_seed(0)
    _, z0 = model.reconstruct(x, steps=0)
    assert all(torch.equal(a, b) for a, b in zip(z_q, z0))
    model.inference = Langevin(steps=30, step_size=0.02, noise=False)
    torch.manual_seed(0)
    _, z_ref = model.reconstruct(x, steps=30)
    with torch.no_grad():
        assert model.log_joint(x, z_ref).mean() > model.log_joint(x, z_q).mean()


@pytest.mark.parametrize("name", ["mle_digits", "vi_synth"])
def test_evaluation_verbs_need_no_method_flags(runs, name, tmp_path):
    model = str(runs[name])
    data = str(runs["digits_eval"] if name == "mle_digits" else runs["synth"])
    s = cli("sample", "--model", model, "-n", "16", "-o", str(tmp_path / "s.safetensors"),
            "--grid", str(tmp_path / "s.png"))
    assert s["n"] == 16 and (tmp_path / "s.png").stat().st_size > 0
    samples = artifacts.load(tmp_path / "s.safetensors", "samples")
    assert {"latents.1", "latents.2"} <= set(samples.tensors)
    r = cli("reconstruct", "--model", model, "--data", data, "--limit", "100")
    assert r["n"] == 100 and math.isfinite(r["mse"])
    a = cli("anomaly", "--model", model, "--data", data, "--anomaly-class", "1")
    assert 0.0 <= a["auroc"] <= 1.0 and a["n_anomalous"] > 0
    i = cli("inspect", model)
    assert i["kind"] == "model" and any(k.startswith("prior.conditionals.") for k in i["tensors"])


def test_hierarchical_sample_shares_the_kept_layer_within_a_group(runs):
    model, _ = load_model(runs["mle_synth"], device="cpu")
    torch.manual_seed(0)
    out = hierarchical_sample(model, 12, keep=2, group=4, steps=5)
    z1, z2 = out.latents
    assert out.images.shape == (12, 1, 8, 8)
    assert torch.equal(z2[0], z2[3]) and not torch.equal(z2[0], z2[4])  # groups of 4 share z_2
    assert (z1[:4] - z1[:4].mean(0)).abs().max() > 1e-3  # z_1 varies within a group
    with pytest.raises(UserError, match="the model has 2 latent layers"):
        hierarchical_sample(model, 4, keep=3)
    single = LatentModel(model.generator, GaussianPrior(8), 0.3, (1, 8, 8), inference=Langevin(steps=5, step_size=0.1),
                         sampling=Langevin(steps=5, step_size=0.4), method="pretrain")
    with pytest.raises(UserError, match="needs a multi-layer"):
        hierarchical_sample(single, 4, keep=1)


@pytest.mark.parametrize("method", ["joint-mle", "joint-vi"])
def test_resumed_run_is_identical(method, tmp_path, monkeypatch):
    """Every module, optimiser and scheduler is tracked: resuming from the checkpoint written after iteration 3
    (of 4) writes the same tensors as the uninterrupted run."""
    data = tmp_path / "synth.safetensors"
    stages.data_prepare(DataConfig(dataset="synthetic", limit=100), str(data))
    cfg = resolve(METHODS[method].config, method=method, preset="smoke", toml=None,
                  flags={"epochs": 2, "batch_size": 50, "nz_top": 3, "device": "cpu", "prior": {"steps": 3},
                         **({"posterior": {"steps": 3}} if method == "joint-mle" else {})})
    stages.train(method, cfg, str(data), str(tmp_path / "full.safetensors"), quiet=True)

    kept = tmp_path / "after3.ckpt.safetensors"
    save = Checkpointer.save

    def save_and_keep(self, iteration, history, state=None):
        save(self, iteration, history, state)
        if iteration == 3:
            shutil.copyfile(self.path, kept)

    monkeypatch.setattr(Checkpointer, "save", save_and_keep)
    stages.train(method, cfg, str(data), str(tmp_path / "other.safetensors"), quiet=True, checkpoint_every=1)
    monkeypatch.undo()
    stages.train(method, cfg, str(data), str(tmp_path / "resumed.safetensors"), quiet=True, resume=str(kept))
    full = artifacts.load(tmp_path / "full.safetensors", "model").tensors
    resumed = artifacts.load(tmp_path / "resumed.safetensors", "model").tensors
    assert full.keys() == resumed.keys()
    assert [k for k in full if not torch.equal(full[k], resumed[k])] == []


def test_conditional_sigma_is_capped_at_e5_and_unchanged_below():
    """A conditional whose log sigma runs to 1e5 gave MNIST prior chains non-finite latents
    (docs/results/mnist_anomaly_v3.md, joint-mle): sigma is capped at exp(LOG_SIGMA_MAX) + floor, as the authors'
    two-stage Gaussian bounds it; below the cap the head is exactly exp(log sigma) + floor."""
    from ebmtool.nets.encoders import LOG_SIGMA_MAX, GaussianMLP

    torch.manual_seed(0)
    g = GaussianMLP(3, 2, hidden=4, layers=1)
    h = torch.randn(5, 3)
    _, raw = g.net(h).chunk(2, dim=1)
    assert torch.equal(g(h)[1], raw.exp() + g.floor)  # small log sigma: untouched, bit for bit
    with torch.no_grad():
        g.net[-1].bias[2:] = 1e5
    sigma = g(h)[1]
    assert torch.isfinite(sigma).all()
    assert torch.allclose(sigma, torch.full_like(sigma, math.exp(LOG_SIGMA_MAX) + g.floor))


@pytest.mark.parametrize("start", ["noise", "ancestral"])
def test_chains_start_where_chain_start_says_for_training_sampling_and_inference(start):
    """Ground truth: a conditional p(z_1|z_2) with mean 5 everywhere. From ``noise`` (the authors' joint code, the
    default) every chain starts at N(0, I) on every layer; from ``ancestral`` z_1 starts at the hierarchy's mean 5.
    The prior chain (training negatives, sampling) and posterior inference share the start."""
    torch.manual_seed(0)
    prior = JointPrior((3, 2), dict(hidden=8, layers=2, slope=0.2), dict(hidden=8, layers=1, slope=0.2),
                       dict(hidden=8, layers=2, slope=0.2), start=start)
    head = prior.conditionals[0].net[-1]
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([5.0] * 3 + [math.log(0.5)] * 3))  # mu 5, sigma 0.5 (+ floor)
    model = LatentModel(Generator("digits8", 3, 4, 1), prior, 0.3, (1, 8, 8), inference=Langevin(steps=1, step_size=1e-4),
                        sampling=Langevin(steps=1, step_size=1e-4))
    want = 0.0 if start == "noise" else 5.0
    n = 4000
    z_start = prior.chain_start(n)
    z_prior = prior.chain(n, Langevin(steps=1, step_size=1e-4)).z
    z_sample = model.prior.sample(n, steps=1, step_size=1e-4).z
    z_post = model.infer(torch.zeros(n, 1, 8, 8)).z
    for z in (z_start, z_prior, z_sample, z_post):
        assert abs(float(z[0].mean()) - want) < 0.1
        assert abs(float(z[1].mean())) < 0.1 and abs(float(z[1].std()) - 1) < 0.05
    assert abs(float(z_start[0].std()) - (1.0 if start == "noise" else 0.51)) < 0.05


def test_chain_start_is_saved_and_older_models_keep_ancestral_starts():
    dims, e, eu, c = (3, 2), dict(hidden=8, layers=2, slope=0.2), dict(hidden=8, layers=1, slope=0.2), \
        dict(hidden=8, layers=2, slope=0.2)
    assert JointPrior(dims, e, eu, c).start == "noise"
    spec = JointPrior(dims, e, eu, c).spec()
    assert spec["chain_start"] == "noise" and JointPrior.from_spec(spec).start == "noise"
    del spec["chain_start"]  # a model saved before the option: trained from ancestral starts
    assert JointPrior.from_spec(spec).start == "ancestral"
    with pytest.raises(ValueError, match="start must be one of"):
        JointPrior(dims, e, eu, c, start="zeros")


def test_continuing_a_model_from_ancestral_starts_says_the_start_changes(tmp_path):
    """--init of a joint model saved before chain_start (trained from ancestral starts): the run's chains follow the
    config, as their steps do, and the change is said in one line; --set chain_start=ancestral keeps theirs."""
    from types import SimpleNamespace

    from ebmtool.methods.joint import JointMLEConfig, _prior

    e, c = dict(hidden=8, layers=2, slope=0.2), dict(hidden=8, layers=2, slope=0.2)
    spec = JointPrior((3, 2), e, e, c).spec()
    del spec["chain_start"]
    for asked, want, said in (("noise", "noise", 1), ("ancestral", "ancestral", 0)):
        old = SimpleNamespace(prior=JointPrior.from_spec(spec))
        lines = []
        cfg = JointMLEConfig(layers=2, nz_top=2, chain_start=asked)
        prior = _prior(cfg, 3, old, SimpleNamespace(path="old.safetensors"), "joint-mle", lines.append)
        assert prior is old.prior and prior.start == want and prior.spec()["chain_start"] == want
        assert len(lines) == said and all("chain_start=ancestral" in ln for ln in lines)


@pytest.mark.parametrize("method", ["joint-mle", "joint-vi"])
@pytest.mark.parametrize("negatives_from", ["start", "positives"])
def test_training_negatives_start_where_negatives_from_says(method, negatives_from, tmp_path, monkeypatch):
    """negatives_from=start (the paper): every training prior chain starts from n chain_start draws;
    negatives_from=positives (contrastive divergence): from this batch's z+ (the posterior chain's result, or the
    q(z|x) sample the loss uses), detached, on every layer."""
    data = tmp_path / "synth.safetensors"
    stages.data_prepare(DataConfig(dataset="synthetic", limit=100), str(data))
    starts, positives = [], []
    chain, rsample, infer = JointPrior.chain, BottomUpGaussianEncoder.rsample, LatentModel.infer

    def chain_spy(self, z0, c, what="prior Langevin", record_every=0, device="cpu"):
        starts.append(z0)
        return chain(self, z0, c, what, record_every, device)

    def rsample_spy(self, x):
        zs, log_q = rsample(self, x)
        positives.append(zs)
        return zs, log_q

    def infer_spy(self, x, *a, **k):
        res = infer(self, x, *a, **k)
        positives.append(res.z)
        return res

    monkeypatch.setattr(JointPrior, "chain", chain_spy)
    monkeypatch.setattr(BottomUpGaussianEncoder, "rsample", rsample_spy)
    monkeypatch.setattr(LatentModel, "infer", infer_spy)
    cfg = resolve(METHODS[method].config, method=method, preset="smoke", toml=None,
                  flags={"epochs": 1, "batch_size": 50, "nz_top": 3, "device": "cpu", "prior": {"steps": 2},
                         "negatives_from": negatives_from, **({"posterior": {"steps": 2}} if method == "joint-mle" else {})})
    stages.train(method, cfg, str(data), str(tmp_path / "m.safetensors"), quiet=True)
    assert len(starts) == len(positives) == 2  # two batches
    for z0, z_pos in zip(starts, positives):
        if negatives_from == "start":
            assert z0 == 50
        else:
            assert len(z0) == len(z_pos) == 2
            assert all(torch.equal(a, b) and not a.requires_grad for a, b in zip(z0, z_pos))
        if method == "joint-vi":  # the loss still gets q's reparametrised samples: the chain's start is a copy
            assert all(b.requires_grad for b in z_pos)


# ------------------------------------------------------------------------------------------------ ebm=false
def test_without_energies_the_dropped_negative_half_has_zero_expected_gradient():
    """ebm=false drops the loss's negative half, E_{z-~p}[log p_h(z-)]: for the normalised hierarchy its gradient
    E_{p_h}[grad log p_h] is 0 (the score's mean). Checked by Monte Carlo on exact ancestral draws, against the
    gradient of the positive half, which is not 0."""
    torch.manual_seed(0)
    p = JointPrior((3, 2), dict(hidden=8, layers=2, slope=0.2), dict(hidden=8, layers=1, slope=0.2),
                   dict(hidden=8, layers=2, slope=0.2), ebm=False).double()
    z = p.base_sample(200_000)
    neg = torch.autograd.grad(p.base_log_prob(z).mean(), list(p.parameters()))
    pos = torch.autograd.grad(p.base_log_prob(tuple(t + 0.5 for t in z)).mean(), list(p.parameters()))
    g_neg, g_pos = torch.cat([g.flatten() for g in neg]), torch.cat([g.flatten() for g in pos])
    assert g_neg.abs().max() < 0.02 and g_pos.abs().max() > 0.2, (g_neg.abs().max(), g_pos.abs().max())


def test_ebm_false_has_no_energies_and_older_specs_keep_them():
    dims, e, c = (3, 2), dict(hidden=8, layers=2, slope=0.2), dict(hidden=8, layers=2, slope=0.2)
    p = JointPrior(dims, e, e, c, ebm=False)
    assert len(p.energies) == 0 and not any("energies" in k for k in p.state_dict())
    z = p.base_sample(5)
    assert torch.equal(p.tilt(z), torch.zeros(5)) and torch.allclose(p.log_prob(z), p.base_log_prob(z))
    spec = p.spec()
    assert spec["ebm"] is False and "energy" not in spec and JointPrior.from_spec(spec).ebm is False
    spec = JointPrior(dims, e, e, c).spec()
    del spec["ebm"]  # a model saved before the option
    assert JointPrior.from_spec(spec).ebm is True and len(JointPrior.from_spec(spec).energies) == 2


@pytest.mark.parametrize("method", ["joint-mle", "joint-vi"])
def test_ebm_false_trains_without_prior_chains_and_scores_its_hierarchy(method, tmp_path, monkeypatch):
    """--set ebm=false: no training prior chain, the loss is the hierarchy's negative log-likelihood (ELBO for VI),
    the saved model has no energies and its tilt term is 0 in every score; the model samples and scores."""
    data = tmp_path / "synth.safetensors"
    stages.data_prepare(DataConfig(dataset="synthetic", limit=100), str(data))
    calls = []
    chain = JointPrior.chain
    monkeypatch.setattr(JointPrior, "chain", lambda self, *a, **k: calls.append(a) or chain(self, *a, **k))
    out = tmp_path / "m.safetensors"
    extra = ["--set", "posterior.steps=2"] if method == "joint-mle" else []
    cli("fit-prior", "--method", method, "--preset", "smoke", "--data", data, "-o", out, "--epochs", "1",
        "--set", "ebm=false", *extra, "-q")
    training_calls = len(calls)
    model, _ = load_model(str(out))
    assert training_calls == 0 and model.prior.ebm is False and len(model.prior.energies) == 0
    hist = artifacts.load(out, "model").tensors
    assert "history.loss_g" in hist and "history.neg_log_prior" in hist and "history.f_neg" not in hist
    from ebmtool.data import load_images
    from ebmtool.stages.evaluate import score_terms

    terms = score_terms(model, load_images(str(data))[0][:6], steps=2, step_size=0.1, noise=False, device="cpu")
    assert torch.equal(terms["tilt"], torch.zeros(6, dtype=terms["tilt"].dtype))
    cli("sample", "--model", out, "-n", "4", "-o", tmp_path / "s.safetensors", "-q")  # ancestral draws, exact
    r = run_cli(["sample", "--model", out, "-n", "4", "-o", tmp_path / "t.safetensors", "--steps", "5"])
    assert r.code == 2 and len(r.err_lines) == 1 and "Gaussian hierarchy, drawn exactly" in r.err, r.err
    assert not (tmp_path / "t.safetensors").exists()
    import ebmtool.priors.joint as joint_prior_module

    calls.clear()  # hierarchical sampling: given the top layer the others are drawn exactly, with no chain
    monkeypatch.setattr(joint_prior_module, "langevin", lambda *a, **k: calls.append(a) or langevin(*a, **k))
    cli("sample", "--model", out, "-n", "4", "-o", tmp_path / "h.safetensors", "--layer-resample", "2", "-q")
    assert not calls
    cli("sample", "--model", out, "-n", "4", "-o", tmp_path / "h1.safetensors", "--layer-resample", "1", "-q")
    assert len(calls) == 1  # holding the bottom layer, the top one is drawn from p(z_2 | z_1) by Langevin
    for extra in (["--layer-resample", "2", "--steps", "5"], ["--layer-resample", "1", "--sampler", "sir"]):
        r = run_cli(["sample", "--model", out, "-n", "4", "-o", tmp_path / "t.safetensors", *extra])
        assert r.code == 2 and len(r.err_lines) == 1 and "draws these layers exactly" in r.err, (extra, r.err)
        assert not (tmp_path / "t.safetensors").exists()


def test_without_energies_the_loss_is_the_positive_half_only():
    """joint_loss with no z- is -(log p(x|z+) + log p_h(z+) - log q(z+|x)), the negative ELBO (up to p(x|z)'s
    constant), and its gradient reaches no energy (there are none) but the generator and the conditionals."""
    torch.manual_seed(0)
    e = dict(hidden=8, layers=2, slope=0.2)
    prior = JointPrior((3, 2), e, e, e, ebm=False)
    model = LatentModel(Generator("digits8", 3, 4, 1), prior, 0.3, (1, 8, 8), inference=Langevin(steps=1, step_size=0.1),
                        sampling=Langevin(steps=1, step_size=0.1))
    x, z = torch.rand(5, 1, 8, 8) * 2 - 1, prior.base_sample(5)
    log_q = torch.randn(5)
    loss, stats = joint_loss(model, x, z, None, log_q)
    want = -(model.log_lik(x, z) + prior.base_log_prob(z) - log_q).mean()
    assert torch.allclose(loss, want) and torch.allclose(stats["neg_log_prior"], -prior.base_log_prob(z).mean())
    loss.backward()
    assert all(p.grad is not None for p in prior.conditionals.parameters())


@pytest.mark.parametrize("opt", ["negatives_from=positives", "energy_l2=0.1", "opt_e.lr=0.001", "energy.hidden=50"])
def test_ebm_false_refuses_options_of_the_energy_terms(opt, tmp_path):
    data = stages.data_prepare(DataConfig(dataset="synthetic", limit=10), str(tmp_path / "d.safetensors"))["output"]
    r = run_cli(["fit-prior", "--method", "joint-vi", "--preset", "smoke", "--data", data, "-o", tmp_path / "m.safetensors",
                 "--set", "ebm=false", "--set", opt])
    assert r.code == 2 and len(r.err_lines) == 1, r.err
    assert opt.split("=")[0] in r.err_lines[0] and "ebm=false" in r.err_lines[0]
    assert not (tmp_path / "m.safetensors").exists()


def test_continuing_with_the_other_ebm_value_is_one_line(tmp_path):
    data = stages.data_prepare(DataConfig(dataset="synthetic", limit=50), str(tmp_path / "d.safetensors"))["output"]
    first = tmp_path / "vae.safetensors"
    cli("fit-prior", "--method", "joint-vi", "--preset", "smoke", "--data", data, "-o", first, "--epochs", "1",
        "--set", "ebm=false", "-q")
    r = run_cli(["fit-prior", "--method", "joint-vi", "--preset", "smoke", "--data", data, "--init", first,
                 "-o", tmp_path / "m.safetensors", "--epochs", "1"])
    assert r.code == 2 and len(r.err_lines) == 1 and "trained with ebm=false, not ebm=true" in r.err, r.err
    assert not (tmp_path / "m.safetensors").exists()


def test_continuing_a_model_with_the_other_ebm_value_is_refused():
    from types import SimpleNamespace

    from ebmtool.methods.joint import JointVIConfig, _prior

    e = dict(hidden=8, layers=2, slope=0.2)
    old = SimpleNamespace(prior=JointPrior((3, 2), e, e, e, ebm=False))
    with pytest.raises(UserError, match="trained with ebm=false, not ebm=true"):
        _prior(JointVIConfig(layers=2, nz_top=2), 3, old, SimpleNamespace(path="old.safetensors"), "joint-vi", lambda s: None)
    assert _prior(JointVIConfig(layers=2, nz_top=2, ebm=False), 3, old, SimpleNamespace(path="old.safetensors"), "joint-vi",
                  lambda s: None) is old.prior


@pytest.mark.parametrize("opt, said", [
    ("encoder.nef=8", "encoder has nef 16 and is kept"), ("energy.hidden=7", "energy has hidden 32 and is kept"),
    ("energy_upper.hidden=5", "energy_upper has hidden 32 and is kept"),
    ("conditional.layers=3", "conditional has layers 2 and is kept"), ("nz_top=7", "not nz_top 7")])
def test_continuing_a_joint_model_refuses_another_architecture(runs, tmp_path, opt, said):
    """--init of a joint model keeps its networks: a setting that would change them is refused in one line
    (before, it was ignored and the new artifact's config named networks it did not have)."""
    out = tmp_path / "m.safetensors"
    r = run_cli(["fit-prior", "--method", "joint-vi", "--preset", "smoke", "--data", runs["synth"], "--init",
                 runs["vi_synth"], "-o", out, "--epochs", "1", "--set", opt])
    assert r.code == 2 and len(r.err_lines) == 1 and said in r.err and opt.split("=")[0] in r.err, r.err
    assert not out.exists()


def test_continuing_a_joint_model_keeps_its_networks_and_says_so_in_the_artifact(runs, tmp_path):
    # no --preset: the default (paper) sizes differ from the smoke model's, and the artifact's config must name the
    # networks the model has, not the defaults; the same value set by the user passes
    out = tmp_path / "m.safetensors"
    cli("fit-prior", "--method", "joint-vi", "--data", runs["synth"], "--init", runs["vi_synth"],
        "-o", out, "--epochs", "1", "--set", "nz_top=4", "--set", "encoder.nef=16", "-q")
    art, old = artifacts.load(out), artifacts.load(runs["vi_synth"])
    assert art.meta["model"]["encoder"] == old.meta["model"]["encoder"]
    enc = {k: v for k, v in old.meta["model"]["encoder"].items() if k in art.config["encoder"]}
    assert art.config["encoder"] == enc and enc["hidden"] == 32  # paper default: 200
    for part in ("energy", "energy_upper", "conditional"):
        assert art.config[part] == old.meta["model"]["prior"][part]
    assert art.config["energy_upper"]["hidden"] == 32  # paper default: 200
    # a joint-mle model has no inference model: joint-vi from it builds one as the config says
    vi = tmp_path / "vi.safetensors"
    cli("fit-prior", "--method", "joint-vi", "--preset", "smoke", "--data", runs["synth"], "--init", runs["mle_synth"],
        "-o", vi, "--epochs", "1", "--set", "nz_top=4", "--set", "encoder.nef=8", "-q")
    assert artifacts.load(vi).meta["model"]["encoder"]["nef"] == 8
