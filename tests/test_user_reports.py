"""Defects a user reported, each reproduced with the user's command line: an absurd ``sample -n``; a model spec
whose parts contradict each other; two training runs writing one output (or one checkpoint); ``-o`` naming an
input file; a garbage ``fid --ref`` file; metadata that contradicts the tensors; help text that Rich ate;
``--precision`` on ``fid`` and ``train-features``; options without help; the metric order after ``--resume``;
the PR curve's AUPRC label."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ebmtool import artifacts

from conftest import run_cli, refused as _refused





def _resave(src: Path, dst: Path, meta_update=None, spec_update=None) -> Path:
    """A copy of an artifact with its meta (or its model spec) changed, tensors as they are."""
    a = artifacts.load(src)
    meta = dict(a.meta, **(meta_update or {}))
    if spec_update:
        meta["model"] = {**meta["model"], **{k: v for k, v in spec_update.items() if not isinstance(v, dict)}}
        for k, v in spec_update.items():
            if isinstance(v, dict):
                meta["model"][k] = {**meta["model"][k], **v}
    artifacts.save(dst, a.kind, a.tensors, config=a.config, meta=meta, parents=a.parents)
    return dst


def _no_temp(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.name.startswith(".") and p.name.endswith(".tmp")]


def _help_text(out: str) -> str:
    """Rich's help as plain words: box characters and metavars (<int>, <text>, ...) dropped, wrapped lines joined."""
    return " ".join(re.sub(r"[│╭╮╰╯─]|<\w+>", " ", out).split())


@pytest.fixture(scope="module")
def features(tmp_path_factory, digits_ds) -> Path:
    out = tmp_path_factory.mktemp("features") / "f.safetensors"
    run_cli(["train-features", "--data", digits_ds, "-o", out, "--epochs", 1, "--device", "cpu", "--quiet"]).ok()
    return out


# ------------------------------------------------------------------------------------------- 1. sample -n
def test_sample_refuses_an_absurd_n_up_front(gen_model, tmp_path):
    out = tmp_path / "s.safetensors"
    r = run_cli(["sample", "--model", gen_model, "-n", "1000000000000", "-o", out])
    _refused(r, "-n 1000000000000", "at most 1,000,000")
    assert not out.exists() and _no_temp(tmp_path) == []


def test_sample_refuses_an_n_the_machine_cannot_hold(gen_model, tmp_path, monkeypatch):
    import os

    monkeypatch.setattr(os, "sysconf", lambda name: {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1000}[name])  # 4 MB
    out = tmp_path / "s.safetensors"
    _refused(run_cli(["sample", "--model", gen_model, "-n", "200000", "-o", out, "--device", "cpu"]),
             "GiB of memory", "smaller -n")
    assert not out.exists()


# ------------------------------------------------------------------------------- 2. prior.nz vs generator.nz
def test_model_whose_prior_nz_differs_from_the_generators_is_refused_on_load(gen_model, digits_ds, tmp_path):
    bad = _resave(gen_model, tmp_path / "bad.safetensors", spec_update={"prior": {"nz": 4}})
    out = tmp_path / "s.safetensors"
    _refused(run_cli(["sample", "--model", bad, "-n", 4, "-o", out, "--device", "cpu"]),
             str(bad), "model spec is invalid: prior.nz is 4 but should be 8")
    _refused(run_cli(["reconstruct", "--model", bad, "--data", digits_ds, "-o", out, "--device", "cpu"]),
             "model spec is invalid: prior.nz")
    assert not out.exists()


# ---------------------------------------------------------------------- 3. two runs, one output / checkpoint
def _appear_after_start(monkeypatch, path: Path, content: bytes) -> None:
    """Another run writes ``path`` once this run has passed its early checks (when it opens --data)."""
    import ebmtool.stages  # noqa: F401  (the name ebmtool.stages.train is the function; the module is in sys.modules)

    stage = sys.modules["ebmtool.stages.train"]
    real = stage.open_training_data

    def opened(*a, **k):
        data = real(*a, **k)
        path.write_bytes(content)
        return data

    monkeypatch.setattr(stage, "open_training_data", opened)


