"""The Python API validates as the CLI does (issue 33 §5): every public function, called with each wrong value a
user may pass, raises :class:`~ebmtool.errors.UserError` with one line (never a ValueError, TypeError, IndexError
or pydantic's ValidationError), and the values the CLI refuses are refused here through the same check
(:func:`ebmtool.config.check_options`), not run silently. All calls run in this process: no CLI start."""

from __future__ import annotations

import math

import pytest
import torch

import ebmtool
import ebmtool.stages
from ebmtool import stages
from ebmtool.config import MAX_SEED, MAX_STEP_SIZE
from ebmtool.data import DataConfig
from ebmtool.errors import UserError

# (keyword, value) pairs every chain-running call refuses: wrong types, out of range, and the values that used to
# run silently (steps=0, step_size=0 or -1, noise="no", sampler="bogus", n=2.5)
CHAIN_BAD = [
    ("steps", 0), ("steps", -3), ("steps", 2.5), ("steps", True), ("steps", "5"),
    ("step_size", 0), ("step_size", -1), ("step_size", 1e30), ("step_size", math.inf), ("step_size", math.nan),
    ("step_size", MAX_STEP_SIZE * 2), ("step_size", "0.1"), ("step_size", True),
    ("seed", 2**70), ("seed", -1), ("seed", MAX_SEED + 1), ("seed", 1.5), ("seed", "0"),
    ("batch_size", 0), ("batch_size", -1), ("batch_size", 2.5), ("batch_size", None),
    ("precision", 32), ("precision", "fp64"),
]
POSTERIOR_BAD = CHAIN_BAD + [("noise", "no"), ("noise", 0), ("noise", 1)]
SAMPLE_BAD = CHAIN_BAD + [("sampler", "bogus"), ("sampler", 1)]


@pytest.fixture(scope="module")
def models(gen_model, nce_model, mle_model):
    return {"gen": ebmtool.load_model(gen_model), "nce": ebmtool.load_model(nce_model),
            "mle": ebmtool.load_model(mle_model)}


