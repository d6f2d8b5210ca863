"""BiDVL (Kan et al. 2022): networks, the fit through the CLI, the model verbs, the --no-offset variant, refusals.

One smoke fit on scikit-learn's 8x8 digits (a subprocess, as a user runs it) serves most tests; everything else
runs in-process with one torch thread (the test machine's 2 cores are shared, and OpenMP threads that wait on
each other there make tiny convolutions many times slower).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ebmtool import artifacts, stages
from ebmtool.cli import main
from ebmtool.data import DataConfig, load_images
from ebmtool.methods.bidvl import BiDVLConfig, kl_to_standard_normal, model_for
from ebmtool.models import BiDVLModel
from ebmtool.runtime import seed_everything
from ebmtool.models import load_model, model_tensors
from ebmtool.nets.image_ebm import GaussianEncoder, ImageEnergy, ImageGenerator

SMALL = ["--set", "ebm.ndf=16", "--set", "encoder.nef=16", "--set", "generator.ngf=16", "--nz", "8"]
TINY = ["--set", "ebm.ndf=8", "--set", "encoder.nef=8", "--set", "generator.ngf=8", "--nz", "4"]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; (exit status, stdout, stderr)."""
    capsys.readouterr()
    try:
        main([str(a) for a in argv])
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("bidvl")
    p = {"digits": d / "digits.safetensors", "small": d / "small.safetensors", "noise": d / "noise.safetensors",
         "model": d / "model.safetensors"}
    stages.data_prepare(DataConfig(dataset="digits"), str(p["digits"]))
    stages.data_prepare(DataConfig(dataset="digits", limit=256), str(p["small"]))
    g = torch.Generator().manual_seed(1)
    artifacts.save(p["noise"], "dataset", {"images": torch.randint(0, 256, (300, 1, 8, 8), generator=g, dtype=torch.uint8),
                                           "labels": torch.zeros(300, dtype=torch.long)}, meta={"dataset": "uniform-noise"})
    # the smoke fit, through the CLI in a subprocess (2 epochs of 29 batches)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "ebmtool", "fit-prior", "--method", "bidvl", "--data", p["digits"],
                        "-o", p["model"], "--preset", "smoke", *SMALL, "--json", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    p["fit_json"] = json.loads(r.stdout)
    return p


# ------------------------------------------------------------------------------------------------ networks
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("size", [8, 32, 64])
def test_networks_shapes(channels, size):
    E, Q, G = ImageEnergy(channels, size, ndf=4), GaussianEncoder(channels, size, nz=5, nef=4), ImageGenerator(channels, size, nz=5, ngf=4)
    v = torch.rand(3, channels, size, size) * 2 - 1
    mu, logvar = Q(v)
    x = G(mu)
    e = E(x)
    assert mu.shape == logvar.shape == (3, 5)
    assert x.shape == (3, channels, size, size) and x.abs().max() <= 1
    assert e.shape == (3,) and bool((e >= 0).all())  # softplus energy
    assert sum(1 for n, _ in E.named_parameters() if n.endswith("parametrizations.weight.original")) == \
        sum(1 for m in E.modules() if isinstance(m, torch.nn.Conv2d))  # every conv spectrally normalised


def test_networks_refuse_unsupported_sizes():
    with pytest.raises(ValueError, match="not supported"):
        ImageEnergy(1, 12)  # 8, and s0*2^k >= 16 with s0 in 4..7 (28 and 48 are served)


def test_kl_to_standard_normal_matches_torch():
    mu, logvar = torch.randn(6, 4), torch.randn(6, 4)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, (0.5 * logvar).exp()),
                                            torch.distributions.Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(kl_to_standard_normal(mu, logvar), ref)
    assert float(kl_to_standard_normal(torch.zeros(2, 3), torch.zeros(2, 3)).abs().max()) == 0.0


# ------------------------------------------------------------------------------------------------ the fit
def test_smoke_fit_losses_move_the_right_way(work):
    model, art = load_model(work["model"])
    assert isinstance(model, BiDVLModel) and not model.training
    h = {k.split(".", 1)[1]: v for k, v in art.tensors.items() if k.startswith("history.")}
    assert len(h["loss_e"]) == 2
    # the energy separates data from generated images: E(v_data) - E(G(h)) falls and is negative
    assert h["loss_e"][-1] < h["loss_e"][0] and h["loss_e"][-1] < 0
    assert h["e_gen"][-1] > h["e_data"][-1]
    # the VAE part of eq. (13) learns: reconstruction error and latent reconstruction fall
    assert h["mse"][-1] < h["mse"][0]
    assert h["h_rec"][-1] < h["h_rec"][0]
    assert art.meta["basic_ratio"] == 0.05 and art.meta["offset"] is True  # r' chosen by image size (8x8)
    prefixes = {k.split(".")[0] for k in art.tensors}
    assert prefixes == {"ebm", "encoder", "generator", "history"}
    assert art.meta["model"]["generator"]["nz"] == 8 and art.meta["model"]["ebm"]["ndf"] == 16
    assert work["fit_json"]["method"] == "bidvl"