def _pretrain(digits_ds, out: Path, *extra) -> list:
    return ["pretrain-generator", "--data", digits_ds, "-o", out, "--preset", "smoke", "--epochs", 1,
            "--set", "posterior.steps=2", "--device", "cpu", "--quiet", *extra]


def test_a_run_whose_output_appeared_meanwhile_refuses_and_keeps_the_other_runs_file(digits_ds, tmp_path,
                                                                                  monkeypatch):
    out = tmp_path / "same.safetensors"
    _appear_after_start(monkeypatch, out, b"the other run's model")
    _refused(run_cli(_pretrain(digits_ds, out)), str(out), "output appeared while this run was training", "--force")
    assert out.read_bytes() == b"the other run's model" and _no_temp(tmp_path) == []


def test_with_force_the_later_run_overwrites(digits_ds, tmp_path, monkeypatch):
    out = tmp_path / "same.safetensors"
    _appear_after_start(monkeypatch, out, b"the other run's model")
    run_cli(_pretrain(digits_ds, out, "--force")).ok()
    assert artifacts.load(out).kind == "model"


def test_a_checkpoint_written_by_another_run_is_not_overwritten(digits_ds, tmp_path, monkeypatch):
    out = tmp_path / "same.safetensors"
    ck = tmp_path / "same.ckpt.safetensors"
    _appear_after_start(monkeypatch, ck, b"the other run's checkpoint")
    _refused(run_cli(_pretrain(digits_ds, out, "--checkpoint-every", 1)), str(ck),
             "a checkpoint written by another run appeared")
    assert ck.read_bytes() == b"the other run's checkpoint" and not out.exists() and _no_temp(tmp_path) == []


def test_a_run_removes_its_own_checkpoint_only(digits_ds, tmp_path):
    out = tmp_path / "m.safetensors"
    run_cli(_pretrain(digits_ds, out, "--checkpoint-every", 1)).ok()
    assert out.exists() and not (tmp_path / "m.ckpt.safetensors").exists()


# ------------------------------------------------------------------------------------- 4. -o names an input
@pytest.mark.parametrize("case", ["sample-model", "sample-grid-model", "reconstruct-data", "reconstruct-model",
                                  "anomaly-data", "anomaly-model", "fit-prior-data", "fit-prior-init",
                                  "fit-prior-resume", "pretrain-data", "checkpoint-data"])
def test_output_naming_an_input_is_refused_even_with_force(case, gen_model, digits_ds, fresh_copy, tmp_path):
    model, data = fresh_copy(gen_model, "model.safetensors"), fresh_copy(digits_ds, "data.safetensors")
    other = tmp_path / "out.safetensors"
    fit = ["fit-prior", "--method", "mle", "--data", data, "--init", model, "--preset", "smoke", "--device", "cpu",
           "--quiet", "--force"]
    argv, victim, opt = {
        "sample-model": (["sample", "--model", model, "-n", 4, "-o", model, "--force"], model, "--model"),
        "sample-grid-model": (["sample", "--model", model, "-n", 4, "--grid", model, "--force"], model, "--model"),
        "reconstruct-data": (["reconstruct", "--model", model, "--data", data, "-o", data, "--force"], data, "--data"),
        "reconstruct-model": (["reconstruct", "--model", model, "--data", data, "-o", model, "--force"], model,
                              "--model"),
        "anomaly-data": (["anomaly", "--model", model, "--data", data, "--anomaly-class", 3, "-o", data, "--force"],
                         data, "--data"),
        "anomaly-model": (["anomaly", "--model", model, "--data", data, "--anomaly-class", 3, "-o", model, "--force"],
                          model, "--model"),
        "fit-prior-data": (fit + ["-o", data], data, "--data"),
        "fit-prior-init": (fit + ["-o", model], model, "--init"),
        "fit-prior-resume": (fit + ["-o", model.with_name("ck.safetensors"), "--resume",
                                    model.with_name("ck.safetensors")], None, "--resume"),
        "pretrain-data": (["pretrain-generator", "--data", data, "-o", data, "--preset", "smoke", "--force"], data,
                          "--data"),
        "checkpoint-data": (fit + ["-o", other, "--checkpoint", data], data, "--data"),
    }[case]
    if victim is None:  # the file to be resumed
        victim = fresh_copy(gen_model, "ck.safetensors")
    before = victim.read_bytes()
    _refused(run_cli(argv), "must differ from the input file", f"({opt} ")
    assert victim.read_bytes() == before and not other.exists() and _no_temp(tmp_path) == []


