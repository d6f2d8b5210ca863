"""benchmarks/anomaly_report.py, v2, on a hand-made CSV: the wins rule (beat PCA and the 0-stage generator by more than
the larger seed std, digits with two seeds only), fp32 repeats kept out of the bf16 tables, and the README block."""

from __future__ import annotations

import csv

import benchmarks.anomaly_report as R
from conftest import REPO

FIELDS = ["method", "digit", "seed", "precision", "auprc_joint", "auprc_recon", "fid_features", "train_wall_s", "cpu",
          "budget", "updates", "random_auprc", "auprc_joint_chain_std"]


def row(method, digit, seed, auprc, prec="bf16", fid="", recon=None):
    return {"method": method, "digit": str(digit), "seed": str(seed), "precision": prec, "auprc_joint": str(auprc),
            "auprc_recon": str(recon if recon is not None else auprc), "fid_features": fid, "train_wall_s": "10",
            "cpu": "test cpu", "budget": "b", "updates": "1", "random_auprc": "0.3", "auprc_joint_chain_std": ""}


def write(path, rs):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        w.writerows(rs)


def test_wins_need_two_seeds_and_a_margin_above_the_seed_std(tmp_path):
    rs = [row("pca", d, 0, 0.5, "fp32") for d in (0, 1, 2)]
    rs += [row("pretrain", d, s, v) for d in (0, 1, 2) for s, v in ((0, 0.60), (1, 0.62))]
    # digit 0: 0.70 ± 0.014 beats 0.61 and 0.5 by more than the std; digit 1: within the std of the generator;
    # digit 2: one seed only, not counted
    rs += [row("mle", 0, 0, 0.69), row("mle", 0, 1, 0.71), row("mle", 1, 0, 0.60), row("mle", 1, 1, 0.64),
           row("mle", 2, 0, 0.99)]
    assert R.wins(rs, "mle") == (2, 2, 1, 1)
    assert "| LEBM (`mle`) from scratch | 2 | 2 | 1 | 1 |" in R.wins_table(rs)


def test_fp32_repeats_stay_out_of_the_main_tables_and_are_paired(tmp_path):
    p = tmp_path / "r.csv"
    write(p, [row("pca", 3, 0, 0.5, "fp32"), row("mle", 3, 0, 0.8, fid="100"),
              row("mle", 3, 0, 0.7, "fp32", fid="120")])
    main = R.v2_rows(p)
    assert [(r["method"], r["precision"]) for r in main] == [("pca", "fp32"), ("mle", "bf16")]
    t = R.v2_precision_table(R.v2_rows(p, all_precisions=True))
    assert "| LEBM (`mle`) from scratch | 3 | 0 | 0.8 | 0.7 | 100 | 120 | 10 / 10 | test cpu |" in t


def test_latent_share_and_summary(tmp_path):
    rs = [row("pca", 0, 0, 0.5, "fp32"), row("pretrain", 0, 0, 0.6, fid="900"),
          row("mle", 0, 0, 0.7, fid="100", recon=0.69)]
    assert "differ by 0.010 on average" in R.latent_share(rs)
    s = R.summary_table(rs)
    assert "| LEBM (`mle`) from scratch | 1 | 1–1 | 0.700 | 0.600 | – | 0.500 | – (one seed) | – | 1 of 1 |" in s
    assert "barely move" in R.latent_share(rs)
    assert "barely move" not in R.latent_share([row("mle", 0, 0, 0.7, recon=0.6)])  # said only when true


def test_wins_against_the_update_matched_generator(tmp_path):
    rs = [row("pca", 0, 0, 0.5, "fp32")]
    rs += [row("pretrain", 0, s, 0.60) for s in (0, 1)] + [row("pretrain-matched", 0, s, v) for s, v in ((0, 0.70), (1, 0.72))]
    rs += [row("mle", 0, 0, 0.69), row("mle", 0, 1, 0.71)]
    assert R.wins_count(rs, "mle") == (1, 1) and R.wins_count(rs, "mle", "pretrain-matched") == (0, 1)
    assert "| 0.700 | 0.600 | 0.710 | 0.500 | 1 of 1 | 0 of 1 |" in R.summary_table(rs)


def test_each_results_page_holds_the_block_the_committed_csvs_generate():
    """docs/results/*.md: one generated block each, byte for byte what ``--write`` writes from the committed CSVs
    (rerun ``python -m benchmarks.anomaly_report --protocol P --write`` after a run)."""
    for protocol in ("v2", "v3", "splits"):
        page = R.TARGETS[protocol]
        assert page.parent == REPO / "docs" / "results"
        begin, end = R.BLOCKS[protocol]
        text = page.read_text()
        assert text.count(begin) == 1 and text.count(end) == 1
        assert f"{begin}\n{R.block(protocol)}\n{end}" in text, f"{page.name}: regenerate its block"