@pytest.fixture(scope="module")
def images():
    return torch.randint(0, 256, (6, 1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


@pytest.mark.parametrize("key,value", SAMPLE_BAD, ids=[f"{k}={v!r}" for k, v in SAMPLE_BAD])
def test_sample_refuses(models, key, value):
    with pytest.raises(UserError) as e:
        ebmtool.sample(models["mle"], 4, **{key: value})
    assert _one_line(e).startswith(key)


@pytest.mark.parametrize("key,value", POSTERIOR_BAD, ids=[f"{k}={v!r}" for k, v in POSTERIOR_BAD])
def test_reconstruct_and_score_refuse(models, images, key, value):
    for fn in (ebmtool.reconstruct, ebmtool.score):
        with pytest.raises(UserError) as e:
            fn(models["mle"], images, **{key: value})
        assert _one_line(e).startswith(key), fn.__name__


@pytest.mark.parametrize("n", [0, -1, 2.5, "4", True, None, 10**12])
def test_sample_refuses_n(models, n):
    with pytest.raises(UserError) as e:
        ebmtool.sample(models["gen"], n)
    assert _one_line(e).startswith("n")


def test_wrong_argument_types_are_user_errors(models, images, tmp_path):
    m = models["mle"]
    calls = [
        lambda: ebmtool.sample("mle.safetensors", 4),
        lambda: ebmtool.sample(None, 4),
        lambda: ebmtool.reconstruct(m, [[1, 2]]),
        lambda: ebmtool.reconstruct(m, images[:, :, :4]),
        lambda: ebmtool.score(m, images, kind=3),
        lambda: ebmtool.score(m, images, kind=["joint"]),
        lambda: ebmtool.score(m, images, kind="bogus"),
        lambda: ebmtool.score(m, images, calibration="cal.safetensors", kind="typicality"),
        lambda: ebmtool.score("m", images),
        lambda: ebmtool.load_model(42),
        lambda: ebmtool.load_model(tmp_path / "missing.safetensors", device=0),
        lambda: ebmtool.sample(m, 4, sampler="sir", steps=3),
        lambda: ebmtool.fit_prior("mle", images, preset="smoke", overrides={"epochs": True}),
        lambda: ebmtool.fit_prior("mle", images, preset="smoke", overrides={"sigma": math.inf}),
        lambda: ebmtool.fit_prior("mle", images, preset="smoke", overrides={"opt_g.lr": float("inf")}),
        lambda: ebmtool.fit_prior("mle", images, preset="smoke", overrides={"energy.hidden": 1e14}),
        lambda: ebmtool.fit_prior("mle", images, preset="smoke", overrides={"generator.nz": 2**63 - 1}),
        lambda: ebmtool.fit_prior("mle", images, preset="smoke", overrides={"seed": 2**70}),
        lambda: ebmtool.fit_prior(3, images),
        lambda: ebmtool.fit_prior(["mle"], images),
        lambda: ebmtool.fit_prior("mle", images, preset=5),
        lambda: ebmtool.fit_prior("mle", images, preset="smoke", overrides=[("epochs", 1)]),
        lambda: ebmtool.fit_prior("mle", images, preset="smoke", overrides={"epochs": 1}, out=5),
        lambda: ebmtool.fit_prior("mle", images, preset="smoke", overrides={"epochs": 1}, force="yes"),
        lambda: ebmtool.stages.train_features(str(tmp_path / "d.safetensors"), str(tmp_path / "f.safetensors"),
                                              seed=2**70),
    ]
    for i, call in enumerate(calls):
        with pytest.raises(UserError) as e:
            call()
        assert _one_line(e), i


def test_a_config_made_directly_raises_a_user_error(tmp_path):
    """``stages.data_prepare(DataConfig(dataset="imagenet"), ...)``: the config refuses it where it is made, in the
    one line of the CLI (no pydantic ValidationError), and so does an assignment."""
    with pytest.raises(UserError, match=r"^DataConfig: dataset: Input should be 'digits'"):
        stages.data_prepare(DataConfig(dataset="imagenet"), str(tmp_path / "d.safetensors"))
    with pytest.raises(UserError, match=r"^DataConfig: limit: Input should be a valid integer \(got True\)"):
        DataConfig(dataset="digits", limit=True)
    cfg = DataConfig(dataset="digits")
    with pytest.raises(UserError, match=r"^DataConfig: limit: Input should be greater than or equal to 1"):
        cfg.limit = -5
    with pytest.raises(UserError, match="expected a DataConfig"):
        stages.data_prepare({"dataset": "digits"}, str(tmp_path / "d.safetensors"))
    assert not (tmp_path / "d.safetensors").exists()


def test_stage_functions_share_the_check(gen_model, digits_ds, tmp_path):
    """``stages.reconstruct(limit=-5)`` used to drop the last 5 images; the stage functions run the CLI's check."""
    out = str(tmp_path / "r.safetensors")
    for kw, opt in (({"limit": -5}, "--limit -5"), ({"limit": 0}, "--limit 0"), ({"steps": 0}, "--steps 0"),
                    ({"step_size": -1.0}, "--step-size -1.0"), ({"batch_size": 0}, "--batch-size 0"),
                    ({"noise": "no"}, "--noise/--no-noise"), ({"seed": 2**70}, "--seed")):
        with pytest.raises(UserError, match="^" + opt.replace("-", r"\-").replace("/", "/")):
            stages.reconstruct(str(gen_model), str(digits_ds), out=out, device="cpu", quiet=True, **kw)
    with pytest.raises(UserError, match="^--sampler: unknown sampler 'bogus'"):
        stages.sample(str(gen_model), 4, out=out, sampler="bogus", device="cpu", quiet=True)
    with pytest.raises(UserError, match=r"^-n: expected a whole number, got 2.5"):
        stages.sample(str(gen_model), 2.5, out=out, device="cpu", quiet=True)
    assert not (tmp_path / "r.safetensors").exists()


def test_inference_mode_and_no_grad_work(models, images):
    """A call inside ``torch.inference_mode()`` (or ``no_grad``) runs its Langevin chains (they need grad_z) and
    returns what it returns outside."""
    for name in ("mle", "nce"):
        m = models[name]
        ref = ebmtool.sample(m, 3, seed=1)
        with torch.inference_mode():
            got = ebmtool.sample(m, 3, seed=1)
            rec = ebmtool.reconstruct(m, images.float() / 127.5 - 1, seed=2)
            sc, _ = ebmtool.score(m, images, seed=3)
        assert torch.equal(ref, got)
        assert torch.equal(rec, ebmtool.reconstruct(m, images, seed=2))
        assert torch.equal(sc, ebmtool.score(m, images, seed=3)[0])
        with torch.no_grad():
            assert torch.equal(ebmtool.sample(m, 3, seed=1), ref)


def test_a_model_not_in_float32_is_refused(mle_model, images):
    for cast in (torch.nn.Module.double, torch.nn.Module.half):
        m = cast(ebmtool.load_model(mle_model))
        for call in (lambda: ebmtool.sample(m, 2), lambda: ebmtool.reconstruct(m, images),
                     lambda: ebmtool.score(m, images)):
            with pytest.raises(UserError, match=r"^model: its parameters are float(64|16); .*model.float\(\)"):
                call()
    assert ebmtool.sample(ebmtool.load_model(mle_model).double().float(), 2, seed=0).shape == (2, 1, 8, 8)


def test_honoured_values(models, images):
    """What is accepted is honoured: n as asked, noise=False runs the noise-free chain (deterministic), an int
    step size is a number."""
    m = models["mle"]
    assert ebmtool.sample(m, 3, seed=0, step_size=1).shape == (3, 1, 8, 8)
    a = ebmtool.reconstruct(m, images, noise=False, seed=0)
    assert torch.equal(a, ebmtool.reconstruct(m, images, noise=False, seed=0))
    assert not torch.equal(a, ebmtool.reconstruct(m, images, noise=True, seed=0))