def test_output_naming_an_input_through_another_path_is_refused(gen_model, fresh_copy, tmp_path):
    model = fresh_copy(gen_model, "model.safetensors")
    (tmp_path / "sub").mkdir()
    before = model.read_bytes()
    _refused(run_cli(["sample", "--model", model, "-n", 4, "-o", tmp_path / "sub" / ".." / "model.safetensors",
                      "--force"]), "must differ from the input file")
    assert model.read_bytes() == before


# --------------------------------------------------------------------------------------- 5. fid --ref garbage
def test_fid_ref_that_is_not_an_npz_says_so(digits_ds, features, tmp_path):
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"this is not a statistics file\n" * 10)
    line = _refused(run_cli(["fid", "--samples", digits_ds, "--ref", garbage, "--features", features, "--device", "cpu",
                             "--cache-dir", tmp_path / "cache"]), str(garbage), "is not a .npz statistics file (")
    assert "pickle" not in line


def test_fid_ref_npz_with_python_objects_says_so(digits_ds, features, tmp_path):
    objects = tmp_path / "objects.npz"
    np.savez(objects, mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(2))
    line = _refused(run_cli(["fid", "--samples", digits_ds, "--ref", objects, "--features", features, "--device",
                             "cpu"]), "is not a .npz statistics file (")
    assert "allow_pickle" not in line


# ----------------------------------------------------------------------------- 6. metadata against tensors
@pytest.mark.parametrize("meta, words", [
    ({"image_shape": [3, 64, 64]}, ["meta image_shape [3, 64, 64]", "1 x 8 x 8"]),
    ({"n": 1e9}, ["meta n = 1000000000.0", "192 images"]),
    ({"n": "192"}, ["meta n = \"192\""]),
], ids=["image_shape", "n-float", "n-string"])
def test_dataset_meta_that_contradicts_its_images_is_refused(meta, words, digits_ds, mle_model, tmp_path):
    bad = _resave(digits_ds, tmp_path / "bad.safetensors", meta_update=meta)
    _refused(run_cli(["inspect", bad]), str(bad), *words)
    out = tmp_path / "r.safetensors"
    _refused(run_cli(["reconstruct", "--model", mle_model, "--data", bad, "-o", out, "--device", "cpu"]), *words)
    assert not out.exists()


@pytest.mark.parametrize("spec, words", [
    ({"image_shape": "x"}, ["meta model.image_shape \"x\" is not [channels, height, width]"]),
    ({"image_shape": [1, 9, 9]}, ["contradicts the model spec's image_shape [1, 9, 9]"]),
], ids=["string", "other-size"])
def test_model_image_shape_that_is_not_a_shape_is_refused(spec, words, gen_model, tmp_path):
    bad = _resave(gen_model, tmp_path / "bad.safetensors", spec_update=spec)
    _refused(run_cli(["inspect", bad]), str(bad), *words)
    out = tmp_path / "s.safetensors"
    _refused(run_cli(["sample", "--model", bad, "-n", 4, "-o", out, "--device", "cpu"]), *words)
    assert not out.exists()


def test_model_spec_whose_image_shape_the_generator_does_not_make_is_refused(gen_model, tmp_path):
    bad = _resave(gen_model, tmp_path / "bad.safetensors", meta_update={"image_shape": [1, 9, 9]},
                  spec_update={"image_shape": [1, 9, 9]})
    _refused(run_cli(["sample", "--model", bad, "-n", 4, "--grid", tmp_path / "g.png", "--device", "cpu"]),
             "model spec is invalid: the digits8 generator's image size is 8 but should be 9")


