"""benchmarks/anomaly_report.py, v3, on hand-made CSVs: verdicts against the published cells, the floor below which
no score's AUPRC can fall, the lineage's practices from the curve, and the README block."""

from __future__ import annotations

import numpy as np
import pytest

import benchmarks.anomaly_report as R
from benchmarks.bench_csv import write_all


def row(method, digit, seed, auprc, **kw):
    return {"protocol": "v3", "method": method, "digit": str(digit), "seed": str(seed), "precision": "fp32",
            "auprc_joint": str(auprc), "n_test": "1000", "n_anomalous": "400", "cpu": "test cpu (1 threads)",
            "budget": "b", "updates": "10", "epochs": "3", "threads": "1", "train_cpu_s": "60", **kw}


def test_verdicts_use_twice_the_larger_std():
    assert R.verdict("0.630±0.017", [0.60]) == "within 2 std"      # 0.03 <= 2 x 0.017
    assert R.verdict("0.630±0.017", [0.55]) == "below"
    assert R.verdict("0.463±0.009", [0.50, 0.56]) == "within 2 std"  # our seed std 0.042 is the larger
    assert R.verdict("0.463±0.009", [0.60, 0.61]) == "above"
    assert R.verdict("0.463±0.009", []) == "–"


def test_a_diverged_run_is_shown_as_diverged_not_as_missing():
    bad = row("joint-mle", 1, 0, "", budget="diverged: joint-mle epoch 3 iteration 941: prior Langevin ...")
    rs = [bad, row("joint-mle", 4, 0, 0.5), row("joint-mle", 4, 1, "", budget="diverged: ...")]
    table, verdicts = R.main_table(rs), R.verdict_table(rs)
    line = next(ln for ln in table.splitlines() if "`joint-mle`" in ln)
    assert "| diverged (1) |" in line and "0.500 (1); 1 diverged" in line
    assert "0.470±0.009: diverged, no number" in verdicts and "0.796±0.004: not measured" in verdicts
    assert "1 of 1 measured" in verdicts or "0 of 1 measured" in verdicts


def test_worst_auprc_is_the_inverted_ranking():
    from ebmtool.eval.anomaly import metrics

    y = np.r_[np.zeros(600), np.ones(400)]
    rng = np.random.default_rng(0)
    worst = R.worst_auprc(1000, 400)
    assert all(metrics(y, rng.normal(size=1000)).auprc >= worst for _ in range(20))
    assert worst == pytest.approx(metrics(y, -np.arange(1000.0)).auprc)


def test_report_tables_and_practices(tmp_path):
    res, curve = tmp_path / "r.csv", tmp_path / "c.csv"
    write_all(res, list(row("mle", 4, 0, 0).keys()) + ["auprc_recon_weight1", "auprc_joint_second_permutation"], [
        row("mle", 4, 0, 0.60, auprc_recon_weight1="0.70", auprc_joint_second_permutation="0.90"),
        row("mle", 4, 1, 0.64, auprc_recon_weight1="0.66"),
        row("pretrain", 4, 0, 0.30)])
    write_all(curve, ["method", "digit", "seed", "precision", "epoch", "auprc_joint"],
              [{"method": "mle", "digit": "4", "seed": s, "precision": "fp32", "epoch": str(e), "auprc_joint": str(v)}
               for e, v in ((1, 0.5), (2, 0.7), (3, 0.6)) for s in ("0",)]
              + [{"method": "mle", "digit": "4", "seed": "1", "precision": "fp32", "epoch": "1",
                  "auprc_joint": "0.9"}])  # seed 1's curve stops before its final epoch: no practice cells
    text = R.report(res, curve)
    assert "| **ebmtool: LEBM (`mle`) from scratch** | – | 0.620 ± 0.028 (2) |" in text
    assert "0.630±0.017 vs 0.620: within 2 std" in text and "1 of 1 measured" in text
    # practices: last-epochs mean 0.6 and best 0.7 against the final curve point 0.6; recon weight 1: +0.06 mean
    assert "moves AUPRC by +0.000 on average" in text and "moves AUPRC by +0.100 on average (from +0.100 to +0.100, 1 runs)" in text
    assert "moves AUPRC by +0.060 on average (from +0.020 to +0.100, 2 runs)" in text
    assert "second permutation" in text and "moves AUPRC by +0.300 on average (from +0.300 to +0.300, 1 runs)" in text
    # the published ABP cell (0.138) is below the floor of a 1000/400 test part
    assert "ABP on digit 4 (0.138 <" in text


