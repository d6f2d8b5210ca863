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


def test_the_worst_average_precision_is_every_anomaly_ranked_last():
    """(1/P) sum_i i / (N - P + i) against sklearn's average precision of the reversed ranking, by hand on 2 of 5."""
    from sklearn.metrics import average_precision_score

    assert R.worst_ap(5, 2) == pytest.approx((1 / 4 + 2 / 5) / 2)
    for n, p in ((5, 2), (7, 3), (12, 1), (40, 17)):
        y = np.r_[np.zeros(n - p), np.ones(p)]
        assert R.worst_ap(n, p) == pytest.approx(average_precision_score(y, -np.arange(n, dtype=float)))
        y_mixed = np.random.default_rng(n).permutation(y)  # any other ranking is no worse
        assert average_precision_score(y_mixed, np.arange(n, dtype=float)) >= R.worst_ap(n, p) - 1e-12
        assert abs(R.worst_auprc(n, p) - R.worst_ap(n, p)) < 0.5 / p  # the trapezoid differs in its first step


def test_split_compositions_come_from_the_label_counts_and_match_the_measured_rows():
    from benchmarks.bench_csv import read

    assert R.split_counts("standard", 1) == (10_000, 1135) and R.split_counts("v3", 1) == (20_302, 7877)
    for split in ("v3", "standard"):
        for r in read(R.RESULTS_DIR / R.FILES[split][0]):
            if r.get("n_test"):
                assert R.split_counts(split, int(r["digit"])) == (int(r["n_test"]), int(r["n_anomalous"]))
    # issue 35's numbers for digit 1: random 0.388 and worst 0.226 on v3, 0.114 and 0.059 on the standard split
    table = R.splits_table()
    assert "| v3: random AUPRC (the prevalence) | 0.388 |" in table and "| v3: worst AUPRC" in table
    assert "(every anomaly ranked last) | 0.226 |" in table and "(the prevalence) | 0.114 |" in table
    assert "(every anomaly ranked last) | 0.059 |" in table


def test_mnist_label_counts_are_the_idx_files():
    from conftest import SHARED_MNIST
    from ebmtool.data.sources import MNIST_FILES, mnist_file, read_idx

    files = {s: mnist_file(SHARED_MNIST, MNIST_FILES[s][1]) for s in ("train", "test")}
    if None in files.values():
        pytest.skip("needs the MNIST label files ($MNIST_ROOT)")
    for s, f in files.items():
        assert np.bincount(read_idx(f), minlength=10).tolist() == R.MNIST_COUNTS[s]


def test_each_published_cell_is_possible_only_above_a_split_s_worst_auprc():
    assert R.possible("0.063", 1) == ["standard"]  # the published VAE cell: 1s ranked as the most normal images
    assert R.possible("0.336±0.008", 1) == ["v3", "standard"] and R.possible("0.04", 5) == []
    feas = R.feasibility_table()
    abp = next(ln for ln in feas.splitlines() if ln.startswith("| ABP |"))
    assert abp.count(": standard") == 5  # 0.095-0.147: below every v3 floor (0.188-0.226)
    assert "| VAE | 0.063: standard | 0.337: both |" in feas and len(feas.splitlines()) == 2 + 8


def test_verdicts_under_both_splits_side_by_side():
    v3 = [row("mle", 4, 0, 0.60), row("mle", 4, 1, 0.64), row("pretrain", 4, 0, 0.55)]
    std = [{**row("mle", 4, 0, 0.30), "protocol": "standard"}]
    lines = R.side_by_side(v3, std).splitlines()
    mle4 = next(ln for ln in lines if ln.startswith("| LEBM (`mle`) | 4 |"))
    assert mle4 == ("| LEBM (`mle`) | 4 | 0.630±0.017 | v3 and standard | 0.620 ± 0.028 (2) | within 2 std | 0.300 (1) "
                    "| below |")
    assert "| LEBM (`mle`) | 1 | 0.336±0.008 | v3 and standard | — | — | — | — |" in lines
    abp4 = next(ln for ln in lines if ln.startswith("| ABP (`pretrain`) | 4 |"))
    assert "| standard | 0.550 (1) | above (the cell cannot come from v3) | — | — |" in abp4
    assert not any("`joint-vi`" in ln for ln in lines)  # no runs: no rows


def test_the_splits_block_is_written_between_its_markers(tmp_path, monkeypatch):
    write_all(tmp_path / "anomaly_mnist_v3.csv", list(row("mle", 4, 0, 0).keys()), [row("mle", 4, 0, 0.6)])
    monkeypatch.setattr(R, "RESULTS_DIR", tmp_path)  # no standard rows yet
    md = tmp_path / "results.md"
    begin, end = R.BLOCKS["splits"]
    md.write_text(f"# page\n{begin}\nOLD\n{end}\n")
    R.main(["--splits", "--write", str(md)])
    text = md.read_text()
    assert "OLD" not in text and text.endswith(f"{end}\n")
    assert "| LEBM (`mle`) | 4 | 0.630±0.017 | v3 and standard | 0.600 (1) | within 2 std | — | — |" in text
