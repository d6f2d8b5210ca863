"""CPU anomaly benchmark: the hold-one-digit protocol (docs/design.md §5) on the real MNIST test set.

For each held-out digit K and seed: prepare the protocol split once (cached), pretrain one generator
(the 0-stage model, shared by every method so they are compared on the same generator), fit each method
with --init that generator, score the test part. Baselines on the very same split: PCA reconstruction
error and the 0-stage model. One CSV row per (method, digit, seed) is appended to
benchmarks/results/anomaly_mnist.csv as soon as it is measured; rows already there are skipped, so a later
session resumes where this one stopped.

    .venv/bin/python benchmarks/anomaly_mnist.py [--digits 1 4 5 7 9] [--seeds 0 1 2] [--methods mle adaptive-nce]
                                                 [--precision fp32|bf16]

--precision runs the whole pipeline (pretraining, fitting, scoring) at that precision, so that rows of the same
digit and seed measure the quality cost of reduced precision (issue 9). Each row also records the test-set
reconstruction MSE of the model (pixels in [-1, 1]).
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ebmtool import runtime, stages  # noqa: E402
from ebmtool.config import resolve  # noqa: E402
from ebmtool.data import DataConfig, load_images  # noqa: E402
from ebmtool.eval.anomaly import binary_labels, metrics, pca_scores  # noqa: E402
from ebmtool.methods import METHODS  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "anomaly_mnist.csv"
WORK = ROOT / "runs" / "anomaly_mnist"
MNIST = Path(os.environ.get("MNIST_ROOT") or ROOT.parent / "shared" / "data" / "mnist")  # $MNIST_ROOT overrides
# The training budget of every row (the cpu preset plus these flags); recorded in each row.
BUDGET = {
    "pretrain": {"epochs": 10, "generator": {"ngf": 16}},
    "mle": {"epochs": 5},
    "adaptive-nce": {"stages": 4, "epochs_per_stage": 2},
}
PAPER_AUPRC = {  # seeds' Table (MNIST, AUPRC, leaky split in the original code)
    "mle": {1: 0.336, 4: 0.630, 5: 0.619, 7: 0.463, 9: 0.413},
    "adaptive-nce": {1: 0.531, 4: 0.729, 5: 0.742, 7: 0.620, 9: 0.499},
}
FIELDS = ["method", "digit", "seed", "budget", "auprc", "average_precision", "auroc", "n_test", "n_anomalous",
          "wall_time_s", "cpu", "torch", "threads", "precision", "recon_mse"]


def cpu_name() -> str:
    return runtime.cpu_name() + f" ({torch.get_num_threads()} threads)"


def read_rows() -> list[dict]:
    """Rows measured so far; rows written before the precision column existed were fp32."""
    if not RESULTS.exists():
        return []
    with open(RESULTS) as f:
        rows = list(csv.DictReader(f))
    for r in rows:
        r["precision"] = r.get("precision") or "fp32"
    return rows


def done_rows() -> set[tuple[str, int, int, str]]:
    return {(r["method"], int(r["digit"]), int(r["seed"]), r["precision"]) for r in read_rows()}


def append(row: dict) -> None:
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    if RESULTS.exists():
        with open(RESULTS) as f:
            header = f.readline().strip().split(",")
        if header != FIELDS:  # an older file: rewrite it once with the new columns
            rows = read_rows()
            with open(RESULTS, "w", newline="") as f:
                w = csv.DictWriter(f, fieldnames=FIELDS, restval="")
                w.writeheader()
                w.writerows(rows)
    new = not RESULTS.exists()
    with open(RESULTS, "a", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        if new:
            w.writeheader()
        w.writerow(row)
        f.flush()


def split(digit: int) -> tuple[str, str]:
    WORK.mkdir(parents=True, exist_ok=True)
    out = []
    for part in ("train", "test"):
        p = WORK / f"mnist-no{digit}-{part}.safetensors"
        if not p.exists():
            stages.data_prepare(DataConfig(dataset="mnist", root=str(MNIST), split="test", size=32,
                                           anomaly_protocol=digit, part=part), str(p))
        out.append(str(p))
    return out[0], out[1]


def train(method: str, data: str, out: Path, seed: int, init: str | None, precision: str = "fp32") -> float:
    if out.exists():
        return 0.0
    cfg = resolve(METHODS[method].config, method=method, preset="cpu", toml=None,
                  flags={**BUDGET[method], "seed": seed, "precision": precision})
    t0 = time.perf_counter()
    stages.train(method, cfg, data, str(out), init_path=init, quiet=True)
    return time.perf_counter() - t0


def report() -> str:
    """Markdown: AUPRC mean ± std over the seeds measured, per method and held-out digit, beside the papers'."""
    import statistics

    if not RESULTS.exists():
        return "(no rows measured yet)"
    rows = [r for r in read_rows() if r["precision"] == "fp32"]
    digits = sorted({int(r["digit"]) for r in rows})
    methods = [m for m in ["pca", "pretrain", "mle", "adaptive-nce"] if any(r["method"] == m for r in rows)]
    names = {"pca": "PCA (32 comp.)", "pretrain": "0-stage generator", "mle": "LEBM (mle)", "adaptive-nce": "adaptive-nce, 4 stages"}
    head = "| method | " + " | ".join(f"digit {d}" for d in digits) + " | seeds |"
    lines = [head, "|" + " --- |" * (len(digits) + 2)]
    for m in methods:
        cells, seeds = [], set()
        for d in digits:
            v = [float(r["auprc"]) for r in rows if r["method"] == m and int(r["digit"]) == d]
            seeds |= {r["seed"] for r in rows if r["method"] == m and int(r["digit"]) == d}
            paper = PAPER_AUPRC.get(m, {}).get(d)
            cell = "–" if not v else (f"{v[0]:.3f}" if len(v) == 1 else f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f}")
            cells.append(cell + (f" (paper {paper:.3f})" if paper is not None else ""))
        lines.append(f"| {names[m]} | " + " | ".join(cells) + f" | {len(seeds)} |")
    cpus = sorted({r["cpu"] for r in rows})
    lines.append("")
    lines.append(f"AUPRC = auc(recall, precision). Machine: {'; '.join(cpus)}. Papers' numbers: their Table (leaky split, "
                 "full MNIST train set); ours: the 10,000-image test set split 80/20 once.")
    return "\n".join(lines)