def test_readme_block_is_replaced(tmp_path, monkeypatch):
    write_all(tmp_path / "anomaly_mnist_v3.csv", list(row("mle", 4, 0, 0).keys()), [row("mle", 4, 0, 0.6)])
    monkeypatch.setattr(R, "RESULTS_DIR", tmp_path)
    md = tmp_path / "README.md"
    begin, end = R.BLOCKS["v3"]
    md.write_text(f"intro\n{begin}\nOLD-BLOCK\n{end}\nrest\n")
    R.main(["--write", str(md)])
    text = md.read_text()
    assert "OLD-BLOCK" not in text and text.startswith("intro") and text.endswith("rest\n") and "0.600 (1)" in text


def test_joint_vi_rows_share_the_published_joint_row_and_say_how_they_are_scored():
    jm = row("joint-mle", 4, 0, 0.6, score_steps="100")
    assert "`joint-vi`" not in R.verdict_table([jm])  # no runs yet: no verdict row
    rs = [jm, row("joint-vi", 4, 0, 0.942, score_steps="0")]
    main = R.main_table(rs)
    assert main.count("joint EBM prior, published") == 1 and "`joint-vi`" in main
    verdicts = R.verdict_table(rs)
    line = next(ln for ln in verdicts.splitlines() if "ebmtool `joint-vi`" in ln)
    assert "0.941±0.001 vs 0.942: within 2 std" in line
    cost = next(ln for ln in R.cost_table(rs).splitlines() if "`joint-vi`" in ln)
    assert "| encoder |" in cost
    assert R.below_floor(rs).count("joint EBM prior on") <= 1


def test_the_vae_ablation_sits_beside_the_published_vae_and_has_no_verdict_of_its_own(tmp_path):
    rs = [row("joint-vi", 4, 0, 0.74, score_steps="0"), row("vae", 4, 0, 0.70, score_steps="0"),
          row("vae", 4, 1, 0.72, score_steps="0")]
    lines = R.main_table(rs).splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith("| VAE, published"))
    assert "ebm=false" in lines[i + 1] and "0.710 ± 0.014 (2)" in lines[i + 1]
    assert "`vae`" not in R.verdict_table(rs)  # an ablation, not a paper's method
    write_all(tmp_path / "v3.csv", list(rs[0]), rs)
    assert "(`joint-vi` and `vae`: at one sample of q(z|x)" in R.report(tmp_path / "v3.csv", tmp_path / "curve.csv")


def test_label_free_scores_are_averaged_over_the_published_digits_apart_from_the_others(tmp_path):
    rs = [row("mle", 4, 0, 0.6, auprc_prior="0.5"), row("mle", 0, 0, 0.9, auprc_prior="0.9"),
          row("pretrain", 4, 0, 0.5, auprc_prior="0.4")]
    pub, other = R.score_table(rs, published=True), R.score_table(rs, published=False)
    assert "(1 run; digit 4)" in pub and "digit 0" not in pub and "0.500" in pub
    assert "(1 run; digit 0)" in other and "0-stage" not in other and "0.900" in other
    write_all(tmp_path / "v3.csv", list(rs[0]), rs)
    assert "The same on the other digits" in R.report(tmp_path / "v3.csv", tmp_path / "curve.csv")


def test_cost_table_never_averages_cpu_minutes_of_different_cpus():
    rs = [row("mle", 4, 0, 0.6, train_cpu_s="600", cpu="AMD EPYC [AVX2] (1 threads)"),
          row("mle", 4, 1, 0.6, train_cpu_s="1200", cpu="AMD EPYC [AVX2] (1 threads)"),
          row("mle", 8, 0, 0.6, train_cpu_s="300", cpu="AMD EPYC [AVX512-BF16] (1 threads)"),
          row("mle", 8, 1, 0.6, train_cpu_s="120", cpu="AMD EPYC [AVX512-BF16] (1 threads)", precision="bf16"),
          row("mle", 9, 0, 0.6, train_cpu_s="60", cpu="Intel Core (Skylake, IBRS) [AVX512] (1 threads)")]
    lines = [ln for ln in R.cost_table(rs).splitlines() if "`mle`" in ln]
    assert len(lines) == 4
    assert "| 15.0 |" in lines[0] and lines[0].endswith("| 2 | AMD EPYC [AVX2], fp32 |")
    assert "| 2.0 |" in lines[1] and lines[1].endswith("| 1 | AMD EPYC [AVX512-BF16], bf16 |")
    assert "| 5.0 |" in lines[2] and lines[2].endswith("| 1 | AMD EPYC [AVX512-BF16], fp32 |")
    assert lines[3].endswith("| 1 | Intel Core (Skylake, IBRS) [AVX512], fp32 |")
