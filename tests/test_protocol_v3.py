"""What the papers' MNIST protocol (benchmark v3) needs from the tool: 28x28 generators chosen by the registry, the
noise-free (near-MAP) scoring chain recorded in the scores artifact, and per-epoch model snapshots for curves."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ebmtool import artifacts
from ebmtool.models import load_model
from ebmtool.nets.generators import GENERATORS, Generator, resolve_arch

from conftest import run_cli
from test_data import _write_split


def cli(*argv) -> dict:
    r = run_cli([str(a) for a in argv]).ok()
    assert "Traceback" not in r.err
    return json.loads(r.out) if "--json" in argv else {}


def test_28x28_generators_come_from_the_registry():
    assert resolve_arch("auto", (1, 28, 28)) == "mnist28"
    for arch in ("mnist28", "mnist28conv"):
        g = Generator(arch, 20, 8, 1)
        assert g(torch.randn(3, 20)).shape == (3, 1, 28, 28)
        assert resolve_arch(arch, (1, 28, 28)) == arch
    fc = Generator("mnist28", 20, 64, 1)  # the lineage's sizes: 20 -> 512 -> 1024 -> 784
    assert [m.out_features for m in fc.net if isinstance(m, torch.nn.Linear)] == [512, 1024, 784]
    from ebmtool.config import GeneratorSpec

    for arch in ("auto", *GENERATORS):  # the config checks --arch against the registry itself
        assert GeneratorSpec(arch=arch).arch == arch


@pytest.fixture(scope="module")
def mnist28(tmp_path_factory):
    """A tiny hand-made 70k-style MNIST (train + test IDX files), its v3 parts and a smoke generator on them."""
    w = tmp_path_factory.mktemp("v3")
    _write_split(w / "raw", "train", 120, seed=5, gz=True)
    _write_split(w / "raw", "test", 40, seed=6, gz=True)
    for part in ("train", "test"):
        cli("data", "prepare", "--dataset", "mnist", "--root", w / "raw", "--split", "train+test",
            "--anomaly-protocol", "3", "--part", part, "-o", w / f"{part}.safetensors")
    cli("pretrain-generator", "--data", w / "train.safetensors", "--preset", "smoke", "--epochs", "2",
        "--snapshots", w / "snaps", "-o", w / "gen.safetensors", "-q")
    return w


def test_auto_picks_the_fully_connected_generator_at_28x28(mnist28):
    m = artifacts.load(mnist28 / "gen.safetensors")
    assert m.meta["model"]["generator"]["arch"] == "mnist28"
    assert m.meta["image_shape"] == [1, 28, 28]


def test_snapshots_hold_the_model_of_each_epoch(mnist28):
    snaps = sorted(p.name for p in (mnist28 / "snaps").glob("*.safetensors"))
    assert snaps == ["epoch-001.safetensors", "epoch-002.safetensors"]
    last, final = artifacts.load(mnist28 / "snaps" / snaps[-1]), artifacts.load(mnist28 / "gen.safetensors")
    assert last.meta["epoch"] == 2
    gen_keys = [k for k in final.tensors if k.startswith("generator.")]
    assert gen_keys and all(torch.equal(last.tensors[k], final.tensors[k]) for k in gen_keys)
    first = artifacts.load(mnist28 / "snaps" / snaps[0])
    assert not all(torch.equal(first.tensors[k], final.tensors[k]) for k in gen_keys)  # it trained in between
    load_model(str(mnist28 / "snaps" / snaps[0]))  # a snapshot is a model every stage opens


def test_snapshots_refused_where_a_method_adds_stages(mnist28, tmp_path):
    out = tmp_path / "nce.safetensors"
    r = run_cli(["fit-prior", "--method", "adaptive-nce", "--preset", "smoke", "--init", mnist28 / "gen.safetensors",
                 "--data", mnist28 / "train.safetensors", "--snapshots", tmp_path / "s", "-o", out])
    assert r.code == 2 and len(r.err_lines) == 1 and "--snapshots" in r.err and not out.exists()
    assert not (tmp_path / "s").exists()


def test_noise_free_score_chain_is_recorded_and_reruns_to_the_same_bytes(mnist28, tmp_path):
    """anomaly --no-noise: gradient ascent on log p(x, z) from N(0, I) (the papers' near-MAP z). The scores
    artifact records the chain, seed and precision; the command rebuilt from that record gives the same bytes,
    and the chain raises log p(x, z) at every image against its start."""
    a = tmp_path / "a.safetensors"
    res = cli("anomaly", "--model", mnist28 / "gen.safetensors", "--data", mnist28 / "test.safetensors",
              "--anomaly-class", "3", "--steps", "30", "--step-size", "0.1", "--no-noise", "--seed", "4", "--json",
              "-o", a)
    meta = artifacts.load(a).meta
    ch = meta["chain"]
    assert (ch["steps"], ch["step_size"], ch["noise"], ch["convention"]) == (30, 0.1, False, "lebm")
    assert meta["seed"] == 4 and meta["precision"] == "fp32" and meta["device"] == "cpu"
    assert res["chain"]["noise"] is False
    b = tmp_path / "b.safetensors"
    cli("anomaly", "--model", mnist28 / "gen.safetensors", "--data", mnist28 / "test.safetensors",
        "--anomaly-class", "3", "--steps", ch["steps"], "--step-size", ch["step_size"],
        "--noise" if ch["noise"] else "--no-noise", "--seed", meta["seed"], "--precision", meta["precision"],
        "-o", b)
    ta, tb = artifacts.load(a).tensors, artifacts.load(b).tensors
    assert ta.keys() == tb.keys() and all(torch.equal(ta[k], tb[k]) for k in ta)
    # ground truth: the same chain with 0 steps' worth of ascent scores worse (higher -log p) on every image
    one = tmp_path / "one.safetensors"
    cli("anomaly", "--model", mnist28 / "gen.safetensors", "--data", mnist28 / "test.safetensors",
        "--anomaly-class", "3", "--steps", "1", "--step-size", "0.1", "--no-noise", "--seed", "4", "-o", one)
    start = artifacts.load(one).tensors["scores"].numpy()
    assert np.all(ta["scores"].numpy() <= start + 1e-6)


def test_reconstruct_records_its_chain(mnist28, tmp_path):
    out = tmp_path / "r.safetensors"
    cli("reconstruct", "--model", mnist28 / "gen.safetensors", "--data", mnist28 / "test.safetensors",
        "--steps", "7", "--no-noise", "-o", out)
    ch = artifacts.load(out).meta["chain"]
    assert (ch["steps"], ch["noise"]) == (7, False) and ch["inference"] == "posterior Langevin"


def test_snapshots_of_an_earlier_run_are_refused_before_any_work(mnist28, tmp_path):
    out = tmp_path / "g.safetensors"
    r = run_cli(["pretrain-generator", "--data", mnist28 / "train.safetensors", "--preset", "smoke", "--epochs", "1",
                 "--snapshots", mnist28 / "snaps", "-o", out])
    assert r.code == 2 and len(r.err_lines) == 1 and "epoch-001.safetensors of an earlier run" in r.err
    assert not out.exists()