def precision_report() -> str:
    """Markdown: the quality cost of bf16 — AUPRC and test reconstruction MSE, fp32 vs bf16, for every
    (method, digit) measured at both precisions with the same seeds, beside the seed-to-seed spread of fp32."""
    import statistics

    rows = read_rows()
    key = lambda r: (r["method"], int(r["digit"]))  # noqa: E731
    cells = sorted({key(r) for r in rows if r["precision"] == "bf16"}, key=lambda k: (k[1], k[0]))
    lines = ["| method | digit | seeds | AUPRC fp32 | AUPRC bf16 | Δ AUPRC (bf16 − fp32) | fp32 seed std | "
             "MSE fp32 | MSE bf16 | Δ MSE | fp32 seed std | wall bf16 / fp32 |", "|" + " --- |" * 12]
    for m, d in cells:
        by = {p: {int(r["seed"]): r for r in rows if key(r) == (m, d) and r["precision"] == p} for p in ("fp32", "bf16")}
        seeds = sorted(set(by["fp32"]) & set(by["bf16"]))
        if not seeds:
            continue

        def col(p, f):
            return [float(by[p][s][f]) for s in seeds if by[p][s].get(f)]

        def fmt(v):
            return f"{statistics.mean(v):.4f}" if v else "–"

        def std(f):
            v = [float(r[f]) for r in by["fp32"].values() if r.get(f)]
            return f"{statistics.stdev(v):.4f}" if len(v) > 1 else "–"

        a32, a16, e32, e16 = col("fp32", "auprc"), col("bf16", "auprc"), col("fp32", "recon_mse"), col("bf16", "recon_mse")
        da = statistics.mean(b - a for a, b in zip(a32, a16))
        de = f"{statistics.mean(b - a for a, b in zip(e32, e16)):+.4f}" if len(e32) == len(e16) == len(seeds) else "–"
        w = statistics.mean(float(by["bf16"][s]["wall_time_s"]) / float(by["fp32"][s]["wall_time_s"]) for s in seeds)
        lines.append(f"| {m} | {d} | {','.join(map(str, seeds))} | {fmt(a32)} | {fmt(a16)} | {da:+.4f} | {std('auprc')} | "
                     f"{fmt(e32)} | {fmt(e16)} | {de} | {std('recon_mse')} | {w:.2f} |")
    return "\n".join(lines)