# --------------------------------------------------------------------------------- 7. [tensorboard] in help
@pytest.mark.parametrize("command", ["fit-prior", "pretrain-generator", "train-features"])
def test_help_shows_the_tensorboard_extra(command):
    text = _help_text(run_cli([command, "--help"]).ok().out)
    assert "pip install -e '.[tensorboard]'" in text, text


# ------------------------------------------------------------------------------ 8. fid / train-features --precision
def test_fid_honours_precision(digits_ds, features, tmp_path, monkeypatch):
    from ebmtool.eval import fid as F

    seen = []
    real = F.compute_statistics

    def spy(*a, **k):
        seen.append(torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16)
        return real(*a, **k)

    monkeypatch.setattr(F, "compute_statistics", spy)
    argv = ["fid", "--samples", digits_ds, "--ref", digits_ds, "--features", features, "--device", "cpu", "--json",
            "--cache-dir", tmp_path / "cache"]
    exact = json.loads(run_cli(argv).ok().out)
    assert exact["precision"] == "fp32" and seen == [False, False]
    seen.clear()
    r = run_cli(argv + ["--precision", "bf16"]).ok()
    res = json.loads(r.out)
    assert res["precision"] == "bf16" and seen == [True, True] and "precision bf16" in res["protocol"]
    assert (tmp_path / "cache" / "bf16").is_dir()  # bf16 reference statistics are cached apart
    _refused(run_cli(argv + ["--precision", "tf32"]), "--precision tf32")
    _refused(run_cli(argv + ["--precision", "fp8"]), "--precision: unknown precision 'fp8'")


def test_train_features_honours_precision(digits_ds, tmp_path, monkeypatch):
    from ebmtool.eval import feature_training

    seen = []
    real = feature_training.F.cross_entropy

    def spy(*a, **k):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real(*a, **k)

    monkeypatch.setattr(feature_training.F, "cross_entropy", spy)
    out = tmp_path / "f.safetensors"
    r = run_cli(["train-features", "--data", digits_ds, "-o", out, "--epochs", 1, "--device", "cpu", "--json",
                 "--precision", "bf16"]).ok()
    assert json.loads(r.out)["precision"] == "bf16" and seen and all(seen)
    assert artifacts.load(out).meta["precision"] == "bf16"
    _refused(run_cli(["train-features", "--data", digits_ds, "-o", tmp_path / "g.safetensors", "--device", "cpu",
                      "--precision", "fp16"]), "--precision fp16")
    assert not (tmp_path / "g.safetensors").exists()


# ------------------------------------------------------------------------------------- 9. options with help
@pytest.mark.parametrize("command, phrases", [
    ("fit-prior", ["--epochs passes over the data", "--batch-size images per optimiser step"]),
    ("pretrain-generator", ["--epochs passes over the data", "--batch-size images per optimiser step"]),
    ("sample", ["--seed random seed", "--device auto (CUDA if available"]),
    ("reconstruct", ["--seed random seed", "--device auto (CUDA if available"]),
    ("anomaly", ["--seed random seed", "--device auto (CUDA if available"]),
    ("fid", ["--device auto (CUDA if available", "--precision fp32"]),
    ("train-features", ["--seed random seed", "--device auto (CUDA if available",
                        "--precision fp32"]),
])
def test_options_have_help(command, phrases):
    text = _help_text(run_cli([command, "--help"]).ok().out)
    for p in phrases:
        assert p in text, (p, text)


# ------------------------------------------------------------------------------ 10. metric order after --resume
def _epoch_lines(err: str) -> list[list[str]]:
    return [re.findall(r"(\w+)=", ln) for ln in err.splitlines() if "] epoch " in ln]