def test_reconstructions_beat_random_decoding(work):
    model, _ = load_model(work["model"])
    x, _, _ = load_images(work["digits"])
    xhat, mu = model.reconstruct(x)
    assert mu.shape == (len(x), 8)
    torch.manual_seed(0)
    random = model.sample(len(x)).images
    mse_rec, mse_rand = float((xhat - x).pow(2).mean()), float((random - x).pow(2).mean())
    assert mse_rec < 0.6 * mse_rand, (mse_rec, mse_rand)


def test_verbs_use_batch_norm_running_statistics(work):
    model, _ = load_model(work["model"])
    x, _, _ = load_images(work["digits"])
    model.train()
    a, _ = model.reconstruct(x[:5])
    b, _ = model.reconstruct(x[:200])
    torch.testing.assert_close(a, b[:5])  # per-image result, independent of the batch
    assert model.training  # the mode is restored


def test_energy_ranks_digits_above_uniform_noise(work, capsys):
    code, out, err = cli(capsys, "anomaly", "--model", work["model"], "--data", work["digits"],
                         "--ood-data", work["noise"], "--json")
    assert code == 0, err
    res = json.loads(out)
    assert res["auroc"] > 0.9, res  # noise = label 1 must score higher: anomaly score = E(v)
    assert res["score"] == "joint" and res["score_description"].startswith("E(v)")


