"""benchmarks/anomaly.py's own behaviour, without its long runs: an interrupted training ends in the one-line
resume hint, a diverged cell is recorded as a row and the sweep goes on, the budgets stay consistent, and each
protocol keeps the result files and model names of the runs it resumes."""

from __future__ import annotations

import sys

import pytest

import benchmarks.anomaly as B
from benchmarks.bench_csv import read
from conftest import SHARED_MNIST
from ebmtool.errors import DivergenceError
from ebmtool.training import Interrupted


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(B, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(B, "MNIST", SHARED_MNIST)
    if not any(SHARED_MNIST.glob("train-images*")):
        pytest.skip("needs the four MNIST files ($MNIST_ROOT)")
    yield tmp_path
    B.use("v3")


def test_sigterm_in_training_ends_in_one_line(bench, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise Interrupted(5, "X.ckpt.safetensors")

    monkeypatch.setattr(B, "run_cell", interrupted)
    monkeypatch.setattr(sys, "argv", ["anomaly.py", "--digits", "1", "--methods", "mle"])
    with pytest.raises(SystemExit) as e:
        B.main()
    msg = capsys.readouterr().err.strip()
    assert e.value.code == 1 and "\n" not in msg
    assert "interrupted at iteration 5" in msg and "run the same command again" in msg
    assert "X.ckpt.safetensors" in msg and "--resume" not in msg  # the benchmark has no --resume: it resumes itself


def test_a_diverged_cell_is_a_row_and_the_sweep_goes_on(bench, monkeypatch):
    calls = []

    def cell(m, digit, seed, prec, cpu):
        calls.append(m)
        if m == "mle":
            raise DivergenceError("posterior Langevin: latents became non-finite after 20 steps")
        return {"protocol": "v3", "method": m, "digit": digit, "seed": seed, "precision": prec, "auprc_joint": "0.5"}

    monkeypatch.setattr(B, "run_cell", cell)
    monkeypatch.setattr(sys, "argv", ["anomaly.py", "--digits", "1", "--methods", "mle", "pca"])
    B.main()
    assert B.RESULTS == bench / "anomaly_mnist_v3.csv"
    rows = read(B.RESULTS)
    assert calls == ["mle", "pca"] and [r["method"] for r in rows] == ["mle", "pca"]
    assert rows[0]["budget"].startswith("diverged: posterior Langevin") and not rows[0]["auprc_joint"]
    B.main()  # a rerun skips both: the divergence is a result
    assert calls == ["mle", "pca"]


def test_paper_budget_is_consistent_and_refused_on_a_cpu(bench, capsys):
    with pytest.raises(SystemExit) as e:
        B.main(["--budget", "paper"])
    assert e.value.code == 2 and "--device cuda" in capsys.readouterr().err
    assert B.BUDGET["pretrain"]["epochs"] + B.BUDGET["pretrain-matched"]["epochs"] == B.BUDGET["mle"]["epochs"] == 154
    assert B.BUDGET["pretrain"]["epochs"] + B.STAGES * B.BUDGET["adaptive-nce"]["epochs_per_stage"] == B.EPOCHS
    assert B.RESULTS.name == "anomaly_mnist_v3_paper.csv" and B.CURVE.name == "anomaly_mnist_v3_curve_paper.csv"
    B.use("v3")
    assert B.BUDGET["mle"]["epochs"] == 8 and B.PROTOCOLS["v3"].budget["mle"]["epochs"] == 8  # the table is intact


@pytest.mark.parametrize("argv, says", [
    (["--protocol", "v2", "--methods", "vae"], "--methods: vae is not a row of protocol v2"),
    (["--protocol", "v2", "--budget", "paper"], "--budget paper: the v2 protocol has one budget"),
    (["--protocol", "standard", "--practices"], "--practices: protocol standard has no second-permutation"),
    (["--nce-stats"], "--nce-stats: v2 only"),
    (["--protocol", "v2", "--nce-stats"], "--nce-stats: no adaptive-NCE stage model under")])
def test_an_option_a_protocol_has_not_is_refused_in_one_line(argv, says, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(B, "RESULTS_DIR", tmp_path)
    monkeypatch.setattr(B, "RUNS", tmp_path / "runs")
    (tmp_path / "anomaly_mnist_v2.csv").write_text("protocol,method,digit,seed,precision\nv2,adaptive-nce,1,0,bf16\n")
    with pytest.raises(SystemExit) as e:
        B.main(argv)
    B.use("v3")
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.startswith(f"anomaly: {says}") and err.count("\n") == 1


def test_each_protocol_resumes_its_own_files():
    """The CSVs, curve CSVs and run folders of the committed rows (and of a run in progress): a switch from the
    scripts before the merge resumes them."""
    want = {"v3": ("anomaly_mnist_v3.csv", "anomaly_mnist_v3_curve.csv", "anomaly_mnist_v3", 8, 4),
            "standard": ("anomaly_mnist_standard.csv", "anomaly_mnist_standard_curve.csv", "anomaly_mnist_standard",
                         8, 4),
            "v2": ("anomaly_mnist_v2.csv", "anomaly_mnist_curve.csv", "anomaly_mnist_v2", 16, 10)}
    try:
        for name, (res, cur, work, epochs, gen) in want.items():
            B.use(name)
            assert (B.RESULTS.name, B.CURVE.name, B.WORK.name, B.EPOCHS, B.GEN_EPOCHS) == (res, cur, work, epochs, gen)
            committed = B.RESULTS_DIR / res
            if committed.exists():  # the committed header (appending a row never rewrites the file), budget texts
                assert committed.read_text().splitlines()[0].split(",") == B.P.fields
                learned = [r for r in read(committed) if r["method"] in B.BUDGET and r["budget"][:8] != "diverged"]
                assert learned or name == "standard"
                assert all(B.budget_text(r["method"]) == r["budget"] for r in learned)
        assert B.model_of("adaptive-nce", 4, 0, "fp32").name == "adaptive-nce-d4-s0-fp32-k4.safetensors"
        B.use("v3", "lineage")  # its rows were measured by the script before the merge: the same files and texts
        committed = B.RESULTS_DIR / "anomaly_mnist_v3_lineage.csv"
        if committed.exists():
            assert committed.read_text().splitlines()[0].split(",") == B.P.fields
            assert all(B.budget_text(r["method"]) == r["budget"] for r in read(committed) if r["method"] in B.BUDGET)
    finally:
        B.use("v3")
    assert B.budget_text("adaptive-nce") == ("paper preset + {'arch': 'mnist28', 'nz': 20, 'ngf': 64}; 4-epoch "
                                             "generator + 4 stages x 1 epochs")
    assert B.budget_text("joint-vi").endswith("8 epochs from scratch; prior chains from q(z|x) (contrastive "
                                              "divergence)")


def test_a_row_killed_without_a_signal_resumes_and_counts_its_seconds(bench, monkeypatch):
    """A session that ends with kill -9 runs no handler: fit() checkpoints every CHECKPOINT_EVERY iterations and
    keeps the seconds spent on disk while it trains, so the next run resumes and the row counts both segments."""
    import json
    import time

    monkeypatch.setattr(B, "SPENT_EVERY_S", 0.02)
    out = bench / "mle.safetensors"
    ck = B.stages.checkpoint_path(str(out))
    partial = out.with_suffix(".partial.json")
    seen = []

    def killed(method, cfg, data, out_path, **kw):  # a first segment: checkpoints, trains 0.3 s, then is killed
        seen.append(kw)
        ck.write_bytes(b"checkpoint")
        time.sleep(0.3)
        # kept while training, before any handler could run: the ticker thread writes every 0.02 s (patched above);
        # wait for a write past 0.1 s, however late a loaded machine schedules that thread
        deadline = time.monotonic() + 60
        while not (partial.exists() and json.loads(partial.read_text())["wall"] > 0.1):
            assert time.monotonic() < deadline, "the seconds spent were not kept on disk while training"
            time.sleep(0.02)
        raise SystemExit("the test's stand-in for kill -9 (no handler runs after it)")

    monkeypatch.setattr(B.stages, "train", killed)
    with pytest.raises(SystemExit):
        B.fit("mle", "data.safetensors", out, 0, "fp32", None, None)
    first = json.loads(partial.read_text())["wall"]

    def resumed(method, cfg, data, out_path, **kw):
        seen.append(kw)
        ck.unlink()  # a finished training removes its checkpoint
        (bench / "mle.safetensors").write_bytes(b"model")

    monkeypatch.setattr(B.stages, "train", resumed)
    wall = B.fit("mle", "data.safetensors", out, 0, "fp32", None, None)
    assert [k["checkpoint_every"] for k in seen] == [B.CHECKPOINT_EVERY] * 2 and B.CHECKPOINT_EVERY > 0
    assert seen[0]["resume"] is None and seen[1]["resume"] == str(ck)
    assert wall >= first >= 0.3 and not partial.exists()
    assert float(out.with_suffix(".wall_s").read_text()) == pytest.approx(wall, abs=0.1)


def test_a_model_with_an_inference_model_is_scored_by_one_sample_of_it(tmp_path, digits_ds, gen_model):
    """joint-vi rows are scored as the joint paper scores its anomaly rows (eq. 20, k = 0): -log p(x, z) at z ~ q(z|x),
    no posterior chain; the other rows keep the noise-free chain."""
    import numpy as np
    import torch

    from conftest import _train
    from ebmtool.data import load_images
    from ebmtool.models import load_model

    vi = _train("joint-vi", digits_ds, tmp_path / "vi.safetensors", init=gen_model, epochs=1, prior={"steps": 3})
    x = load_images(str(digits_ds))[0][:16]
    model, _ = load_model(str(vi))
    torch.manual_seed(10_000 * 3)  # terms_of's seed for seed 3
    with torch.no_grad():
        z = model.encoder.sample(x)
        recon = (-model.log_lik(x, z)).double().numpy()
        prior = (-model.prior.tilt(z) - model.prior.base_log_prob(z)).double().numpy()
    t = B.terms_of(str(vi), x, B.ENCODER, 10_000 * 3, "fp32")
    np.testing.assert_allclose(t["recon"], recon, rtol=1e-6)
    np.testing.assert_allclose(t["tilt"] + t["base"], prior, rtol=1e-5, atol=1e-6)
    chained = B.terms_of(str(vi), x, 25, 10_000 * 3, "fp32")  # 25 noise-free steps from q's z lower -log p(x, z)
    assert (chained["recon"] + chained["tilt"] + chained["base"]).mean() < (t["recon"] + t["tilt"] + t["base"]).mean()


def test_an_adaptive_nce_stage_row_keeps_its_final_nce_loss(monkeypatch, nce_model):
    """The curve's nce_loss cell is the stage's last-epoch mean NCE loss, read from the stage model it scores; the
    0-stage generator's snapshots and other methods leave it empty."""
    from ebmtool.artifacts import load

    monkeypatch.setattr(B, "WORK", nce_model.parent)
    want = load(str(nce_model)).meta["final"]["nce"]
    assert B.stage_nce_loss("adaptive-nce", nce_model) == f"{want:.4f}" and 0 < want < 5
    assert B.stage_nce_loss("mle", nce_model) == ""
    assert B.stage_nce_loss("adaptive-nce", nce_model.parent / "gen.snapshots" / "epoch-001.safetensors") == ""


@pytest.mark.parametrize("protocol, methods, budget", [
    ("v3", ["random", "pretrain-matched", "adaptive-nce", "joint-vi"], "cpu"), ("v2", ["mle", "adaptive-nce-xh"], "cpu"),
    ("v3", ["pretrain-matched", "adaptive-nce"], "lineage")])
def test_the_rows_of_each_protocol_run_through_the_shared_parts(protocol, methods, budget, tmp_path, monkeypatch):
    """Every kind of row, end to end on a tiny digits split at the smoke preset: the 0-stage generator and what
    continues it, adaptive NCE stage by stage, a model scored by its q(z|x), v2's chunked LEBM and noisy chains;
    each appends its table row and its curve rows under the protocol's columns."""
    import dataclasses

    from ebmtool import stages
    from ebmtool.data import DataConfig

    B.use(protocol, budget)
    scratch = budget == "lineage"  # every row from scratch, no 0-stage generator
    monkeypatch.setattr(B, "P", dataclasses.replace(B.P, preset="smoke", chunk=1, fid=False))
    short = {m: {"epochs": 1 if m in ("pretrain", "pretrain-matched") and not scratch else 2} if "epochs" in b else
             {"epochs_per_stage": 1, "stages": 2} for m, b in B.BUDGET.items()}
    monkeypatch.setattr(B, "BUDGET", {m: {**b, "generator": {"nz": 4, "ngf": 8}, **short[m]}
                                      for m, b in B.BUDGET.items()})
    monkeypatch.setattr(B, "EPOCHS", 2)
    monkeypatch.setattr(B, "GEN_EPOCHS", 0 if scratch else 1)
    monkeypatch.setattr(B, "STAGES", 2)
    monkeypatch.setattr(B, "CURVE_N", 40)
    monkeypatch.setattr(B, "RULE_MAX", 50)
    for k, v in {"RESULTS": tmp_path / "r.csv", "CURVE": tmp_path / "c.csv", "WORK": tmp_path / "w"}.items():
        monkeypatch.setattr(B, k, v)
    B.WORK.mkdir()
    tiny = {}
    for part in ("fit", "calibration", "test"):
        tiny[part] = str(tmp_path / f"{part}.safetensors")
        stages.data_prepare(DataConfig(dataset="digits", anomaly_protocol=3, part=part, limit=400), tiny[part])
    monkeypatch.setattr(B, "parts", lambda digit: tiny)
    try:
        for m in methods:
            B.append(B.RESULTS, B.P.fields, B.run_cell(m, 3, 0, "fp32", "test cpu"))
    finally:
        B.use("v3")
    rows, curve = read(tmp_path / "r.csv"), read(tmp_path / "c.csv")
    assert [r["method"] for r in rows] == methods and all(r["auprc_joint"] for r in rows)
    assert list(rows[0]) == B.PROTOCOLS[protocol].fields and list(curve[0]) == B.PROTOCOLS[protocol].curve_fields
    by = {m: [c for c in curve if c["method"] == m] for m in methods}
    if scratch:
        assert [c["epoch"] for c in by["pretrain-matched"]] == ["1", "2"]  # its own epochs, no generator before
        assert [c["epoch"] for c in by["adaptive-nce"]] == ["1", "2"] and all(c["nce_loss"] for c in by["adaptive-nce"])
        assert [r["epochs"] for r in rows] == ["2", "2"] and all(r["train_cpu_s"] for r in rows)
        assert rows[0]["budget"].endswith("; 2 epochs from scratch")
        assert rows[1]["budget"].endswith("2 stages x 1 epochs from scratch, the generator trained throughout")
        assert not list((tmp_path / "w").glob("pretrain-d*"))  # no 0-stage generator was trained
    elif protocol == "v3":
        assert [c["epoch"] for c in by["pretrain-matched"]] == ["1", "2"]  # the generator's epoch, then its own
        assert [c["epoch"] for c in by["adaptive-nce"]] == ["1", "2", "3"] and by["adaptive-nce"][-1]["nce_loss"]
        assert rows[3]["score_steps"] == "0" and int(rows[1]["score_steps"]) > 0 and rows[1]["train_cpu_s"]
        assert (rows[1]["epochs"], rows[2]["epochs"], rows[3]["epochs"]) == ("2", "3", "2")
        assert rows[2]["budget"].endswith("1-epoch generator + 2 stages x 1 epochs")
    else:
        assert [c["epochs"] for c in by["mle"]] == ["1", "2"] and rows[0]["chains"] == "2"
        assert [c["epochs"] for c in by["adaptive-nce-xh"]] == ["1", "2"] and rows[0]["auprc_joint_chain_std"]


def test_lineage_budget_is_the_papers_schedule_from_scratch(bench, capsys):
    """--budget lineage: 20 epochs a row, adaptive NCE 4 stages x 5 epochs with no 0-stage generator, in files of
    its own; the 0-stage generator row does not exist there and is refused in one line."""
    B.use("v3", "lineage")
    assert B.EPOCHS == 20 and B.GEN_EPOCHS == 0 and B.STAGES * B.BUDGET["adaptive-nce"]["epochs_per_stage"] == 20
    assert B.BUDGET["pretrain-matched"]["epochs"] == B.BUDGET["mle"]["epochs"] == 20
    from benchmarks import anomaly_report as R

    for budget in R.GEN_EPOCHS:  # the report skips the 0-stage generator's curve points by the same count
        B.use("v3", budget)
        assert R.GEN_EPOCHS[budget] == B.GEN_EPOCHS
    B.use("v3", "lineage")
    assert B.RESULTS.name == "anomaly_mnist_v3_lineage.csv" and B.WORK.name == "anomaly_mnist_v3_lineage"
    assert B.budget_text("adaptive-nce").endswith("4 stages x 5 epochs from scratch, the generator trained throughout")
    assert B.budget_text("pretrain-matched").endswith("; 20 epochs from scratch")
    with pytest.raises(SystemExit) as e:
        B.main(["--budget", "lineage", "--methods", "pretrain"])
    assert e.value.code == 2 and "no 0-stage generator" in capsys.readouterr().err
