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
        raise Interrupted("interrupted at iteration 5; checkpoint written to X.ckpt.safetensors")

    monkeypatch.setattr(B, "run_cell", interrupted)
    monkeypatch.setattr(sys, "argv", ["anomaly_mnist_v3.py", "--digits", "1", "--methods", "mle"])
    with pytest.raises(SystemExit) as e:
        B.main()
    msg = str(e.value.code)
    assert "\n" not in msg and "interrupted at iteration 5" in msg and "run the same command again" in msg


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
