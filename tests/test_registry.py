"""The method registry: a new method is one file (registered from outside the package through EBMTOOL_METHODS),
and the registry refuses duplicates and wrong types."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
from torch import nn

from conftest import REPO, run_sub
from ebmtool import artifacts
from ebmtool.registry import Flag, Registry, register_method

TOY = Path(__file__).parent / "data" / "toy_method.py"


def test_a_method_in_one_file_runs_fit_prior_on_digits(tmp_path, digits_ds):
    folder = tmp_path / "methods"
    folder.mkdir()
    shutil.copy(TOY, folder / "toy.py")
    env = {"EBMTOOL_METHODS": str(folder)}
    out = tmp_path / "toy.safetensors"
    r = run_sub(["fit-prior", "--method", "toy", "--data", digits_ds, "--preset", "smoke", "--toy-steps", "3",
                 "--epochs", "1", "--device", "cpu", "-o", out, "-q", "--json"], env=env).ok()
    assert json.loads(r.out)["method"] == "toy"
    art = artifacts.load(out)
    assert art.meta["method"] == "toy" and art.meta["model"]["method"] == "toy"
    assert art.config["posterior"]["steps"] == 3  # its own flag
    assert art.config["opt_g"]["lr"] == 3e-3 and art.config["batch_size"] == 64  # its preset, and the common one
    assert "toy" in run_sub(["methods"], env=env).ok().out
    assert "--toy-steps" in run_sub(["fit-prior", "--help"], env=env).ok().out
    run_sub(["sample", "--model", out, "-n", "4", "--grid", tmp_path / "toy.png", "--device", "cpu"], env=env).ok()
    # without the folder the method does not exist: one line, exit 2
    r = run_sub(["fit-prior", "--method", "toy", "--data", digits_ds, "-o", tmp_path / "x.safetensors"])
    assert r.code == 2 and len(r.err_lines) == 1 and "unknown method 'toy'" in r.err


def test_the_registry_refuses_duplicates_and_wrong_types():
    class A(nn.Module):
        pass

    class B(nn.Module):
        pass

    reg = Registry("widget", nn.Module)
    reg.register("a")(A)
    assert reg["a"] is A and A.type_name == "a"
    with pytest.raises(ValueError, match="registered twice"):
        reg.register("a")(B)
    with pytest.raises(TypeError, match="is not a Module"):
        reg.register("b")(dict)
    with pytest.raises(KeyError, match="unknown widget type"):
        reg.from_spec({"type": "c"})
    with pytest.raises(TypeError, match="pydantic model class"):
        register_method("bad", dict, "not a config")
    assert Flag("--non-adaptive/--adaptive", "non_adaptive", bool, "").param == "non_adaptive"


def _by_path(name: str, path: Path):
    """The module at ``path`` (a test module, or a script under benchmarks/), imported once under ``name``."""
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_every_registered_method_has_a_golden_run_and_a_gpu_check():
    """The two lists of runs that are kept by hand (their hashes and timeouts are per run): a method added to
    ebmtool/methods/ must get a run in tests/test_golden.py's RUNS (and its hashes) and a fit-<method> check in
    benchmarks/gpu_check.py (which reads the registry)."""
    from ebmtool.methods import METHODS

    golden = {method for method, _, _ in _by_path("test_golden", REPO / "tests" / "test_golden.py").RUNS.values()}
    gpu = {c.name.removeprefix("fit-") for c in _by_path("gpu_check", REPO / "benchmarks" / "gpu_check.py").checks(1)
           if c.name.startswith("fit-")}
    ours = [k for k, m in METHODS.items() if m.fit_prior and m.fit.__module__.startswith("ebmtool.")]
    assert ours
    missing = [f"{k}: no run in tests/test_golden.py RUNS" for k in ours if k not in golden]
    missing += [f"{k}: no fit-{k} check in benchmarks/gpu_check.py" for k in ours if k not in gpu]
    assert not missing, "; ".join(missing)
