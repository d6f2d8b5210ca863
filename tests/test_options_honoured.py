"""Every option a verb takes is honoured or refused in one line (exit 2); no ``**kwargs`` swallows one.

BiDVL: ``reconstruct --steps/--step-size`` refine the encoder's mean by posterior Langevin on log p(x, h);
``anomaly --steps`` is refused (its score E(x) runs no chain). A generator with the N(0, I) prior refuses the
prior-chain options of ``sample`` (it is drawn exactly)."""

from __future__ import annotations

import ast

import pytest
import torch

from conftest import REPO, _train, run_cli


@pytest.fixture(scope="module")
def bidvl_model(assets, digits_ds):
    out = assets / "bidvl.safetensors"
    if not out.exists():
        _train("bidvl", digits_ds, out, epochs=15)  # 45 iterations: the generator depends on h (2 s)
    return out


def test_no_function_swallows_keyword_arguments():
    """A ``**name`` parameter is allowed only where the function uses it (collecting values it stores)."""
    bad = []
    for p in sorted((REPO / "ebmtool").rglob("*.py")):
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.args.kwarg is not None:
                name = node.args.kwarg.arg
                used = any(isinstance(n, ast.Name) and n.id == name for b in node.body for n in ast.walk(b))
                if name == "_" or not used:
                    bad.append(f"{p.relative_to(REPO)}:{node.lineno} {node.name}(**{name})")
    assert not bad, bad


def test_bidvl_reconstruct_steps_refine_the_encoders_mean(bidvl_model, digits_ds):
    from ebmtool.models import load_model
    from ebmtool.stages import open_training_data

    model, _ = load_model(str(bidvl_model), device=torch.device("cpu"))
    x = open_training_data(str(digits_ds), torch.device("cpu")).x[:64]
    xe, h_enc = model.reconstruct(x)
    x0, h0 = model.reconstruct(x, steps=0)
    assert torch.equal(h0, h_enc) and torch.equal(x0, xe)  # --steps 0: the encoder alone
    xr, hr = model.reconstruct(x, steps=20)  # noise-free steps climb log p(x, h)
    with torch.no_grad():
        assert model.log_joint(x, hr).mean() > model.log_joint(x, h_enc).mean() + 0.5
    assert (xr - x).pow(2).mean() < (xe - x).pow(2).mean()


def test_bidvl_reconstruct_steps_through_the_cli(bidvl_model, digits_ds, tmp_path):
    plain = run_cli(["reconstruct", "--model", bidvl_model, "--data", digits_ds, "--limit", 64, "--json"]).ok()
    refined = run_cli(["reconstruct", "--model", bidvl_model, "--data", digits_ds, "--limit", 64, "--json",
                       "--steps", 20, "--step-size", 0.05]).ok()
    assert plain.out != refined.out  # the option changes the result


def _one_line_exit_2(r, *words):
    assert r.code == 2, (r.code, r.err)
    assert len(r.err_lines) == 1 and "Traceback" not in r.err, r.err
    for w in words:
        assert w in r.err, r.err


def test_bidvl_anomaly_steps_are_refused(bidvl_model, digits_ds, tmp_path):
    out = tmp_path / "s.safetensors"
    r = run_cli(["anomaly", "--model", bidvl_model, "--data", digits_ds, "--anomaly-class", 1, "--steps", 5, "-o", out])
    _one_line_exit_2(r, "--steps", "E(x)")
    assert not out.exists()
    run_cli(["anomaly", "--model", bidvl_model, "--data", digits_ds, "--anomaly-class", 1, "-o", out]).ok()


@pytest.mark.parametrize("extra, named", [(["--steps", "5"], "--steps"), (["--step-size", "0.1"], "--step-size"),
                                          (["--sampler", "sir"], "--sampler"), (["--sampler", "langevin"], "--sampler")])
def test_gaussian_prior_refuses_prior_chain_options(gen_model, tmp_path, extra, named):
    out = tmp_path / "s.safetensors"
    r = run_cli(["sample", "--model", gen_model, "-n", 4, "-o", out, *extra])
    _one_line_exit_2(r, named, "N(0, I)")
    assert not out.exists()
    run_cli(["sample", "--model", gen_model, "-n", 4, "-o", out]).ok()
