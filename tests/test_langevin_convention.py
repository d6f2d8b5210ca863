"""The Langevin convention of a chain (docs/design.md §3): "lebm" z + (s²/2)∇ + s·ε (default) or "xiao-han"
z + (s/2)∇ + √s·ε (the adaptive-NCE paper's eq. 3). One sampler runs both; a xiao-han chain of step s is the lebm
chain of step √s, bit for bit. The field is saved with a model, reloaded, set by --set and TOML, and --step-size is
read in the chain's convention."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open

from ebmtool import artifacts
from ebmtool.config import Langevin
from ebmtool.models import load_model
from ebmtool.models.latent import LatentModel
from ebmtool.nets.generators import Generator
from ebmtool.priors import RatioProductPrior

from conftest import _train, run_cli, save_sealed

S_PAPER = 0.09  # xiao-han step; the same chain as lebm at sqrt(0.09)


def _model(seed: int = 0) -> LatentModel:
    torch.manual_seed(seed)
    prior = RatioProductPrior(4, 16, 2, 0.1)
    prior.add_stage(prior.new_ratio())
    g = Generator("digits8", 4, 8, 1)
    return LatentModel(g, prior, 0.3, (1, 8, 8), inference=Langevin(steps=6, step_size=0.1),
                       sampling=Langevin(steps=6, step_size=0.1), method="test")


def test_effective_step_size():
    assert Langevin(step_size=0.4).effective_step_size() == 0.4
    assert Langevin(step_size=0.09, convention="xiao-han").effective_step_size() == math.sqrt(0.09)
    # --step-size overrides keep the chain's convention
    assert Langevin(step_size=0.1, convention="xiao-han").override(step_size=0.25).effective_step_size() == 0.5
    assert Langevin.stored(0, 0.04, convention="xiao-han").effective_step_size() == 0.2
    with pytest.raises(ValueError, match="convention"):
        Langevin.stored(5, 0.1, convention="paper")


def test_conventions_give_identical_chains():
    """Posterior (model.infer) and prior (prior.chain, model.sample) chains: xiao-han at s equals lebm at sqrt(s)
    exactly under the same RNG, differs from lebm at s, and matches the paper's eq. 3 written out by hand."""
    m = _model()
    x = torch.rand(5, 1, 8, 8) * 2 - 1
    paper = Langevin(steps=6, step_size=S_PAPER, convention="xiao-han")
    lebm = Langevin(steps=6, step_size=math.sqrt(S_PAPER))

    def post(c):
        torch.manual_seed(1)
        return m.infer(x, c).z

    def prior(c):
        torch.manual_seed(2)
        return m.prior.chain(5, c).z

    def sample(c):
        m.sampling = c
        torch.manual_seed(3)
        return m.sample(5).latents

    for run in (post, prior, sample):
        a, b = run(paper), run(lebm)
        assert torch.equal(a, b), run.__name__
        assert not torch.allclose(a, run(Langevin(steps=6, step_size=S_PAPER)), atol=1e-3), run.__name__

    # eq. 3 by hand: z_{k+1} = z_k + (s/2) grad log p(z|x) + sqrt(s) w_k
    torch.manual_seed(1)
    z = m.prior.base_sample(5)
    for _ in range(6):
        z = z.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(m.log_joint(x, z).sum(), z)
        z = z.detach() + S_PAPER / 2 * grad + math.sqrt(S_PAPER) * torch.randn_like(z)
    assert torch.allclose(post(paper), z, atol=1e-5)


@pytest.fixture(scope="module")
def paper_model(tmp_path_factory, digits_ds, nce_model):
    """One more adaptive-NCE stage (prior negatives by Langevin) with every chain in the paper's convention, set
    through TOML (posterior), --set (prior, sampling) and the CLI."""
    d = tmp_path_factory.mktemp("conv")
    toml = d / "c.toml"
    toml.write_text(f'[posterior]\nconvention = "xiao-han"\nstep_size = {S_PAPER}\n')
    out = d / "paper.safetensors"
    run_cli(["fit-prior", "--method", "adaptive-nce", "--data", digits_ds, "--init", nce_model, "--preset", "smoke",
             "--config", toml, "--stages", "1", "--prior-sampler", "langevin", "--device", "cpu",
             "--set", "posterior.steps=4", "--set", "prior.steps=4", "--set", "prior.convention=xiao-han",
             "--set", "prior.step_size=0.04", "--set", "sampling.convention=xiao-han",
             "-o", out, "--quiet"]).ok()
    return out


def _tensors(path):
    return {k: v for k, v in artifacts.load(path).tensors.items() if not k.startswith("history")}