def fill_mse() -> None:
    """Add the reconstruction MSE to rows measured before that column existed (models still under runs/)."""
    rows = read_rows()
    for r in rows:
        if r.get("recon_mse") or r["method"] == "pca":
            continue
        d, s, tag = int(r["digit"]), int(r["seed"]), "" if r["precision"] == "fp32" else "-" + r["precision"]
        name = "gen" if r["method"] == "pretrain" else r["method"]
        model = WORK / f"{name}-d{d}-s{s}{tag}.safetensors"
        if model.exists():
            r["recon_mse"] = f"{stages.reconstruct(str(model), split(d)[1], seed=s, precision=r['precision'])['mse']:.5f}"
            print(r["method"], d, s, r["recon_mse"], flush=True)
    with open(RESULTS, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS, restval="")
        w.writeheader()
        w.writerows(rows)


def main() -> None:
    if "--report" in sys.argv:
        print(report())
        return
    if "--precision-report" in sys.argv:
        print(precision_report())
        return
    if "--fill-mse" in sys.argv:
        fill_mse()
        return
    ap = argparse.ArgumentParser()
    ap.add_argument("--digits", type=int, nargs="+", default=[1, 4, 5, 7, 9])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=["mle", "adaptive-nce"])
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    args = ap.parse_args()
    prec = args.precision
    tag = "" if prec == "fp32" else f"-{prec}"
    if not MNIST.exists():
        sys.exit(f"anomaly_mnist: {MNIST} not found (the shared MNIST test set)")
    cpu = cpu_name()
    for seed in args.seeds:
        for digit in args.digits:
            todo = [m for m in ["pca", "pretrain", *args.methods] if (m, digit, seed, prec) not in done_rows()
                    and not (m == "pca" and prec != "fp32")]
            if not todo:
                continue
            tr, te = split(digit)
            gen = WORK / f"gen-d{digit}-s{seed}{tag}.safetensors"
            t_gen = train("pretrain", tr, gen, seed, None, prec) if any(m != "pca" for m in todo) else 0.0
            for m in todo:
                t0 = time.perf_counter()
                if m == "pca":
                    xtr, _, _ = load_images(tr)
                    xte, lte, _ = load_images(te)
                    met = metrics(binary_labels(lte, [digit]), pca_scores(xtr, xte, seed=seed))
                    wall, budget = time.perf_counter() - t0, "PCA 32 components"
                    mse = ""
                else:
                    model = str(gen) if m == "pretrain" else str(WORK / f"{m}-d{digit}-s{seed}{tag}.safetensors")
                    wall = t_gen if m == "pretrain" else train(m, tr, Path(model), seed, str(gen), prec)
                    r = stages.anomaly(model, te, positive=[digit], seed=seed, precision=prec)
                    mse = f"{stages.reconstruct(model, te, seed=seed, precision=prec)['mse']:.5f}"
                    met = type("M", (), r)
                    budget = f"cpu preset + {BUDGET['pretrain']}" + ("" if m == "pretrain" else f" then {BUDGET[m]}")
                row = {"method": m, "digit": digit, "seed": seed, "budget": budget, "auprc": f"{met.auprc:.4f}",
                       "average_precision": f"{met.average_precision:.4f}", "auroc": f"{met.auroc:.4f}",
                       "n_test": met.n, "n_anomalous": met.n_anomalous, "wall_time_s": f"{wall:.1f}", "cpu": cpu,
                       "torch": torch.__version__, "threads": torch.get_num_threads(),
                       "precision": prec, "recon_mse": mse}
                append(row)
                print(row, flush=True)


if __name__ == "__main__":
    main()
