"""End-to-end CLI: stages chained through files, as a user runs them.

The backbone chain (prepare -> pretrain-generator -> sample -> reconstruct -> inspect) runs the installed
``ebmtool`` entry point in real subprocesses; the many prior-fitting variants run the same CLI in-process
(``ebmtool.cli.main``), which is the same code path without paying a torch import per command.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from ebmtool import artifacts
from ebmtool.methods import METHODS
from ebmtool.models import bottom, load_model

from conftest import SHARED_MNIST, need_shared_mnist, run_cli, run_sub


def cli(*argv) -> dict:
    """In-process run that must succeed; returns the --json result when there is one."""
    r = run_cli([str(a) for a in argv]).ok()
    assert "Traceback" not in r.err
    return json.loads(r.out) if "--json" in argv else {}


def png_std(path: Path) -> float:
    from PIL import Image

    return float(np.asarray(Image.open(path)).astype(np.float64).std())


def grid_tiles(path: Path, n: int, h: int, w: int) -> torch.Tensor:
    """The n tiles of a save_grid PNG (nrow = ceil(sqrt(n)), padding 1, upscaled by an integer factor by nearest
    neighbour), grey: (n, h, w) uint8."""
    from PIL import Image

    a = np.asarray(Image.open(path))
    a = a[..., 0] if a.ndim == 3 else a
    nrow = max(1, int(np.ceil(np.sqrt(n))))
    k = a.shape[1] // (nrow * (w + 1) + 1)
    assert a.shape[1] == k * (nrow * (w + 1) + 1), "grid width is not a whole multiple of the 1x grid"
    a = a[::k, ::k]
    tiles = [a[1 + (i // nrow) * (h + 1):][:h, 1 + (i % nrow) * (w + 1):][:, :w] for i in range(n)]
    return torch.from_numpy(np.stack(tiles).copy())


def random_decode_mse(model_path: Path, data_path: Path) -> float:
    """Baseline for reconstruct: decode z ~ N(0, I) (no inference) and compare with the data."""
    from ebmtool.data import load_images

    model, _ = load_model(model_path)
    x, _, _ = load_images(data_path)
    torch.manual_seed(0)
    with torch.no_grad():
        xr = model.generator(bottom(model.prior.base_sample(len(x))))
    return float((xr - x).pow(2).flatten(1).mean(1).mean())


def assert_backbone(w: Path, train: Path, test: Path, sub: set[str], n_samples: int = 16) -> Path:
    """pretrain-generator -> sample --grid -> reconstruct -> inspect --json; returns the generator path.
    The steps named in ``sub`` run as real subprocesses, the others in-process."""
    from ebmtool.config import PRESETS

    def run(argv):
        return (run_sub if argv[0] in sub else run_cli)(argv)

    gen = w / "gen.safetensors"
    run(["pretrain-generator", "--data", train, "--preset", "smoke", "-o", gen, "--seed", "0", "-q"]).ok()
    assert artifacts.load(gen, "model").meta["method"] == "pretrain"
    r = run(["sample", "--model", gen, "-n", n_samples, "--grid", w / "s.png", "-o", w / "s.safetensors"]).ok()
    s = artifacts.load(w / "s.safetensors", "samples")
    imgs = s.tensors["images"]
    assert imgs.shape[0] == n_samples and imgs.dtype == torch.uint8
    assert (w / "s.png").is_file(), r.out
    tiles = grid_tiles(w / "s.png", n_samples, *imgs.shape[2:])
    assert float(tiles.double().std()) > 1.0  # not blank (the padding between tiles is left out)
    assert torch.equal(tiles, imgs[:, 0])  # the grid shows exactly the samples that were written
    assert s.parents[0]["sha256"] == artifacts.file_sha256(gen)
    r = run(["reconstruct", "--model", gen, "--data", test, "-o", w / "r.safetensors", "--json"]).ok()
    res = json.loads(r.out)
    assert res["mse"] < random_decode_mse(gen, test), res
    rec = artifacts.load(w / "r.safetensors", "reconstructions")
    assert abs(float(rec.tensors["mse"].mean()) - res["mse"]) < 1e-6
    info = json.loads(run(["inspect", gen, "--json"]).ok().out)
    assert info["kind"] == "model" and "tensors" in info and any(k.startswith("generator.") for k in info["tensors"])
    assert info["parents"][0]["sha256"] == artifacts.file_sha256(train)
    assert info["config"]["epochs"] == PRESETS["smoke"]["common"]["epochs"] and info["meta"]["model"]["prior"]["type"] == "gaussian"
    return gen


# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """Subprocess backbone on the digits anomaly protocol (class 1 held out); returns the folder and paths."""
    w = tmp_path_factory.mktemp("cli-digits")
    train, test = w / "train.safetensors", w / "test.safetensors"
    r = run_sub(["data", "prepare", "--dataset", "digits", "--anomaly-protocol", "1", "--part", "train",
                 "--limit", "256", "-o", train, "--json"]).ok()
    assert json.loads(r.out)["n"] == 256
    cli("data", "prepare", "--dataset", "digits", "--anomaly-protocol", "1", "--part", "test", "--limit", "120",
        "-o", test)
    gen = assert_backbone(w, train, test, sub={"pretrain-generator", "sample", "reconstruct", "inspect"})
    return {"w": w, "train": train, "test": test, "gen": gen}


def test_digits_backbone(digits):
    d = artifacts.load(digits["train"], "dataset")
    assert d.meta["protocol"]["anomaly_class"] == 1 and 1 not in d.tensors["labels"].tolist()
    t = artifacts.load(digits["test"], "dataset")
    assert 1 in t.tensors["labels"].tolist()


@pytest.fixture(scope="module")
def two_stages(digits):
    out = digits["w"] / "anc2.safetensors"
    cli("fit-prior", "--method", "adaptive-nce", "--preset", "smoke", "--init", digits["gen"], "--data",
        digits["train"], "--stages", "2", "-o", out, "-q")
    return out


def test_adaptive_nce_stage_by_stage_through_files(digits, two_stages):
    a4 = digits["w"] / "anc4.safetensors"
    res = cli("fit-prior", "--method", "adaptive-nce", "--preset", "smoke", "--init", two_stages, "--data",
              digits["train"], "--stages", "2", "-o", a4, "-q", "--json")
    assert res["stages_total"] == 4 and res["stages_added"] == 2
    info = json.loads(run_cli(["inspect", a4, "--json"]).ok().out)
    assert info["meta"]["stages_total"] == 4 and info["meta"]["model"]["prior"]["stages"] == 4
    assert info["tensors"]["memory"]["shape"] == [256, 8]
    assert {"history.stage2.nce", "history.stage3.nce"} <= set(info["tensors"])
    assert info["parents"][1]["sha256"] == artifacts.file_sha256(two_stages)
    # the first two (frozen) stages travel unchanged; two new ratio networks were added
    a2t, a4t = load_file(str(two_stages)), load_file(str(a4))
    for k, v in a2t.items():
        if k.startswith(("prior.stages.0.", "prior.stages.1.")):
            assert torch.equal(a4t[k], v), k
    assert any(k.startswith("prior.stages.3.") for k in a4t)
    m, _ = load_model(a4)
    assert len(m.prior.stages) == 4


def test_fit_prior_mle_smoke(digits):
    out = digits["w"] / "mle.safetensors"
    res = cli("fit-prior", "--method", "mle", "--preset", "smoke", "--data", digits["train"], "-o", out, "-q", "--json")
    assert res["method"] == "mle"
    a = artifacts.load(out, "model")
    assert a.config["prior"]["step_size"] == METHODS["mle"].config().prior.step_size  # survives the preset
    assert a.meta["model"]["prior"]["type"] == "energy" and "history.loss_e" in a.tensors
    cli("sample", "--model", out, "-n", 8, "-o", digits["w"] / "mle-s.safetensors", "--steps", 5)


def test_init_generator_is_kept_and_recorded_and_a_conflicting_size_is_refused(digits):
    """--init keeps its generator: the saved config records the generator really trained, and an explicit
    --nz / --set generator.ngf that differs from it is refused in one line, before any file is written."""
    w, train, gen = digits["w"], digits["train"], digits["gen"]
    g = artifacts.load(gen).meta["model"]["generator"]
    out = w / "nz-kept.safetensors"
    cli("fit-prior", "--method", "nce", "--preset", "smoke", "--init", gen, "--data", train, "-o", out, "-q")
    saved = artifacts.load(out).config["generator"]
    assert {k: saved[k] for k in ("arch", "nz", "ngf")} == {k: g[k] for k in ("arch", "nz", "ngf")}
    cli("fit-prior", "--method", "nce", "--preset", "smoke", "--init", gen, "--nz", g["nz"], "--data", train,
        "-o", w / "nz-same.safetensors", "-q")  # the same value is accepted
    for flags, said in ((["--nz", g["nz"] + 8], f"--nz {g['nz'] + 8}: the --init model's generator has nz {g['nz']}"),
                        (["--set", f"generator.ngf={g['ngf'] * 2}"], f"--set generator.ngf={g['ngf'] * 2}:")):
        bad = w / "nz-bad.safetensors"
        r = run_cli(["fit-prior", "--method", "mle", "--preset", "smoke", "--init", str(gen), "--data", str(train),
                     "-o", str(bad), "-q"] + [str(f) for f in flags])
        assert r.code == 2 and said in r.err and len(r.err.strip().splitlines()) == 1, r.err
        assert not bad.exists() and not (w / "nz-bad.ckpt.safetensors").exists()
    # a continued ratio product keeps its network size; from a Gaussian init the size comes from the config
    hidden = artifacts.load(out).meta["model"]["prior"]["hidden"]
    r = run_cli(["fit-prior", "--method", "adaptive-nce", "--preset", "smoke", "--init", str(out), "--data",
                 str(train), "--set", f"energy.hidden={hidden + 3}", "-o", str(w / "nz-bad.safetensors"), "-q"])
    assert r.code == 2 and f"--set energy.hidden={hidden + 3}: the --init model's energy has hidden {hidden}" in r.err
    fresh = w / "nz-fresh.safetensors"
    cli("fit-prior", "--method", "nce", "--preset", "smoke", "--init", gen, "--data", train,
        "--set", f"energy.hidden={hidden + 3}", "-o", fresh, "-q")
    assert artifacts.load(fresh).meta["model"]["prior"]["hidden"] == hidden + 3
    assert artifacts.load(fresh).config["energy"]["hidden"] == hidden + 3
    toml = w / "wide.toml"  # a config file's value is named by where it was set, not as an option never passed
    toml.write_text(f"[generator]\nngf = {g['ngf'] * 2}\n")
    r = run_cli(["fit-prior", "--method", "nce", "--preset", "smoke", "--init", str(gen), "--data", str(train),
                 "--config", str(toml), "-o", str(w / "nz-bad.safetensors"), "-q"])
    assert r.code == 2 and f"{toml}: [generator] ngf = {g['ngf'] * 2}: the --init model's generator has ngf" in r.err


def test_fit_prior_nce_non_adaptive_and_langevin_negatives(digits, two_stages):
    w, train, gen = digits["w"], digits["train"], digits["gen"]
    res = cli("fit-prior", "--method", "nce", "--preset", "smoke", "--init", gen, "--data", train,
              "-o", w / "nce.safetensors", "-q", "--json")
    assert res["method"] == "nce" and res["stages_total"] == 1
    res = cli("fit-prior", "--method", "adaptive-nce", "--preset", "smoke", "--non-adaptive", "--stages", "2",
              "--init", gen, "--data", train, "-o", w / "tre.safetensors", "-q", "--json")
    assert res["stages_total"] == 2 and res["non_adaptive"] is True
    tre = artifacts.load(w / "tre.safetensors")
    g0 = artifacts.load(gen)
    for k, v in g0.tensors.items():  # the ablation keeps the 0-stage generator
        if k.startswith("generator."):
            assert torch.equal(tre.tensors[k], v), k
    res = cli("fit-prior", "--method", "adaptive-nce", "--preset", "smoke", "--prior-sampler", "langevin",
              "--stages", "1", "--init", two_stages, "--data", train, "-o", w / "lang.safetensors", "-q", "--json")
    assert res["stages_total"] == 3
    assert artifacts.load(w / "lang.safetensors").config["prior_sampler"] == "langevin"


def test_anomaly_json_and_scores(digits, two_stages):
    out = digits["w"] / "scores.safetensors"
    res = cli("anomaly", "--model", two_stages, "--data", digits["test"], "--anomaly-class", "1", "--json", "-o", out)
    assert {"auprc", "average_precision", "auroc"} <= set(res)
    assert all(0.0 <= res[k] <= 1.0 for k in ("auprc", "average_precision", "auroc"))
    labels = artifacts.load(digits["test"]).tensors["labels"]
    assert res["n"] == len(labels) and res["n_anomalous"] == int((labels == 1).sum())
    s = artifacts.load(out, "scores")
    assert s.tensors["scores"].shape == (len(labels),) and torch.equal(s.tensors["labels"], (labels == 1).long())
    res2 = cli("anomaly", "--model", two_stages, "--data", digits["test"], "--labels-positive", "1", "--json")
    assert res2["auroc"] == res["auroc"]  # same seed, same labels


def test_sample_sir_and_trajectory(digits, two_stages):
    w = digits["w"]
    cli("sample", "--model", two_stages, "-n", 12, "--sampler", "sir", "-o", w / "sir.safetensors")
    s = artifacts.load(w / "sir.safetensors", "samples")
    assert s.tensors["images"].shape == (12, 1, 8, 8) and s.tensors["latents"].shape == (12, 8)
    assert s.meta["sampler"] == "sir"
    cli("sample", "--model", two_stages, "-n", 8, "--steps", 6, "--trajectory", 2, "--trajectory-png",
        w / "traj.png", "-o", w / "traj.safetensors")
    t = artifacts.load(w / "traj.safetensors")
    assert t.tensors["trajectory.steps"].tolist() == [0, 2, 4, 6]
    assert t.tensors["trajectory.log_prob"].shape == (4, 8)
    assert png_std(w / "traj.png") > 0


def test_same_command_and_seed_give_identical_tensors(digits, two_stages):
    w, train = digits["w"], digits["train"]

    def fit(name):
        cli("fit-prior", "--method", "adaptive-nce", "--preset", "smoke", "--stages", "1", "--init", two_stages,
            "--data", train, "--seed", "7", "-o", w / name, "-q")
        return load_file(str(w / name))

    a, b = fit("det-a.safetensors"), fit("det-b.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k

    def sample(name):
        cli("sample", "--model", w / "det-a.safetensors", "-n", 6, "--seed", "3", "-o", w / name)
        return load_file(str(w / name))

    s1, s2 = sample("ds1.safetensors"), sample("ds2.safetensors")
    assert all(torch.equal(s1[k], s2[k]) for k in s1)
    cli("sample", "--model", w / "det-a.safetensors", "-n", 6, "--seed", "4", "-o", w / "ds3.safetensors")
    s3 = load_file(str(w / "ds3.safetensors"))
    assert not torch.equal(s1["latents"], s3["latents"])  # the seed matters


def test_force_overwrites(digits):
    out = digits["w"] / "forced.safetensors"
    out.write_bytes(b"old")
    cli("sample", "--model", digits["gen"], "-n", 4, "-o", out, "--force")
    assert artifacts.load(out).kind == "samples"


def test_listing_commands():
    r = run_cli(["methods"]).ok()
    for m in ("mle", "adaptive-nce", "nce"):
        assert m in r.out
    r = run_cli(["presets"]).ok()
    assert all(p in r.out for p in ("smoke", "cpu", "paper"))
    r = run_cli(["--help"]).ok()
    assert "s^2/2" in r.out  # the Langevin convention is documented in the help


# ----------------------------------------------------------------------------------------------------------
@need_shared_mnist
def test_mnist_end_to_end(tmp_path):
    w = tmp_path
    train, test = w / "train.safetensors", w / "test.safetensors"
    r = run_sub(["data", "prepare", "--dataset", "mnist", "--root", SHARED_MNIST, "--split", "test", "--limit", "128",
                 "--size", "32", "--anomaly-protocol", "1", "--part", "train", "-o", train, "--json"]).ok()
    assert json.loads(r.out)["image_shape"] == [1, 32, 32]
    cli("data", "prepare", "--dataset", "mnist", "--root", SHARED_MNIST, "--split", "test", "--limit", "64",
        "--size", "32", "--anomaly-protocol", "1", "--part", "test", "-o", test)
    gen = assert_backbone(w, train, test, sub={"pretrain-generator"}, n_samples=9)
    assert artifacts.load(gen).meta["model"]["generator"]["arch"] == "mnist32"
    res = cli("fit-prior", "--method", "adaptive-nce", "--preset", "smoke", "--init", gen, "--data", train,
              "--stages", "1", "-o", w / "a1.safetensors", "-q", "--json")
    assert res["stages_total"] == 1
    res = cli("anomaly", "--model", w / "a1.safetensors", "--data", test, "--anomaly-class", "1", "--json")
    assert {"auprc", "average_precision", "auroc"} <= set(res)
