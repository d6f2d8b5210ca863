"""--tensorboard on the training commands: an event file TensorBoard reads back with the expected tags (skipped
when the tensorboard extra is not installed), the same model with and without it, one line without the package."""

from __future__ import annotations

import sys

import pytest
import torch
from safetensors.torch import load_file

from conftest import run_cli


def _tags(logdir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logdir), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


def test_fit_prior_writes_scalars_and_sample_grid(tmp_path, digits_ds, gen_model):
    pytest.importorskip("tensorboard")
    tb = tmp_path / "tb"
    common = ["fit-prior", "--method", "mle", "--preset", "smoke", "--epochs", "2", "--set", "posterior.steps=3",
              "--set", "prior.steps=3", "--data", str(digits_ds), "--init", str(gen_model), "--device", "cpu", "-q"]
    run_cli(common + ["-o", str(tmp_path / "a.safetensors"), "--tensorboard", str(tb)]).ok()
    assert list(tb.glob("events.out.tfevents.*")), list(tb.iterdir())
    acc = _tags(tb)
    scalars = set(acc.Tags()["scalars"])
    assert {"mle/loss_g", "mle/loss_e", "mle/wall_time_s"} <= scalars, scalars
    assert [e.step for e in acc.Scalars("mle/loss_g")] == [1, 2]
    # the scalars are the per-epoch means stored in the model's history
    hist = load_file(str(tmp_path / "a.safetensors"))["history.loss_g"].tolist()
    assert [e.value for e in acc.Scalars("mle/loss_g")] == pytest.approx(hist, rel=1e-5)
    assert acc.Tags()["images"] == ["mle/samples"]
    imgs = acc.Images("mle/samples")
    assert [i.step for i in imgs] == [1, 2] and imgs[0].width >= 256 and imgs[0].height >= 256
    # logging draws from its own RNG: the same model as without the flag
    run_cli(common + ["-o", str(tmp_path / "b.safetensors")]).ok()
    a, b = load_file(str(tmp_path / "a.safetensors")), load_file(str(tmp_path / "b.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_adaptive_nce_stages_continue_the_epoch_axis(tmp_path, digits_ds, gen_model):
    pytest.importorskip("tensorboard")
    tb = tmp_path / "tb"
    run_cli(["fit-prior", "--method", "adaptive-nce", "--preset", "smoke", "--stages", "2", "--epochs-per-stage", "1",
             "--set", "posterior.steps=3", "--data", str(digits_ds), "--init", str(gen_model), "--device", "cpu",
             "-q", "-o", str(tmp_path / "m.safetensors"), "--tensorboard", str(tb)]).ok()
    acc = _tags(tb)
    scalars = set(acc.Tags()["scalars"])
    # stages counted from 1, as the progress lines and plots count them
    assert {"adaptive-nce_stage_1/nce", "adaptive-nce_stage_2/nce", "adaptive-nce_stage_2/log_r_pos"} <= scalars, scalars
    assert [e.step for e in acc.Scalars("adaptive-nce_stage_1/nce")] == [1]
    assert [e.step for e in acc.Scalars("adaptive-nce_stage_2/nce")] == [2]


def test_pretrain_generator_takes_the_flag(tmp_path, digits_ds):
    pytest.importorskip("tensorboard")
    tb = tmp_path / "tb"
    run_cli(["pretrain-generator", "--preset", "smoke", "--epochs", "1", "--set", "posterior.steps=3", "--data",
             str(digits_ds), "--device", "cpu", "-q", "-o", str(tmp_path / "g.safetensors"),
             "--tensorboard", str(tb)]).ok()
    acc = _tags(tb)
    assert "pretrain/wall_time_s" in acc.Tags()["scalars"] and acc.Tags()["images"] == ["pretrain/samples"]


def test_without_the_package_one_line(tmp_path, digits_ds, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # import tensorboard -> ImportError
    r = run_cli(["pretrain-generator", "--preset", "smoke", "--data", str(digits_ds), "--device", "cpu", "-q",
                 "-o", str(tmp_path / "g.safetensors"), "--tensorboard", str(tmp_path / "tb")])
    assert r.code == 2 and len(r.err_lines) == 1, r.err
    assert "tensorboard package is not installed" in r.err and ".[tensorboard]" in r.err
    assert "Traceback" not in r.err
    assert not (tmp_path / "g.safetensors").exists() and not (tmp_path / "tb").exists()


def test_train_features_logs_loss_and_validation_accuracy(tmp_path, digits_ds):
    pytest.importorskip("tensorboard")
    import json

    tb = tmp_path / "tb"
    r = run_cli(["train-features", "--data", str(digits_ds), "--epochs", "3", "--patience", "5", "--device", "cpu",
                 "-q", "--json", "-o", str(tmp_path / "f.safetensors"), "--tensorboard", str(tb)]).ok()
    res = json.loads(r.out)
    acc = _tags(tb)
    assert {"train-features/loss", "train-features/val_accuracy"} <= set(acc.Tags()["scalars"])
    assert acc.Tags()["images"] == []  # a classifier: no sample grid
    assert [e.step for e in acc.Scalars("train-features/loss")] == [1, 2, 3]
    losses = [e.value for e in acc.Scalars("train-features/loss")]
    assert all(0 < v < 10 for v in losses) and losses[-1] < losses[0]  # cross-entropy of 10 classes, decreasing
    val = [e.value for e in acc.Scalars("train-features/val_accuracy")]
    assert len(val) == 3 and all(0 <= v <= 1 for v in val)
    # the kept epoch is the best logged one
    assert max(val) == pytest.approx(res["val_accuracy"]) and val[res["best_epoch"] - 1] == pytest.approx(max(val))
