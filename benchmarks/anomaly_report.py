"""Markdown tables (and the AUPRC figure) from benchmarks/results/anomaly_mnist_v2.csv.

    .venv/bin/python benchmarks/anomaly_report.py [--figure docs/results/anomaly_mnist_auprc.png] [--score joint]
    .venv/bin/python benchmarks/anomaly_report.py --curve [--figure docs/results/anomaly_mnist_curve.png]

Every number is a mean ± std over the seeds measured so far (n in each cell); a cell with one seed shows
that seed's value and, for latent models, "(c ±x)" the std over posterior chains instead.
"""

from __future__ import annotations

import argparse
import csv
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "anomaly_mnist_v2.csv"
CURVE = ROOT / "benchmarks" / "results" / "anomaly_mnist_curve.csv"
NAMES = {
    "random": "random score (prevalence)",
    "data": "held-out real normals (FID floor)",
    "pca": "PCA, 32 components",
    "pretrain": "0-stage generator, N(0, I) prior",
    "pretrain-matched": "0-stage generator trained to LEBM's updates",
    "mle": "LEBM (`mle`) from scratch",
    "adaptive-nce": "adaptive NCE, 4 stages",
    "mle-warm": "LEBM from the 0-stage generator",
    "nce": "NCE, 1 stage",
    "adaptive-nce-tre": "adaptive NCE `--non-adaptive` (TRE)",
    "adaptive-nce-xh": "adaptive NCE, its paper's Langevin convention",
    "joint-mle": "joint prior (`joint-mle`) from scratch",
}
sys.path[:0] = [str(ROOT), str(ROOT / "recipes"), str(ROOT / "benchmarks")]
import papers  # noqa: E402  (recipes/papers.py: the papers' tables, one copy)
from bench_csv import replace_block  # noqa: E402

from ebmtool.eval.scores import SCORES  # noqa: E402

PAPER = {m: {d: float(v.split("±")[0]) for d, v in zip(papers.DIGITS, papers.ANOMALY_PAPER_ROW[m][1]) if v != "-"}
         for m in ("mle", "adaptive-nce", "joint-mle")}
LATENT = ["pretrain", "pretrain-matched", "mle", "adaptive-nce", "adaptive-nce-xh", "mle-warm", "nce", "adaptive-nce-tre", "joint-mle"]


MAIN_PRECISION = "bf16"  # the tables' learned rows; fp32 repeats of them go to precision_table only


def rows(path: Path = RESULTS, *, all_precisions: bool = False) -> list[dict]:
    """The CSV's rows; by default the learned rows of MAIN_PRECISION only (baselines are exact in fp32)."""
    if not path.exists():
        return []
    with open(path) as f:
        rs = list(csv.DictReader(f))
    return rs if all_precisions else [r for r in rs if r["method"] not in LATENT or r["precision"] == MAIN_PRECISION]


def header(first: list[str], digits: list[int], last: list[str] = (), label: str = "digit {d}") -> list[str]:
    """The two header lines of a markdown table with one column per digit."""
    cols = [*first, *(label.format(d=d) for d in digits), *last]
    return ["| " + " | ".join(cols) + " |", "|" + " --- |" * len(cols)]


def values(rs, method, digit, col="auprc_joint") -> list[float]:
    return [float(r[col]) for r in rs if r["method"] == method and int(r["digit"]) == digit and r.get(col)]


def cell(v: list[float], chain_std: str = "") -> str:
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3f}" + (f" (c ±{float(chain_std):.3f})" if chain_std else "")
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f} (n={len(v)})"