def test_sample_reconstruct_inspect_on_the_artifact(work, capsys, tmp_path):
    m = work["model"]
    code, out, err = cli(capsys, "sample", "--model", m, "-n", 16, "-o", tmp_path / "s.safetensors",
                         "--grid", tmp_path / "s.png", "--json")
    assert code == 0, err
    s = artifacts.load(tmp_path / "s.safetensors", "samples")
    assert s.tensors["images"].shape == (16, 1, 8, 8) and s.tensors["images"].dtype == torch.uint8
    assert s.tensors["latents"].shape == (16, 8)
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --steps K: K image-space Langevin steps on -E after G(h), from the same h (same seed)
    code, _, err = cli(capsys, "sample", "--model", m, "-n", 16, "-o", tmp_path / "r.safetensors", "--steps", 5,
                       "--step-size", 0.05)
    assert code == 0, err
    refined = artifacts.load(tmp_path / "r.safetensors").tensors
    assert torch.equal(refined["latents"], s.tensors["latents"])
    assert not torch.equal(refined["images"], s.tensors["images"])

    code, out, err = cli(capsys, "reconstruct", "--model", m, "--data", work["digits"], "--limit", 100,
                         "-o", tmp_path / "rec.safetensors", "--grid", tmp_path / "rec.png", "--json")
    assert code == 0, err
    assert json.loads(out)["n"] == 100 and (tmp_path / "rec.png").exists()
    assert artifacts.load(tmp_path / "rec.safetensors").tensors["latents"].shape == (100, 8)

    code, out, err = cli(capsys, "inspect", m, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["meta"]["model"]["type"] == "bidvl" and info["config"]["offset"] is True


@pytest.mark.parametrize("extra", [["--sampler", "sir"], ["--trajectory", "2"]])
def test_latent_space_sampling_options_are_refused(work, capsys, tmp_path, extra):
    code, _, err = cli(capsys, "sample", "--model", work["model"], "-n", 4, "--grid", tmp_path / "x.png", *extra)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bidvl" in err


# ------------------------------------------------------------------------------------------------ offset
def _fit_small(capsys, work, out: Path, *flags) -> BiDVLModel:
    code, _, err = cli(capsys, "fit-prior", "--method", "bidvl", "--data", work["small"], "-o", out, "--epochs", 1,
                       "--batch-size", 64, "--basic-ratio", 0, "--set", "opt_qp.weight_decay=0", *TINY, "--quiet", *flags)
    assert code == 0, err
    return load_model(out)[0]


def test_no_offset_also_trains_the_encoder_on_generated_images(work, capsys, tmp_path):
    """With r' = 0 the encoder's only training signals are the opposite w1 terms: none with offset (eq. 13-14:
    latent reconstruction through w2 only), the latent reconstruction and the upper-level KL without (Sec. 4.4)."""
    offset = _fit_small(capsys, work, tmp_path / "offset.safetensors")
    no_offset = _fit_small(capsys, work, tmp_path / "no-offset.safetensors", "--no-offset")
    seed_everything(0)  # the fit's seed: the same initial weights
    cfg = BiDVLConfig.model_validate({"ebm": {"ndf": 8}, "encoder": {"nef": 8}, "generator": {"ngf": 8, "nz": 4}})
    init = model_for(cfg, (1, 8, 8), None, None)
    weights = lambda m: {k: v for k, v in m.encoder.state_dict().items() if "running" not in k and "num_batches" not in k}  # noqa: E731
    for k, v in weights(init).items():
        torch.testing.assert_close(weights(offset)[k], v, msg=f"offset changed encoder {k}")
    assert any(not torch.equal(weights(no_offset)[k], v) for k, v in weights(init).items())
    assert not torch.equal(offset.generator.state_dict()["net.0.weight"], init.generator.state_dict()["net.0.weight"])
    assert artifacts.load(tmp_path / "no-offset.safetensors").meta["offset"] is False


# ------------------------------------------------------------------------------------------------ refusals
def test_latent_models_and_bidvl_models_do_not_mix_through_init(work, capsys, tmp_path):
    from ebmtool.config import Langevin
    from ebmtool.models import latent_model
    from ebmtool.nets.generators import Generator
    from ebmtool.priors import GaussianPrior

    lm = latent_model(Generator("digits8", 4, 8, 1), GaussianPrior(4), 0.3, (1, 8, 8), posterior=Langevin(),
                      sampling=Langevin(), method="pretrain")
    latent = artifacts.save(tmp_path / "latent.safetensors", "model", model_tensors(lm), meta={"model": lm.spec()})
    code, _, err = cli(capsys, "fit-prior", "--method", "bidvl", "--init", latent, "--data", work["small"],
                       "-o", tmp_path / "x.safetensors", *TINY)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "latent-space model" in err
    code, _, err = cli(capsys, "fit-prior", "--method", "adaptive-nce", "--init", work["model"], "--data", work["digits"],
                       "-o", tmp_path / "y.safetensors", "--preset", "smoke")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "bidvl" in err
    assert not (tmp_path / "x.safetensors").exists() and not (tmp_path / "y.safetensors").exists()


def test_continuing_a_bidvl_model_keeps_its_networks_and_refuses_other_sizes(work, capsys, tmp_path):
    """--init of a BiDVL model keeps its three networks: a differing size is refused in one line (it was ignored),
    and the continued artifact's config records the sizes really trained."""
    for flags, said in ((["--set", "encoder.nef=32"], "--set encoder.nef=32: the --init model's encoder has nef 16"),
                        (["--nz", "5"], "--nz 5: the --init model's generator has nz 8")):
        code, _, err = cli(capsys, "fit-prior", "--method", "bidvl", "--init", work["model"], "--data", work["small"],
                           "-o", tmp_path / "x.safetensors", "--preset", "smoke", "--epochs", "1", *flags)
        assert code == 2 and said in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "x.safetensors").exists()
    code, _, err = cli(capsys, "fit-prior", "--method", "bidvl", "--init", work["model"], "--data", work["small"],
                       "-o", tmp_path / "y.safetensors", "--preset", "smoke", "--epochs", "1", "--quiet")
    assert code == 0, err
    cfg = artifacts.load(tmp_path / "y.safetensors").config
    assert (cfg["generator"]["nz"], cfg["generator"]["ngf"], cfg["encoder"]["nef"], cfg["ebm"]["ndf"]) == (8, 16, 16, 16)


def test_unknown_flags_and_sizes_are_one_line_errors(work, capsys, tmp_path):
    code, _, err = cli(capsys, "fit-prior", "--method", "bidvl", "--arch", "digits8", "--data", work["small"],
                       "-o", tmp_path / "x.safetensors")
    assert code == 2 and "unknown key 'generator.arch'" in err and len(err.strip().splitlines()) == 1
    odd = artifacts.save(tmp_path / "odd.safetensors", "dataset", {"images": torch.zeros(4, 1, 12, 12, dtype=torch.uint8),
                                                                   "labels": torch.zeros(4, dtype=torch.long)})
    code, _, err = cli(capsys, "fit-prior", "--method", "bidvl", "--data", odd, "-o", tmp_path / "x.safetensors", *TINY)
    assert code == 2 and "built for sizes 8 and every s0*2^k >= 16" in err and len(err.strip().splitlines()) == 1
    assert "use data prepare --size 8 or --size 16" in err
