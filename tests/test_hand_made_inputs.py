"""Issue 33 §3-§4, the parts that are honoured rather than refused (the refusals are cases of
tests/bad_inputs/cases.toml): ``--json`` is strict JSON even for an artifact that holds a non-finite value, a
terminal that cannot show a file name's characters gets escapes instead of a UnicodeEncodeError, and a damaged
FID cache entry is recomputed, as the code says."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ebmtool import artifacts
from ebmtool.errors import UserError

from conftest import run_cli, run_sub


def _strict_json(text: str):
    def refuse(name):
        raise AssertionError(f"not JSON: {name}")

    return json.loads(text, parse_constant=refuse)


def test_inspect_json_is_strict_json_for_a_non_finite_value(tmp_path):
    """An artifact written before configs refused ``--set sigma=1e400`` holds ``"sigma": Infinity``; ``inspect --json``
    prints it as the string "inf", never the non-JSON token Infinity."""
    p = artifacts.save(tmp_path / "m.safetensors", "dataset", {"images": torch.zeros(2, 1, 8, 8, dtype=torch.uint8)},
                       config={"sigma": float("inf"), "opt_g": {"lr": float("nan")}}, meta={"x": float("-inf")})
    run = run_cli(["inspect", "--json", str(p)]).ok()
    info = _strict_json(run.out)
    assert info["config"] == {"sigma": "inf", "opt_g": {"lr": "nan"}} and info["meta"]["x"] == "-inf"


def test_an_ascii_terminal_gets_escapes_not_a_traceback(tmp_path):
    out = tmp_path / "\u00fcn\u00ef.safetensors"
    run = run_sub(["data", "prepare", "--dataset", "digits", "--limit", "3", "-o", str(out), "--json"],
                  env={"PYTHONIOENCODING": "ascii"}).ok()
    assert _strict_json(run.out)["output"] == str(out) and out.is_file()
    run = run_sub(["inspect", str(out)], env={"PYTHONIOENCODING": "ascii"}).ok()
    assert "\\xfcn\\xef.safetensors" in run.out and "Traceback" not in run.err


def test_a_damaged_fid_cache_entry_is_recomputed(tmp_path):
    """A cache entry whose ``n`` is 'abc' or whose ``image_shape`` is 0-d is recomputed
    and replaced, as :func:`ebmtool.eval.fid._reference_from_artifact` says; given as ``--ref`` it is refused in
    one line."""
    from ebmtool.eval import fid as F

    torch.manual_seed(0)
    ex = F.InceptionExtractor(model=F.FIDInceptionV3(None, output_block=1, resize_to=75))
    g = torch.Generator().manual_seed(1)
    ref = artifacts.save(tmp_path / "ref.safetensors", "samples",
                         {"images": torch.randint(0, 256, (200, 1, 16, 16), generator=g, dtype=torch.uint8)})
    cache = tmp_path / "cache"
    first = F.reference_statistics(ref, ex, cache)
    entry = first.cache_path
    assert first.source == "computed" and entry.is_file()
    good = dict(np.load(entry))
    for damage in ({"n": np.array("abc")}, {"image_shape": np.array(5)}):
        with open(entry, "wb") as f:
            np.savez(f, **{**good, **damage})
        with pytest.raises(UserError, match="statistics field"):
            F.load_statistics(entry)
        again = F.reference_statistics(ref, ex, cache)
        assert again.source == "computed" and np.array_equal(again.mu, first.mu)
        assert F.reference_statistics(ref, ex, cache).source == "cache"  # replaced by a good entry


def test_a_network_larger_than_memory_is_refused_before_allocation(monkeypatch, digits_ds, tmp_path):
    """Sizes within the configs' limits can combine into a network this machine cannot hold: its parameters are
    counted before any is allocated (here against a machine of 1 GiB)."""
    from ebmtool import runtime
    from ebmtool.nets.encoders import GaussianMLP
    from ebmtool.nets.generators import Generator
    from ebmtool.nets.mlp import EnergyMLP

    monkeypatch.setattr(runtime, "machine_memory", lambda: 2**30)
    with pytest.raises(UserError, match=r"an energy MLP 8 -> 8192 x 8 -> 1: its 469,901,313 parameters need about "
                                        r"1.8 GiB of memory, more than this machine's 1.0 GiB; use smaller layers"):
        EnergyMLP(8, 8192, 8)
    with pytest.raises(UserError, match="a Gaussian MLP 8 -> 8192 x 8 -> 16: its"):
        GaussianMLP(8, 8, 8192, 8)
    with pytest.raises(UserError, match=r"the cifar32 generator \(nz 4096, ngf 1024\): its"):
        Generator("cifar32", 4096, 1024, 3)
    EnergyMLP(8, 200, 2)  # the papers' sizes pass
    run = run_cli(["fit-prior", "--method", "mle", "--preset", "smoke", "--set", "energy.hidden=8192",
                   "--set", "energy.layers=8", "--data", str(digits_ds), "-o", str(tmp_path / "m.safetensors")])
    assert run.code == 2 and run.err_lines == [
        "ebmtool: error: an energy MLP 8 -> 8192 x 8 -> 1: its 469,901,313 parameters need about 1.8 GiB of memory, "
        "more than this machine's 1.0 GiB; use smaller layers"]
    assert not (tmp_path / "m.safetensors").exists()