def main_table(rs) -> str:
    digits = sorted({int(r["digit"]) for r in rs})
    methods = [m for m in NAMES if m != "data" and any(r["method"] == m for r in rs)]
    out = header(["method"], digits)
    for m in methods:
        cells = []
        for d in digits:
            one = [r for r in rs if r["method"] == m and int(r["digit"]) == d]
            c = cell(values(rs, m, d), one[0].get("auprc_joint_chain_std", "") if len(one) == 1 else "")
            if d in PAPER.get(m, {}):
                c += f" [paper {PAPER[m][d]:.3f}]"
            cells.append(c)
        out.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def summary_table(rs) -> str:
    """One line per learned row: mean AUPRC (papers' score) over the digits it has, seeds per digit, digits where
    it beats both baselines by more than the seed std, FID below the 0-stage generator."""
    digits = sorted({int(r["digit"]) for r in rs})
    out = ["| model | digits | seeds per digit | mean AUPRC over its digits | 0-stage generator on the same digits | "
           "same, trained to LEBM's updates | PCA on the same digits | beats PCA and the 0-stage generator by > std "
           "(digits with ≥ 2 seeds) | beats PCA and the update-matched generator by > std | "
           "FID below the 0-stage generator |", "|" + " --- |" * 10]
    for m in [m for m in LATENT if any(r["method"] == m for r in rs)]:
        have = [d for d in digits if values(rs, m, d)]
        n = [len(values(rs, m, d)) for d in have]

        def mean_over(method):
            v = [statistics.mean(values(rs, method, d)) for d in have if values(rs, method, d)]
            return f"{statistics.mean(v):.3f}" if len(v) == len(have) else "–"

        fid = [(values(rs, m, d, "fid_features"), values(rs, "pretrain", d, "fid_features")) for d in have]
        fid_both = [(a, b) for a, b in fid if a and b]
        fid_wins = sum(statistics.mean(a) < statistics.mean(b) for a, b in fid_both)
        wins, n2 = wins_count(rs, m)
        wins_m, n2_m = wins_count(rs, m, "pretrain-matched")
        base = m in ("pretrain", "pretrain-matched")
        out.append(f"| {NAMES[m]} | {len(have)} | {min(n)}–{max(n)} | {mean_over(m)} | "
                   + (f"{mean_over('pretrain')} | {mean_over('pretrain-matched')} | " if m != "pretrain" else "– | – | ")
                   + f"{mean_over('pca')} | "
                   + ((f"{wins} of {n2} |" if n2 else "– (one seed) |") if not base else "– |")
                   + ((f" {wins_m} of {n2_m} |" if n2_m else " – |") if not base else " – |")
                   + (f" {fid_wins} of {len(fid_both)} |" if m != "pretrain" else " – |"))
    return "\n".join(out)


def latent_share(rs) -> str:
    """How much the latent terms move the papers' score: AUPRC of joint against recon alone, per learned row."""
    d = [abs(float(r["auprc_joint"]) - float(r["auprc_recon"])) for r in rs
         if r["method"] in LATENT and r["method"] not in ("pretrain", "pretrain-matched") and r.get("auprc_recon")]
    if not d:
        return ""
    m = statistics.mean(d)
    said = (f"Over {len(d)} rows with a learned prior, AUPRC under the papers' score (`joint`) and under `recon` "
            f"alone differ by {m:.3f} on average (at most {max(d):.3f}).")
    if max(d) < 0.02:  # below the typical seed std of a row: the latent terms do not change the ranking
        said += (" The latent terms barely move the papers' score at 32x32: what a learned prior changes there, it "
                 "changes through the generator it was trained with.")
    return said


def precision_table(all_rs) -> str:
    """bf16 against fp32 for the (row, digit, seed) measured in both: AUPRC (papers' score), FID, train wall."""
    by = {}
    for r in all_rs:
        if r["method"] in LATENT:
            by.setdefault((r["method"], r["digit"], r["seed"]), {})[r["precision"]] = r
    pairs = {k: v for k, v in by.items() if {"bf16", "fp32"} <= set(v)}
    if not pairs:
        return "(no row measured in both bf16 and fp32 at this protocol yet)"
    out = ["| row | digit | seed | AUPRC bf16 | AUPRC fp32 | FID bf16 | FID fp32 | train wall bf16 / fp32 (s) | "
           "CPU (bf16 / fp32 where they differ) |",
           "|" + " --- |" * 9]
    for (m, d, sd), v in sorted(pairs.items()):
        b, f = v["bf16"], v["fp32"]
        out.append(f"| {NAMES[m]} | {d} | {sd} | {b['auprc_joint']} | {f['auprc_joint']} | "
                   f"{float(b['fid_features'] or 'nan'):.0f} | {float(f['fid_features'] or 'nan'):.0f} | "
                   f"{float(b['train_wall_s']):.0f} / {float(f['train_wall_s']):.0f} | "
                   f"{b['cpu'] if b['cpu'] == f['cpu'] else b['cpu'] + ' / ' + f['cpu']} |")
    return "\n".join(out)