def test_resumed_run_logs_metrics_in_the_runs_order(gen_model, digits_ds, tmp_path, monkeypatch):
    from ebmtool.checkpoint import Checkpointer

    def fit(out, *extra):
        return ["fit-prior", "--method", "mle", "--data", digits_ds, "--init", gen_model, "--preset", "smoke",
                "--epochs", 2, "--batch-size", 96, "--set", "prior.steps=2", "--set", "posterior.steps=2",
                "--device", "cpu", "-o", out, *extra]

    fresh = run_cli(fit(tmp_path / "fresh.safetensors")).ok()
    order = _epoch_lines(fresh.err)[-1]
    assert order != sorted(order), order  # mle's order (loss_g before loss_e) is not alphabetical

    def interrupted_at_once(self):  # as if Ctrl-C arrived during the first iteration
        self.interrupted = 2
        return {}

    out = tmp_path / "run.safetensors"
    with monkeypatch.context() as m:
        m.setattr(Checkpointer, "install_signal_handlers", interrupted_at_once)
        r = run_cli(fit(out))
    assert r.code == 130, r.err
    ck = tmp_path / "run.ckpt.safetensors"
    resumed = run_cli(fit(out, "--resume", ck)).ok()
    lines = _epoch_lines(resumed.err)
    assert lines and all(ln == order for ln in lines), (lines, order)


# ----------------------------------------------------------------------------------- 11. the PR curve's label
def test_pr_curve_labels_the_tables_auprc_and_names_average_precision(mle_model, digits_ds, tmp_path, monkeypatch):
    from ebmtool.eval import plots

    figs = []
    real = plots.save_figure
    monkeypatch.setattr(plots, "save_figure", lambda fig, path, **kw: (figs.append(fig), real(fig, path, **kw))[1])
    png = tmp_path / "pr.png"
    r = run_cli(["anomaly", "--model", mle_model, "--data", digits_ds, "--anomaly-class", 3, "--steps", 2,
                 "--pr-curve", png, "--json", "--device", "cpu", "--quiet"]).ok()
    res = json.loads(r.out)
    labels = [t.get_text() for t in figs[0].axes[0].get_legend().get_texts()]
    score = [lb for lb in labels if lb.startswith("score")]
    assert score == [f"score (AUPRC {res['auprc']:.3f}, average precision {res['average_precision']:.3f})"], labels
    assert png.exists()


# ------------------------------------------------------------------- two outputs of one command, one path
@pytest.mark.parametrize("argv", [
    ["sample", "--model", "{gen}", "-n", "4", "-o", "{o}", "--grid", "{o}"],
    ["reconstruct", "--model", "{gen}", "--data", "{data}", "-o", "{o}", "--grid", "{o}"],
    ["anomaly", "--model", "{gen}", "--data", "{data}", "--anomaly-class", "1", "-o", "{o}", "--pr-curve", "{o}"],
    ["pretrain-generator", "--data", "{data}", "--preset", "smoke", "--epochs", "1", "-o", "{o}", "--snapshots", "{o}"],
])
def test_two_outputs_of_one_command_on_one_path_are_refused_before_work(argv, gen_model, digits_ds, tmp_path):
    """The second output written would replace the first (a safetensors artifact overwritten by a PNG, exit 0), or a
    snapshot folder would take the model's path after the whole training: refused up front, nothing written."""
    out = tmp_path / "o.png"  # a figure's extension, so that the figure outputs reach the check
    r = run_cli([a.format(gen=gen_model, data=digits_ds, o=out) for a in argv])
    _refused(r, str(out), "must differ from the other output")
    assert not out.exists() and _no_temp(tmp_path) == []


@pytest.mark.parametrize("cmd", ["sample", "reconstruct"])
def test_scale_without_a_grid_is_refused(cmd, gen_model, digits_ds, tmp_path):
    out = tmp_path / "o.safetensors"
    argv = [cmd, "--model", gen_model, "-o", out, "--scale", "2"] + (
        ["-n", "4"] if cmd == "sample" else ["--data", digits_ds])
    _refused(run_cli(argv), "--scale", "--grid")
    assert not out.exists()


def test_plot_scale_of_a_figure_that_is_not_an_image_grid_is_refused(gen_model, tmp_path):
    out = tmp_path / "p.png"
    _refused(run_cli(["plot", gen_model, "-o", out, "--scale", "4"]), "--scale", "training curves")
    assert not out.exists()
    run_cli(["plot", gen_model, "-o", out]).ok()  # without it the curves are drawn
