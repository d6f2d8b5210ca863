"""benchmarks/anomaly_mnist_v3.py's own behaviour, without its long runs: an interrupted training ends in the one-line
resume hint, a diverged cell is recorded as a row and the sweep goes on, and the budgets stay consistent."""

from __future__ import annotations

import sys

import pytest

from conftest import REPO, SHARED_MNIST

sys.path.insert(0, str(REPO / "benchmarks"))
import anomaly_mnist_v3 as B  # noqa: E402
from bench_csv import read  # noqa: E402

from ebmtool.errors import DivergenceError  # noqa: E402
from ebmtool.training import Interrupted  # noqa: E402


@pytest.fixture
def bench(tmp_path, monkeypatch):
    monkeypatch.setattr(B, "RESULTS", tmp_path / "r.csv")
    monkeypatch.setattr(B, "CURVE", tmp_path / "c.csv")
    monkeypatch.setattr(B, "WORK", tmp_path / "work")
    monkeypatch.setattr(B, "MNIST", SHARED_MNIST)
    if not any(SHARED_MNIST.glob("train-images*")):
        pytest.skip("needs the four MNIST files ($MNIST_ROOT)")
    return tmp_path


def test_sigterm_in_training_ends_in_one_line(bench, monkeypatch, capsys):
    def interrupted(*a, **k):
        raise Interrupted(5, "X.ckpt.safetensors")

    monkeypatch.setattr(B, "run_cell", interrupted)
    monkeypatch.setattr(sys, "argv", ["anomaly_mnist_v3.py", "--digits", "1", "--methods", "mle"])
    with pytest.raises(SystemExit) as e:
        B.main()
    msg = str(e.value.code)
    assert "\n" not in msg and "interrupted at iteration 5" in msg and "run the same command again" in msg
    assert "X.ckpt.safetensors" in msg and "--resume" not in msg  # the benchmark has no --resume: it resumes itself


def test_a_diverged_cell_is_a_row_and_the_sweep_goes_on(bench, monkeypatch):
    calls = []

    def cell(m, digit, seed, prec, cpu):
        calls.append(m)
        if m == "mle":
            raise DivergenceError("posterior Langevin: latents became non-finite after 20 steps")
        return {"protocol": "v3", "method": m, "digit": digit, "seed": seed, "precision": prec, "auprc_joint": "0.5"}

    monkeypatch.setattr(B, "run_cell", cell)
    monkeypatch.setattr(sys, "argv", ["anomaly_mnist_v3.py", "--digits", "1", "--methods", "mle", "pca"])
    B.main()
    rows = read(B.RESULTS)
    assert calls == ["mle", "pca"] and [r["method"] for r in rows] == ["mle", "pca"]
    assert rows[0]["budget"].startswith("diverged: posterior Langevin") and not rows[0]["auprc_joint"]
    B.main()  # a rerun skips both: the divergence is a result
    assert calls == ["mle", "pca"]


def test_paper_budget_is_consistent_and_refused_on_a_cpu(bench, monkeypatch):
    monkeypatch.setattr(sys, "argv", ["anomaly_mnist_v3.py", "--budget", "paper"])
    saved = {k: dict(v) for k, v in B.BUDGET.items()}
    try:
        with pytest.raises(SystemExit) as e:
            B.main()
        assert "--device cuda" in str(e.value.code)
        assert B.BUDGET["pretrain"]["epochs"] + B.BUDGET["pretrain-matched"]["epochs"] == B.BUDGET["mle"]["epochs"]
        assert B.BUDGET["pretrain"]["epochs"] + B.STAGES * B.BUDGET["adaptive-nce"]["epochs_per_stage"] == B.EPOCHS
        assert B.RESULTS.name == "r_paper.csv"
    finally:
        B.set_budget(8, 4, "")
        for k, v in saved.items():
            B.BUDGET[k].update(v)


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
        kept = json.loads(partial.read_text())  # kept while training, before any handler could run
        assert kept["wall"] > 0.1
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
    t = B.terms_of(str(vi), x, B.ENCODER, 3, "fp32")
    np.testing.assert_allclose(t["recon"], recon, rtol=1e-6)
    np.testing.assert_allclose(t["tilt"] + t["base"], prior, rtol=1e-5, atol=1e-6)
    chained = B.terms_of(str(vi), x, 25, 3, "fp32")  # 25 noise-free steps from the encoder's z lower -log p(x, z)
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