def test_training_chains_and_artifact_round_trip(paper_model, digits_ds, nce_model, tmp_path):
    model, art = load_model(paper_model)
    assert model.inference.convention == model.sampling.convention == "xiao-han"
    assert (model.inference.step_size, model.sampling.step_size) == (S_PAPER, 0.1)
    cfg = art.config
    assert cfg["posterior"]["convention"] == cfg["prior"]["convention"] == cfg["sampling"]["convention"] == "xiao-han"
    # the same run in the lebm convention at sqrt of each step size writes bit-identical tensors: training's
    # posterior and prior chains both ran at the converted step
    lebm = _train("adaptive-nce", digits_ds, tmp_path / "lebm.safetensors", init=nce_model, stages=1,
                  prior_sampler="langevin", posterior={"steps": 4, "step_size": math.sqrt(S_PAPER)},
                  prior={"steps": 4, "step_size": math.sqrt(0.04)})
    a, b = _tensors(paper_model), _tensors(lebm)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert load_model(lebm)[0].inference.convention == "lebm"


def _rewrite_spec(src, dst, edit):
    with safe_open(str(src), "pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())
    extra = json.loads(meta["ebmtool.meta"])
    edit(extra["model"])
    meta["ebmtool.meta"] = json.dumps(extra)
    save_sealed(tensors, dst, metadata=meta)  # an artifact an older ebmtool wrote, sealed as this one would
    return dst


def test_old_spec_without_convention_loads_as_lebm(paper_model, tmp_path):
    def drop(spec):
        for k in ("inference", "sampling"):
            del spec[k]["convention"]

    old = _rewrite_spec(paper_model, tmp_path / "old.safetensors", drop)
    m, _ = load_model(old)
    assert m.inference.convention == m.sampling.convention == "lebm"
    assert m.inference.effective_step_size() == S_PAPER


def test_invalid_convention_is_one_line(paper_model, digits_ds, tmp_path):
    r = run_cli(["fit-prior", "--method", "nce", "--data", digits_ds, "--preset", "smoke",
                 "--set", "posterior.convention=paper", "-o", tmp_path / "x.safetensors"])
    assert r.code == 2 and len(r.err_lines) == 1 and "posterior.convention" in r.err and "Traceback" not in r.err
    assert not (tmp_path / "x.safetensors").exists()
    bad_toml = tmp_path / "bad.toml"
    bad_toml.write_text('[sampling]\nconvention = "XIAO-HAN"\n')
    r = run_cli(["fit-prior", "--method", "adaptive-nce", "--data", digits_ds, "--preset", "smoke",
                 "--config", bad_toml, "-o", tmp_path / "x.safetensors"])
    assert r.code == 2 and len(r.err_lines) == 1 and "sampling.convention" in r.err

    def bad(spec):
        spec["inference"]["convention"] = "paper"

    broken = _rewrite_spec(paper_model, tmp_path / "broken.safetensors", bad)
    r = run_cli(["reconstruct", "--model", broken, "--data", digits_ds, "--device", "cpu"])
    assert r.code == 2 and len(r.err_lines) == 1 and "convention" in r.err and "Traceback" not in r.err


@pytest.mark.parametrize("command", ["reconstruct", "anomaly", "sample"])
def test_step_size_override_is_read_in_the_models_convention(command, paper_model, digits_ds, tmp_path, monkeypatch):
    """--step-size 0.25 on a xiao-han model runs the sampler at sqrt(0.25) = 0.5."""
    import ebmtool.models.latent as latent
    import ebmtool.priors.base as prior_base

    seen = []
    for mod in (latent, prior_base):
        real = mod.langevin

        def spy(log_pi, z0, steps, step_size, *a, _real=real, **kw):
            seen.append(step_size)
            return _real(log_pi, z0, steps, step_size, *a, **kw)

        monkeypatch.setattr(mod, "langevin", spy)
    args = {"reconstruct": ["--data", digits_ds, "--limit", "8"],
            "anomaly": ["--data", digits_ds, "--anomaly-class", "0"],
            "sample": ["-n", "4", "--sampler", "langevin"]}[command]
    run_cli([command, "--model", paper_model, *args, "--steps", "2", "--step-size", "0.25", "--device", "cpu",
             "-o", tmp_path / "out.safetensors"]).ok()
    assert seen and set(seen) == {0.5}
    seen.clear()  # without --step-size: the model's own chain, converted (posterior 0.09 -> 0.3, sampling 0.1)
    run_cli([command, "--model", paper_model, *args, "--steps", "2", "--device", "cpu",
             "-o", tmp_path / "out2.safetensors"]).ok()
    assert set(seen) == {math.sqrt(0.1) if command == "sample" else math.sqrt(S_PAPER)}
