"""The Python API (docs/api.md): every example of the page runs, and the public names and signatures stay put.

The examples run in order in one namespace, in a temporary folder, as a reader would paste them into a notebook;
a failure points at the line of docs/api.md that raised (the blocks are compiled at their line numbers).
"""

from __future__ import annotations

import inspect
import re
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "api.md"
FENCE = re.compile(r"^```python\n(.*?)^```", re.S | re.M)

PUBLIC = {  # the promise of docs/api.md: a change here is an incompatible change of ebmtool
    "load_model": "(path, device='cpu')",
    "sample": "(model, n, *, steps=None, step_size=None, sampler=None, seed=None, batch_size=500, precision='fp32')",
    "reconstruct": "(model, images, *, steps=None, step_size=None, noise=None, seed=None, batch_size=500, "
                   "precision='fp32')",
    "score": "(model, images, *, kind='joint', calibration=None, steps=None, step_size=None, noise=None, seed=None, "
             "batch_size=500, precision='fp32')",
    "fit_prior": "(method, data, labels=None, *, init=None, preset=None, overrides=None, out=None, force=False, "
                 "quiet=True)",
}


def python_blocks() -> list[tuple[int, str]]:
    """(line of the block's first code line, code) for every ```python block of docs/api.md."""
    text = DOC.read_text()
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in FENCE.finditer(text)]


def test_every_example_of_docs_api_runs_in_order(tmp_path, monkeypatch, capsys):
    blocks = python_blocks()
    assert len(blocks) >= 8, "docs/api.md lost its examples"
    monkeypatch.chdir(tmp_path)
    namespace: dict = {"__name__": "__docs_api__"}
    t0 = time.perf_counter()
    for line, code in blocks:
        exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), namespace)  # noqa: S102 - the docs' own examples
    assert time.perf_counter() - t0 < 120, "the docs' examples must stay quick (preset smoke, digits)"
    out = capsys.readouterr().out
    assert "mle (1, 8, 8)" in out and "adaptive-nce 1" in out  # the outputs the page shows in comments
    assert {"digits.safetensors", "mle.safetensors", "gen.safetensors"} <= {p.name for p in tmp_path.iterdir()}


def test_the_public_names_and_signatures_are_the_documented_ones():
    import ebmtool
    from ebmtool.stages import api

    assert ebmtool.__all__ == ["__version__", *PUBLIC]
    assert api.__all__ == list(PUBLIC)
    table = DOC.read_text().replace("`", "").replace('"', "'")
    for name, sig in PUBLIC.items():
        fn = getattr(ebmtool, name)
        assert fn is getattr(api, name) and name in dir(ebmtool)
        params = inspect.signature(fn).parameters.values()
        assert str(inspect.Signature([p.replace(annotation=p.empty) for p in params])) == sig, name
        assert f"ebmtool.{name}{sig}" in table, f"docs/api.md's table lost {name}{sig}"
        assert fn.__doc__ and all(p.annotation is not p.empty for p in params), f"{name}: type every parameter"
        assert inspect.signature(fn).return_annotation is not inspect.Signature.empty, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        ebmtool.nope  # noqa: B018


def test_every_stage_is_named_in_docs_api():
    from ebmtool import stages

    text = DOC.read_text()
    assert not [n for n in stages.__all__ if f"`{n}`" not in text], "name every ebmtool.stages function in docs/api.md"


def test_the_type_hints_ship_with_the_package():
    assert (REPO / "ebmtool" / "py.typed").is_file()
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "py.typed" in pyproject["tool"]["setuptools"]["package-data"]["ebmtool"]


def test_fit_prior_refuses_in_one_line(tmp_path):
    import torch

    import ebmtool
    from ebmtool.errors import UserError

    x = torch.zeros(8, 1, 8, 8, dtype=torch.uint8)
    with pytest.raises(UserError, match="unknown method 'lebm'"):
        ebmtool.fit_prior("lebm", x)
    with pytest.raises(UserError, match="unknown key 'epochz'"):
        ebmtool.fit_prior("mle", x, preset="smoke", overrides={"epochz": 1})
    with pytest.raises(UserError, match=r"float images must lie in \[-1, 1\]"):
        ebmtool.fit_prior("mle", x.float() + 2, preset="smoke")
    with pytest.raises(UserError, match="labels: give them with image tensors only"):
        ebmtool.fit_prior("mle", str(tmp_path / "d.safetensors"), torch.zeros(8))
    with pytest.raises(UserError, match="not found"):
        ebmtool.load_model(tmp_path / "missing.safetensors")


def test_sample_refuses_what_the_cli_refuses(tmp_path):
    """ebmtool.sample caps n as ``sample -n`` does: one UserError before any allocation (issue 22 item 4)."""
    import torch

    import ebmtool
    from ebmtool.errors import UserError
    from ebmtool.stages.evaluate import MAX_SAMPLES

    x = torch.randint(0, 256, (16, 1, 8, 8), dtype=torch.uint8)
    model = ebmtool.fit_prior("pretrain", x, preset="smoke", overrides={"epochs": 1})
    with pytest.raises(UserError, match="n: the number of samples must be at least 1"):
        ebmtool.sample(model, 0)
    with pytest.raises(UserError, match=f"n {10**12}: at most {MAX_SAMPLES:,} samples per call"):
        ebmtool.sample(model, 10**12)
    assert ebmtool.sample(model, 3, seed=0).shape == (3, 1, 8, 8)