def score_table(rs) -> str:
    """Mean AUPRC of each label-free score per latent model and digit (mean over seeds)."""
    digits = sorted({int(r["digit"]) for r in rs})
    out = header(["model", "score"], digits, ["mean", "worst digit"])
    for m in [m for m in LATENT if any(r["method"] == m for r in rs)]:
        for s in SCORES:
            v = [values(rs, m, d, f"auprc_{s}") for d in digits]
            means = [statistics.mean(x) for x in v if x]
            mean = f"{statistics.mean(means):.3f}" if means else "–"
            worst = f"{min(means):.3f}" if means else "–"
            out.append(f"| {NAMES[m]} | {s} | " + " | ".join(f"{statistics.mean(x):.3f}" if x else "–" for x in v)
                       + f" | {mean} | {worst} |")
    return "\n".join(out)


def mse_table(rs) -> str:
    digits = sorted({int(r["digit"]) for r in rs})
    out = header(["model"], digits, label="digit {d}: normal / anomalous")
    for m in [m for m in LATENT if any(r["method"] == m for r in rs)]:
        cells = []
        for d in digits:
            n, a = values(rs, m, d, "mse_normal"), values(rs, m, d, "mse_anomalous")
            cells.append(f"{statistics.mean(n):.4f} / {statistics.mean(a):.4f}" if n and a else "–")
        out.append(f"| {NAMES[m]} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def fid_table(rs) -> str:
    """Feature-space FID (LeNet features of each digit's fit part) of 2,000 prior samples; lower is better."""
    digits = sorted({int(r["digit"]) for r in rs})
    out = header(["model"], digits, ["below the 0-stage generator"])
    for m in [m for m in ["data"] + LATENT if any(r["method"] == m and r.get("fid_features") for r in rs)]:
        v = [values(rs, m, d, "fid_features") for d in digits]
        g = [values(rs, "pretrain", d, "fid_features") for d in digits]
        wins = sum(1 for a, b in zip(v, g) if a and b and statistics.mean(a) < statistics.mean(b))
        both = sum(1 for a, b in zip(v, g) if a and b)
        out.append(f"| {NAMES[m]} | " + " | ".join(
            (f"{statistics.mean(x):.0f}" + (f" ± {statistics.stdev(x):.0f}" if len(x) > 1 else "")) if x else "–"
            for x in v) + (f" | {wins} of {both} |" if m not in ("data", "pretrain") else " | |"))
    return "\n".join(out)


def wins_table(rs, score: str = "joint") -> str:
    """Per EBM row: on how many digits its mean AUPRC beats PCA and the 0-stage generator by more than the
    larger of the two rows' seed std (digits with at least 2 seeds of both)."""
    out = ["| model | digits with ≥ 2 seeds | beats PCA by > std | beats the 0-stage generator by > std | "
           "beats both |", "| --- | --- | --- | --- | --- |"]
    for m in [m for m in LATENT if m not in ("pretrain", "pretrain-matched") and any(r["method"] == m for r in rs)]:
        n, bp, bg, bb = wins(rs, m, score)
        if n:
            out.append(f"| {NAMES[m]} | {n} | {bp} | {bg} | {bb} |")
    return "\n".join(out)


def wins(rs, m: str, score: str = "joint", generator: str = "pretrain") -> tuple[int, int, int, int]:
    """(digits with ≥ 2 seeds of m and of the generator row, beats PCA, beats the generator, beats both), each
    by more than the larger of the two rows' seed std."""
    n = bp = bg = bb = 0
    for d in sorted({int(r["digit"]) for r in rs}):
        a, g = values(rs, m, d, f"auprc_{score}"), values(rs, generator, d, f"auprc_{score}")
        pca = values(rs, "pca", d)
        if len(a) < 2 or len(g) < 2 or not pca:
            continue
        n += 1
        sd = max(statistics.stdev(a), statistics.stdev(g))
        p_ok = statistics.mean(a) - statistics.mean(pca) > sd
        g_ok = statistics.mean(a) - statistics.mean(g) > sd
        bp, bg, bb = bp + p_ok, bg + g_ok, bb + (p_ok and g_ok)
    return n, bp, bg, bb


def wins_count(rs, m: str, generator: str = "pretrain") -> tuple[int, int]:
    n, _, _, bb = wins(rs, m, generator=generator)
    return bb, n


def nce_table(path: Path = RESULTS.with_name("anomaly_mnist_nce.csv")) -> str:
    """Adaptive NCE per stage, mean over digits and seeds: NCE loss against chance and the log-ratio gap."""
    nr = rows(path)
    if not nr:
        return "(no stage statistics yet: anomaly_mnist.py --nce-stats)"
    out = ["| row | stage | runs | NCE loss, first epoch | NCE loss, last epoch | chance 2 ln 2 | mean log r on "
           "posterior samples | on prior samples |", "|" + " --- |" * 8]
    for m, k in sorted({(r.get("method") or "adaptive-nce", int(r["stage"])) for r in nr}):
        rk = [r for r in nr if int(r["stage"]) == k and (r.get("method") or "adaptive-nce") == m]

        def mean(c):
            return statistics.mean(float(r[c]) for r in rk)

        out.append(f"| {m} | {k} | {len(rk)} | {mean('nce_first_epoch'):.3f} | {mean('nce_last_epoch'):.3f} | "
                   f"{float(rk[0]['chance']):.3f} | {mean('log_r_pos'):+.3f} | {mean('log_r_neg'):+.3f} |")
    return "\n".join(out)


def budget_table(rs) -> str:
    out = ["| row | budget (per row) | updates | median train wall (s) | CPU | precision |", "|" + " --- |" * 6]
    for m in [m for m in NAMES if any(r["method"] == m for r in rs)]:
        mr = [r for r in rs if r["method"] == m]
        walls = [float(r["train_wall_s"]) for r in mr if r.get("train_wall_s")]
        out.append(f"| {m} | {mr[0]['budget']} | {mr[0].get('updates') or '–'} | "
                   f"{statistics.median(walls):.0f} | {mr[0]['cpu']} | {mr[0]['precision']} |" if walls else
                   f"| {m} | {mr[0]['budget']} | – | – | {mr[0]['cpu']} | {mr[0]['precision']} |")
    return "\n".join(out)


def curve_table(path: Path = CURVE) -> str:
    cr = [r for r in rows(path, all_precisions=True) if r["precision"] == MAIN_PRECISION]
    if not cr:
        return "(no curve points yet)"
    out = ["| method | digit | seed | updates | AUPRC joint | AUPRC typicality | AUPRC complexity | MSE normal | "
           "MSE anomalous | train wall (s) |", "|" + " --- |" * 10]
    for r in sorted(cr, key=lambda r: (r["method"], int(r["digit"]), int(r["seed"]), int(r["updates"]))):
        out.append(f"| {r['method']} | {r['digit']} | {r['seed']} | {r['updates']} | {r['auprc_joint']} | "
                   f"{r['auprc_typicality']} | {r['auprc_complexity']} | {r['mse_normal']} | {r['mse_anomalous']} | "
                   f"{r['train_wall_s']} |")
    return "\n".join(out)


def figure(rs, path: str, score: str = "joint") -> None:
    """AUPRC per digit per row (mean ± std over seeds), the random baseline, the papers' numbers as markers."""
    from ebmtool.eval.plots import auprc_per_digit

    digits = sorted({int(r["digit"]) for r in rs})
    res = {NAMES[m]: {d: values(rs, m, d, f"auprc_{score}") for d in digits}
           for m in NAMES if m not in ("random", "data") and any(values(rs, m, d, f"auprc_{score}") for d in digits)}
    rand = {d: float(next(r["random_auprc"] for r in rs if int(r["digit"]) == d and r.get("random_auprc")))
            for d in digits}
    ref = {f"paper: {NAMES[m]}": {d: v for d, v in PAPER[m].items() if d in digits} for m in PAPER} if score == "joint" else None
    auprc_per_digit(res, rand, path, title=f"MNIST hold-one-digit anomaly, score: {score} (mean ± std over seeds)",
                    reference=ref)


def curve_figure(path: str) -> None:
    """AUPRC (joint) and the reconstruction MSE of normals and anomalies against updates, per digit and row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cr = [r for r in rows(CURVE, all_precisions=True) if r["precision"] == MAIN_PRECISION]
    keys = sorted({(r["method"], int(r["digit"])) for r in cr})
    digits = sorted({d for _, d in keys})
    fig, axes = plt.subplots(2, len(digits), figsize=(2.6 * len(digits), 5.2), sharex="col", squeeze=False)
    for j, d in enumerate(digits):
        for m in sorted({m for m, dd in keys if dd == d}):
            for seed in sorted({r["seed"] for r in cr if r["method"] == m and int(r["digit"]) == d}):
                pts = sorted((int(r["updates"]), r) for r in cr if r["method"] == m and int(r["digit"]) == d
                             and r["seed"] == seed)
                # adaptive NCE starts from the 0-stage generator: count its updates too
                off = int(next((r["updates"] for r in rows() if r["method"] == "pretrain" and int(r["digit"]) == d
                                and r["seed"] == seed), 0)) if m == "adaptive-nce" else 0
                u = [p[0] + off for p in pts]
                kw = dict(marker="o", ms=3, label=f"{m}" if seed == "0" else None,
                          color={"mle": "C0", "adaptive-nce": "C1"}.get(m, "C2"), alpha=1.0 if seed == "0" else 0.5)
                axes[0, j].plot(u, [float(p[1]["auprc_joint"]) for p in pts], **kw)
                axes[1, j].plot(u, [float(p[1]["mse_normal"]) for p in pts], ls="-", **kw)
                axes[1, j].plot(u, [float(p[1]["mse_anomalous"]) for p in pts], ls="--", **{**kw, "label": None})
        axes[0, j].set_title(f"digit {d} held out", fontsize=9)
        axes[1, j].set_xlabel("updates (incl. pretraining)")
    axes[0, 0].set_ylabel("AUPRC (joint score)")
    axes[1, 0].set_ylabel("recon. MSE (solid normal,\ndashed anomalous)")
    axes[0, 0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def report() -> str:
    rs = rows()
    if not rs:
        return "(no rows measured yet)"
    return "\n\n".join([
        "Summary, papers' score -log p(x, z) (AUPRC, higher is better; FID lower is better):", summary_table(rs),
        latent_share(rs),
        "AUPRC under the papers' score, -log p(x, z) (higher is better):", main_table(rs),
        "Every label-free score (AUPRC, mean over seeds):", score_table(rs),
        "Wins under the papers' score:", wins_table(rs),
        "Reconstruction MSE at the posterior sample (pixels in [-1, 1]), normals / anomalies:", mse_table(rs),
        "Feature-space FID of 2,000 prior samples against the fit images (lower is better):", fid_table(rs),
        "Adaptive NCE, per stage (every digit and seed measured):", nce_table(),
        "Budgets:", budget_table(rs),
        f"The quality cost of bf16 (rows measured in both precisions; the tables above use {MAIN_PRECISION}):",
        precision_table(rows(all_precisions=True))])


BEGIN, END = "<!-- anomaly-results:begin (benchmarks/anomaly_report.py --readme) -->", "<!-- anomaly-results:end -->"


def update_readme(path: Path) -> None:
    """Replace the block between BEGIN and END in ``path`` with the current report."""
    replace_block(path, BEGIN, END, report())


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--figure", help="write the AUPRC-per-digit figure here (png|pdf|svg)")
    ap.add_argument("--score", default="joint", choices=list(SCORES), help="the score the figure shows")
    ap.add_argument("--curve", action="store_true", help="print the learning-curve table instead")
    ap.add_argument("--readme",
                    help="rewrite the results block of this markdown file (docs/results/mnist_anomaly_v2.md)")
    a = ap.parse_args()
    if a.readme:
        update_readme(Path(a.readme))
    else:
        print(curve_table() if a.curve else report())
    if a.figure:
        curve_figure(a.figure) if a.curve else figure(rows(), a.figure, a.score)
