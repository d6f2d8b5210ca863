"""Re-make the README's figures under docs/: the MNIST anomaly AUPRC per digit from
benchmarks/results/anomaly_mnist.csv (fp32 rows; the README's anomaly table), with the papers' numbers as markers.

    .venv/bin/python docs/figures.py
"""

import csv
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "recipes")]
import papers  # noqa: E402

from ebmtool.eval.plots import auprc_per_digit  # noqa: E402

NAMES = {"pca": "PCA (32 comp.)", "pretrain": "0-stage generator", "mle": "LEBM (mle)",
         "adaptive-nce": "adaptive-nce, 4 stages"}
rows = [r for r in csv.DictReader(open(ROOT / "benchmarks/results/anomaly_mnist.csv")) if r["precision"] == "fp32"]
results: dict = defaultdict(lambda: defaultdict(list))
random = {}
for r in rows:
    d = int(r["digit"])
    results[NAMES.get(r["method"], r["method"])][d].append(float(r["auprc"]))
    random[d] = int(r["n_anomalous"]) / int(r["n_test"])
digits = sorted(random)
reference = {}
for m in ("mle", "adaptive-nce"):
    label, vals = papers.ANOMALY_PAPER_ROW[m]
    reference[f"paper: {label}"] = {k: float(v.split("±")[0]) for k, v in zip(papers.DIGITS, vals) if k in digits and v != "-"}
order = [n for n in NAMES.values() if n in results]
auprc_per_digit({k: dict(results[k]) for k in order}, random, str(ROOT / "docs/anomaly_mnist_auprc.png"),
                title="MNIST hold-one-digit anomaly (cpu preset), mean ± std over seeds",
                reference=reference)
