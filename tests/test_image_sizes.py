"""Any reasonable image size trains (issue 32 §2): every square S = s0 * 2^k >= 16 with s0 in 4..7 has a
generator, a BiDVL image energy / encoder / generator and an encoder; ``--arch auto`` keeps the papers' networks
at 8, 28, 32 and 64 and picks ``general`` elsewhere, and the model records which. A size nothing serves, and a
non-square image, end in one line naming a ``data prepare --size`` that works."""

from __future__ import annotations

import json

import pytest
import torch

from ebmtool import artifacts
from ebmtool.nets.encoders import BottomUpGaussianEncoder
from ebmtool.nets.generators import GENERATORS, Generator, general_arch, resolve_arch, served, size_levels
from ebmtool.nets.image_ebm import GaussianEncoder, ImageEnergy, ImageGenerator
from tests.conftest import run_cli

SIZES = [16, 20, 24, 28, 40, 48, 56, 80, 96]  # s0 * 2^k >= 16, s0 in 4..7


def test_size_levels_is_the_one_size_rule():
    assert [size_levels(s) for s in (8, 16, 28, 40, 48, 96)] == [(4, 1), (4, 2), (7, 2), (5, 3), (6, 3), (6, 4)]
    assert size_levels(9) is None and size_levels(18) is None and size_levels(36) is None
    assert [s for s in range(1, 70) if served(s)] == [8, 16, 20, 24, 28, 32, 40, 48, 56, 64]


@pytest.mark.parametrize("size", SIZES)
def test_every_network_serves_the_size(size):
    torch.manual_seed(0)
    arch = resolve_arch("auto", (3, size, size))
    assert arch == {28: "mnist28"}.get(size, "general")
    g = Generator(arch, 6, 4, 3, size=size if GENERATORS[arch].general else None)
    x = g(torch.randn(2, 6))
    assert x.shape == (2, 3, size, size)
    if arch == "general":  # the recorded spec rebuilds the same network
        assert g.spec()["size"] == size and Generator(**g.spec()).state_dict().keys() == g.state_dict().keys()
    assert ImageEnergy(3, size, ndf=4)(x).shape == (2,)
    assert GaussianEncoder(3, size, nz=5, nef=4)(x)[0].shape == (2, 5)
    assert ImageGenerator(3, size, nz=5, ngf=4)(torch.randn(2, 5)).shape == (2, 3, size, size)
    enc = BottomUpGaussianEncoder((3, size, size), (4, 2), nef=4, hidden=8, layers=1)
    assert [z.shape for z in enc.sample(x)] == [(2, 4), (2, 2)]


def test_auto_keeps_the_papers_networks():
    assert [resolve_arch("auto", (c, s, s)) for c, s in ((1, 8), (1, 28), (1, 32), (3, 32), (3, 64))] == \
        ["digits8", "mnist28", "mnist32", "svhn32", "celeba64"]
    assert general_arch(48).hidden == ((4, 6, 1, 0), (2, 4, 2, 1), (1, 4, 2, 1))  # 6 -> 12 -> 24 -> 48
    assert resolve_arch("general", (1, 32, 32)) == "general"  # the general one at a paper's size, when asked


def cli(*argv) -> dict:
    r = run_cli([str(a) for a in argv]).ok()
    assert "Traceback" not in r.err
    return json.loads(r.out) if "--json" in argv else {}


def test_a_48x48_model_goes_through_every_stage(tmp_path):
    d = tmp_path / "d48.safetensors"
    cli("data", "prepare", "--dataset", "digits", "--size", "48", "--limit", "24", "-o", d, "--quiet")
    assert artifacts.load(d).meta["image_shape"] == [1, 48, 48]
    tiny = ["--preset", "smoke", "--epochs", "1", "--batch-size", "12", "--set", "posterior.steps=2", "--quiet"]
    gen, mle = tmp_path / "gen.safetensors", tmp_path / "mle.safetensors"
    cli("pretrain-generator", "--data", d, "-o", gen, *tiny)
    cli("fit-prior", "--method", "mle", "--init", gen, "--data", d, "-o", mle, *tiny, "--set", "prior.steps=2")
    spec = artifacts.load(mle).meta["model"]["generator"]
    assert (spec["arch"], spec["size"]) == ("general", 48)  # the artifact records which network
    s = tmp_path / "s.safetensors"
    cli("sample", "--model", mle, "-n", "4", "-o", s, "--quiet")
    assert tuple(artifacts.load(s).tensors["images"].shape) == (4, 1, 48, 48)
    r = tmp_path / "r.safetensors"
    cli("reconstruct", "--model", mle, "--data", d, "--steps", "2", "-o", r, "--quiet")
    assert tuple(artifacts.load(r).tensors["images"].shape)[1:] == (1, 48, 48)
    out = cli("anomaly", "--model", mle, "--data", d, "--anomaly-class", "1", "--steps", "2", "--json", "--quiet")
    assert 0 <= out["auroc"] <= 1


def test_bidvl_trains_at_48x48(tmp_path):
    d = tmp_path / "d48.safetensors"
    cli("data", "prepare", "--dataset", "digits", "--size", "48", "--limit", "8", "-o", d, "--quiet")
    m = tmp_path / "b.safetensors"
    cli("fit-prior", "--method", "bidvl", "--data", d, "-o", m, "--preset", "smoke", "--epochs", "1",
        "--batch-size", "8", "--set", "ebm.ndf=4", "--set", "encoder.nef=4", "--set", "generator.ngf=4", "--quiet")
    assert artifacts.load(m).meta["model"]["ebm"]["size"] == 48


@pytest.mark.parametrize("shape, expect", [
    ((1, 32, 48), "images are 32x48 (height x width): generators need square images (resize and centre-crop them "
                  "with data prepare --size 32)"),
    ((1, 18, 18), "no generator for 18x18 images (sizes 8 and every s0*2^k >= 16 with s0 in 4..7: 16, 20, 24, 28, "
                  "32, 40, 48, 56, 64, 80, 96, 112, 128, ...); use data prepare --size 16 or --size 20"),
])
def test_sizes_nothing_serves_are_one_line_with_a_size_to_use(tmp_path, shape, expect):
    d = tmp_path / "odd.safetensors"
    artifacts.save(d, "dataset", {"images": torch.zeros(4, *shape, dtype=torch.uint8),
                                  "labels": torch.zeros(4, dtype=torch.long)})
    r = run_cli(["pretrain-generator", "--data", d, "--preset", "smoke", "-o", tmp_path / "g.safetensors"])
    assert r.code == 2 and r.err_lines == [f"ebmtool: error: {expect}"] and not (tmp_path / "g.safetensors").exists()
