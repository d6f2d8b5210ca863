"""The weighting table of issue 35 §3 (benchmarks/score_weights.py): each weight gives the score it names, and the
table is computed from the committed per-image terms alone."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks import score_weights as W


def test_each_weight_is_the_score_it_names():
    sigma, pixels = 0.3, 784
    sq = np.array([4.0, 1.0, 9.0])  # ||x - g(z)||^2
    recon = sq / (2 * sigma ** 2)
    prior = np.array([1.0, -2.0, 0.5])
    assert np.allclose(W.weighted(recon, prior, sigma, pixels, "model"), recon + prior)
    assert np.allclose(W.weighted(recon, prior, sigma, pixels, "one"), sq + prior)
    assert np.allclose(W.weighted(recon, prior, sigma, pixels, "pixel-mean"), sq / (2 * sigma ** 2 * pixels) + prior)
    assert np.allclose(W.weighted(recon, prior, sigma, pixels, "zero"), prior)


def test_table_from_packed_terms(tmp_path):
    """Anomalies reconstruct better (a low recon term) but have an improbable latent (a high prior term): the
    reconstruction-dominated weights rank them last (the worst AUPRC), the prior alone ranks them first (1.0)."""
    y = np.array([0, 0, 0, 0, 1, 1], dtype=np.uint8)
    recon = np.where(y == 1, 10.0, 100.0) + np.arange(6)
    prior = np.where(y == 1, 5.0, 1.0)
    key = "mle|1|0|fp32"
    path = tmp_path / "t.npz"
    np.savez(path, **{f"{key}/recon": recon.astype(np.float16), f"{key}/tilt": prior.astype(np.float16),
                      f"{key}/base": np.zeros(6, np.float16), f"{key}/sigma": np.float64(0.3),
                      f"{key}/pixels": np.int64(784), "d1/y": y})
    lines = W.table(path).splitlines()
    assert lines[0].startswith("| method | digit | seed | random | w = model")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:4] == ["mle", "1", "0", "0.333"]
    model, one, pixel_mean, zero = map(float, cells[4:])
    assert zero == pytest.approx(1.0) and model < 0.5 and one < 0.5
    assert pixel_mean == pytest.approx(1.0)  # recon / 784 is below 0.2: the prior term's 4-nat gap decides


def test_the_results_page_holds_the_table_of_the_committed_terms():
    """docs/results/mnist_anomaly_splits.md: the weighting block is what ``table --write`` makes of the committed
    per-image terms (rerun ``python -m benchmarks.score_weights table --write`` after ``collect``)."""
    text = W.PAGE.read_text()
    begin, end = W.BLOCK
    assert f"{begin}\n{W.table(W.terms_file('standard')).rstrip()}\n{end}" in text
