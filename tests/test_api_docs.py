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
                   "precision='fp32', value_range=None)",
    "score": "(model, images, *, kind='joint', calibration=None, steps=None, step_size=None, noise=None, seed=None, "
             "batch_size=500, precision='fp32', value_range=None)",
    "fit_prior": "(method, data, labels=None, *, init=None, preset=None, overrides=None, out=None, force=False, "
                 "quiet=True, value_range=None)",
    "pretrain": "(data, labels=None, *, init=None, preset=None, overrides=None, out=None, force=False, quiet=True, "
                "value_range=None)",
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
    t0 = time.process_time()  # CPU time of this process (the examples run in it): not inflated by other busy processes
    for line, code in blocks:
        exec(compile("\n" * (line - 1) + code, str(DOC), "exec"), namespace)  # noqa: S102 - the docs' own examples
    assert time.process_time() - t0 < 120, "the docs' examples must stay quick (preset smoke, digits)"
    out = capsys.readouterr().out
    for shown in ("mle (1, 8, 8)", "adaptive-nce 1", "200 [1, 16, 16]", "mle energy", "general (1, 16, 16)",
                  "data: float images in [0, 1] (0..1) may be torchvision's ToTensor range or a part of [-1, 1]: "):
        assert shown in out, shown  # the outputs the page shows in comments
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
    with pytest.raises(UserError, match="labels: give them with image tensors or arrays only"):
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


def test_models_and_data_in_every_form(tmp_path):
    """issue 32 §4: ``init`` takes a model object (it raised TypeError: expected str, bytes or os.PathLike object,
    not LatentModel), data a tensor, a NumPy array, a Dataset (items image or (image, label)) or a DataLoader; the
    same images in each form train the same model, and the caller's init object is not modified."""
    import torch
    from torch.utils.data import DataLoader, TensorDataset

    import ebmtool
    from ebmtool import artifacts

    x = torch.randint(0, 256, (24, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    y = torch.arange(24) % 3
    kw = {"preset": "smoke", "overrides": {"epochs": 1, "batch_size": 8, "posterior.steps": 3, "prior.steps": 3}}
    gen = ebmtool.pretrain(x, y, preset="smoke", overrides={"epochs": 1, "batch_size": 8})
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    forms = {"tensor": (x, y), "array": (x.numpy(), y.numpy()), "dataset": (TensorDataset(x, y), None),
             "loader": (DataLoader(TensorDataset(x, y), batch_size=5), None)}
    weights = {}
    for name, (data, labels) in forms.items():
        model = ebmtool.fit_prior("mle", data, labels, init=gen, **kw)
        weights[name] = torch.cat([p.detach().flatten() for p in model.parameters()])
    for name in forms:
        torch.testing.assert_close(weights[name], weights["tensor"], msg=name)
    assert all(torch.equal(v, gen.state_dict()[k]) for k, v in before.items())
    unit = ebmtool.fit_prior("mle", TensorDataset(x.float() / 255, y), init=gen, value_range=(0, 1), **kw)
    assert unit.method == "mle"
    out = tmp_path / "m.safetensors"
    ebmtool.fit_prior("mle", TensorDataset(x), init=gen, out=out, **kw)  # items without labels
    (data_parent, init_parent) = artifacts.load(out).parents
    assert init_parent["in_memory"] and init_parent["path"] is None and init_parent["kind"] == "model"
    scores, _ = ebmtool.score(str(out), DataLoader(TensorDataset(x, y), batch_size=7), seed=0)
    assert scores.shape == (24,)


@pytest.mark.parametrize("call, message", [
    (lambda e, x, m: e.fit_prior("mle", x, init=3), "init: expected a model (ebmtool.load_model, ebmtool.fit_prior) "
                                                     "or a model artifact's path, not int"),
    (lambda e, x, m: e.fit_prior("mle", [x]), "data: images must be a torch tensor or a NumPy array, not list"),
    (lambda e, x, m: e.pretrain(x.float() / 255), "data: float images in [0, 1] (0..1) may be torchvision's ToTensor "
                                                  "range or a part of [-1, 1]: state it (value_range=(0, 1), or value_range=(-1, 1))"
                                                  " or convert them: x * 2 - 1 gives [-1, 1]"),
    (lambda e, x, m: e.pretrain(x.float()), "data: float images must lie in [-1, 1] (found 0..255); state their range "
                                            "(value_range=(0, 255)) or convert them: x / 127.5 - 1"),
    (lambda e, x, m: e.pretrain(x.float() / 255, value_range=(0, 0.5)), "data: float images lie in 0..1, outside the "
                                                                         "stated value_range [0, 0.5]"),
    (lambda e, x, m: e.pretrain(x, value_range=(0, 1)), "data: uint8 images are read in [0, 255]; value_range (0, 1) "
                                                        "is for float images"),
    (lambda e, x, m: e.pretrain(x.permute(0, 2, 3, 1).numpy()), "look channels-last (N x H x W x C, as NumPy and PIL "
                                                                "give them); ebmtool takes N x C x H x W"),
    (lambda e, x, m: e.pretrain(x[:, 0]), "images must be N x C x H x W, got shape (12, 8, 8) (one channel: add the "
                                          "channel axis, x[:, None])"),
    (lambda e, x, m: e.score(7, x), "model: expected a model (ebmtool.load_model, ebmtool.fit_prior) or a model "
                                    "artifact's path, not int"),
    (lambda e, x, m: e.score(m, x.float() / 255), "images: float images in [0, 1]"),
    (lambda e, x, m: e.reconstruct(m, {"x": x}), "images: images must be a torch tensor or a NumPy array, not dict"),
])
def test_wrong_types_and_ranges_are_one_user_error(call, message):
    import torch

    import ebmtool
    from ebmtool.errors import UserError

    x = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x[0, 0, 0, 0], x[0, 0, 0, 1] = 0, 255
    with pytest.raises(UserError) as e:
        call(ebmtool, x, _tiny_model())
    assert message in str(e.value) and "\n" not in str(e.value)


_MODEL: list = []


def _tiny_model():
    import torch

    import ebmtool

    if not _MODEL:
        x = torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8)
        _MODEL.append(ebmtool.pretrain(x, preset="smoke", overrides={"epochs": 1}))
    return _MODEL[0]


def test_an_nce_model_object_as_init_says_where_its_memory_is():
    import torch

    import ebmtool
    from ebmtool.errors import UserError

    x = torch.randint(0, 256, (12, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(2))
    kw = {"preset": "smoke", "overrides": {"stages": 1, "posterior.steps": 3}}
    nce = ebmtool.fit_prior("adaptive-nce", x, init=_tiny_model(), **kw)
    with pytest.raises(UserError, match=r"init <LatentModel object>: a model object carries no memory of posterior "
                                        r"samples; give init its artifact's path"):
        ebmtool.fit_prior("adaptive-nce", x, init=nce, **kw)
    more = ebmtool.fit_prior("adaptive-nce", x, init=nce, preset="smoke",
                             overrides={"stages": 1, "posterior.steps": 3, "prior_sampler": "langevin"})
    assert len(more.prior.stages) == 2 and len(nce.prior.stages) == 1  # the object passed in is unchanged
