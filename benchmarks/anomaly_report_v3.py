"""The protocol-v3 report (benchmarks/anomaly_mnist_v3.py): every table, verdict and sentence generated from the
committed CSVs, none hand-copied.

- the main table: the papers' published rows (recipes/papers.py) beside ebmtool's measured rows, per digit;
- a verdict for every published cell: ebmtool's clean number within 2 std of the paper's (the larger of the
  paper's std and ebmtool's seed std), above, or below;
- the lineage's practices on the published digits, each as a generated sentence of how much it moves AUPRC;
- every label-free score; the budget and cost of each row; the learning curves (table and figure).

    .venv/bin/python benchmarks/anomaly_report_v3.py [--readme docs/results/mnist_anomaly_v3.md] \
        [--figure docs/results/anomaly_mnist_v3_curve.png]
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "recipes"), str(ROOT / "benchmarks")]
import papers  # noqa: E402  (recipes/papers.py: the papers' tables, one copy)
from bench_csv import read, replace_block  # noqa: E402

from ebmtool.eval.scores import SCORES  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "anomaly_mnist_v3.csv"
CURVE = ROOT / "benchmarks" / "results" / "anomaly_mnist_v3_curve.csv"
DIGITS = list(range(10))
PUBLISHED = papers.DIGITS
NAMES = {
    "random": "random score (prevalence)",
    "pca": "PCA, 32 components",
    "pretrain": "0-stage generator (ABP), N(0, I) prior",
    "pretrain-matched": "0-stage generator trained to LEBM's updates",
    "mle": "LEBM (`mle`) from scratch",
    "adaptive-nce": "adaptive NCE, 4 stages",
    "joint-mle": "joint prior (`joint-mle`) from scratch",
    "joint-vi": "joint prior (`joint-vi`: prior chains from q(z|x), scored at q(z|x)) from scratch",
    "vae": "hierarchical VAE (`joint-vi --set ebm=false`: the joint-vi row without energy terms, scored at q(z|x))",
}
PAPER_OF = {  # ebmtool row -> (published label, published cells over PUBLISHED)
    "mle": ("LEBM, published", papers.LEBM_T4["rows"]["LEBM (Ours)"]),
    "adaptive-nce": ("adaptive CE, published", papers.ANCE_T2["rows"]["Adaptive CE (ours)"]),
    "joint-mle": ("joint EBM prior, published", papers.JOINT_T4["rows"]["Ours (joint EBM prior)"]),
    "joint-vi": ("joint EBM prior, published", papers.JOINT_T4["rows"]["Ours (joint EBM prior)"]),
    "pretrain": ("ABP, published", papers.ANCE_T2["rows"]["ABP"]),
}
VAE = papers.ANCE_T2["rows"]["VAE"]
LAST_N = 10  # the papers' "mean over the last 10 epochs"
GEN_EPOCHS = {"cpu": 4, "paper": 54}  # anomaly_mnist_v3.py's 0-stage generator epochs per budget
BUDGET_NAME = ["cpu"]  # set by --budget


def parse(cell: str) -> tuple[float, float]:
    m, _, s = cell.partition("±")
    return float(m), float(s) if s else 0.0


def vals(rs, method, digit, col="auprc_joint") -> list[float]:
    """One cell's values over seeds: rows of the report's precision only (fp32 and bf16 repeats are not seeds)."""
    return [float(r[col]) for r in rs if r["method"] == method and int(r["digit"]) == digit and r.get(col)
            and r["precision"] in (MAIN_PRECISION[0], "fp32") and (r["method"] in ("random", "pca")
                                                                   or r["precision"] == MAIN_PRECISION[0])]


def diverged(rs, method, digit) -> int:
    """Runs of a cell that diverged (their row's budget says so and holds no AUPRC)."""
    return sum(1 for r in rs if r["method"] == method and int(r["digit"]) == digit
               and r.get("budget", "").startswith("diverged") and not r.get("auprc_joint"))


def cell(rs, method, digit) -> str:
    """fmt of the cell's values, and how many of its runs diverged (they have no number)."""
    v, k = vals(rs, method, digit), diverged(rs, method, digit)
    return fmt(v) if not k else (f"{fmt(v)}; {k} diverged" if v else f"diverged ({k})")


MAIN_PRECISION = ["fp32"]  # the precision of the learned rows the tables show: the most common one (set by report)


def main_precision(rs) -> str:
    learned = [r["precision"] for r in rs if r["method"] not in ("random", "pca")]
    return max(set(learned), key=learned.count) if learned else "fp32"


def fmt(v: list[float]) -> str:
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3f} (1)"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f} ({len(v)})"


def verdict(paper: str, ours: list[float]) -> str:
    """Within 2 std (the larger of the paper's std and ours), above or below; '–' while unmeasured."""
    if not ours or paper == "-":
        return "–"
    p, ps = parse(paper)
    m = statistics.mean(ours)
    s = max(ps, statistics.stdev(ours) if len(ours) > 1 else 0.0)
    if abs(m - p) <= 2 * s:
        return "within 2 std"
    return "above" if m > p else "below"


def worst_auprc(n: int, n_anomalous: int) -> float:
    """The smallest AUPRC any score reaches on a test part of this composition: every anomaly ranked below every
    normal (the papers' auc(recall, precision), as ebmtool computes it)."""
    import numpy as np

    from ebmtool.eval.anomaly import metrics

    y = np.r_[np.zeros(n - n_anomalous), np.ones(n_anomalous)]
    return metrics(y, -np.arange(n, dtype=float)).auprc


def main_table(rs) -> str:
    out = ["| row | " + " | ".join(f"digit {d}" for d in PUBLISHED) + " | other digits (mean) |",
           "| --- " * (len(PUBLISHED) + 2) + "|"]
    out.append("| VAE, published | " + " | ".join(VAE) + " | |")
    if any(r["method"] == "vae" for r in rs):  # measured beside the published VAE: the joint-vi row's ablation
        out.append(f"| **ebmtool: {NAMES['vae']}** | " + " | ".join(cell(rs, "vae", d) for d in PUBLISHED) + " | – |")
    comp = {int(r["digit"]): (int(r["n_test"]), int(r["n_anomalous"])) for r in rs if r.get("n_test")}
    if comp:
        out.append("| worst possible score on this split (every anomaly ranked last) | " +
                   " | ".join(f"{worst_auprc(*comp[d]):.3f}" if d in comp else "–" for d in PUBLISHED) + " | |")
    shown = set()
    for m in ("random", "pca", "pretrain", "pretrain-matched", "mle", "adaptive-nce", "joint-mle", "joint-vi"):
        if m in PAPER_OF and PAPER_OF[m][0] not in shown:  # one published row for the joint prior's two rows
            label, cells = PAPER_OF[m]
            shown.add(label)
            out.append(f"| {label} | " + " | ".join(cells) + " | |")
        if not any(r["method"] == m for r in rs):
            continue
        other = [statistics.mean(v) for d in DIGITS if d not in PUBLISHED for v in [vals(rs, m, d)] if v]
        rest = f"{statistics.mean(other):.3f} ({len(other)} digits)" if other else "–"
        out.append(f"| **ebmtool: {NAMES[m]}** | " + " | ".join(cell(rs, m, d) for d in PUBLISHED) +
                   f" | {rest} |")
    return "\n".join(out)


def below_floor(rs) -> str:
    """Published cells below the worst AUPRC any score can reach on this split: their test set cannot have had
    this composition (said only when the numbers say it)."""
    comp = {int(r["digit"]): (int(r["n_test"]), int(r["n_anomalous"])) for r in rs if r.get("n_test")}
    hits = []
    for label, cells in [("VAE", VAE)] + list(dict(PAPER_OF.values()).items()):
        for d, c in zip(PUBLISHED, cells):
            if d in comp and c != "-" and parse(c)[0] < worst_auprc(*comp[d]):
                hits.append(f"{label.replace(', published', '')} on digit {d} ({parse(c)[0]:.3f} < "
                            f"{worst_auprc(*comp[d]):.3f})")
    if not hits:
        return ""
    return ("Published cells below the worst AUPRC any score can reach on this split (20% of the normals + every "
            "image of the held-out digit): " + "; ".join(hits) + ". Those papers' test parts cannot have had this "
            "composition, so a verdict on those cells compares different protocols.")


def verdict_table(rs) -> str:
    out = ["| published cell | " + " | ".join(f"digit {d}" for d in PUBLISHED) + " | at or above the paper |",
           "| --- " * (len(PUBLISHED) + 2) + "|"]
    for m, (label, cells) in PAPER_OF.items():
        if m == "joint-vi" and not any(r["method"] == m for r in rs):  # an extra row, shown once it has runs
            continue
        vs, n_ok, n = [], 0, 0
        for d, c in zip(PUBLISHED, cells):
            ours = vals(rs, m, d)
            v = verdict(c, ours)
            vs.append(f"{c} vs {statistics.mean(ours):.3f}: {v}" if ours else
                      f"{c}: diverged, no number" if diverged(rs, m, d) else f"{c}: not measured")
            if ours:
                n += 1
                n_ok += v in ("within 2 std", "above")
        out.append(f"| {label} vs ebmtool `{m}` | " + " | ".join(vs) + f" | {n_ok} of {n} measured |")
    return "\n".join(out)


def curve_rows(method: str, digit: int, seed: str, path: Path | None = None, precision: str | None = None
               ) -> list[dict]:
    return sorted((r for r in read(path or CURVE) if r["method"] == method and int(r["digit"]) == digit and r["seed"] == seed
                   and precision in (None, r.get("precision"))), key=lambda r: int(r["epoch"]))


def practices(rs, curve_path: Path | None = None) -> tuple[str, list[str]]:
    """Each lineage practice against the clean number, per (method, published digit, seed) where measured."""
    diffs: dict[str, list[float]] = {"last": [], "best": [], "w1": [], "leak": []}
    table = ["| row | digit | seed | clean (final model, whole test part) | mean of the last epochs (curve) | "
             "best test epoch (curve) | recon weighted 1 | test part of the second permutation |",
             "| --- " * 8 + "|"]
    for r in rs:
        m, d = r["method"], int(r["digit"])
        if m not in ("mle", "adaptive-nce", "joint-mle", "joint-vi") or d not in PUBLISHED:
            continue
        if not r.get("auprc_joint"):
            continue
        clean = float(r["auprc_joint"])
        c = curve_rows(m, d, r["seed"], curve_path, r["precision"])
        if m == "adaptive-nce":  # its own points: the stages, not the 0-stage generator's epochs before them
            c = [x for x in c if int(x["epoch"]) > GEN_EPOCHS[BUDGET_NAME[0]]]
        complete = bool(c) and bool(r.get("epochs")) and int(c[-1]["epoch"]) == int(r["epochs"])
        cells = [f"{clean:.3f}"]
        if complete:  # the curve reaches the final model, so its last point is the clean model on the subsample
            top = int(c[-1]["epoch"])
            last = [float(x["auprc_joint"]) for x in c if int(x["epoch"]) > top - LAST_N]
            best = max(c, key=lambda x: float(x["auprc_joint"]))
            final_curve = float(c[-1]["auprc_joint"])  # the same model on the curve's subsample
            diffs["last"].append(statistics.mean(last) - final_curve)
            diffs["best"].append(float(best["auprc_joint"]) - final_curve)
            cells += [f"{statistics.mean(last):.3f} (last {len(last)})", f"{float(best['auprc_joint']):.3f} "
                      f"(epoch {best['epoch']})"]
        else:
            cells += ["–", "–"]
        for key, col in (("w1", "auprc_recon_weight1"), ("leak", "auprc_joint_second_permutation")):
            if r.get(col):
                diffs[key].append(float(r[col]) - clean)
                cells.append(f"{float(r[col]):.3f}")
            else:
                cells.append("–")
        table.append(f"| {NAMES[m]} | {d} | {r['seed']} | " + " | ".join(cells) + " |")

    def say(key: str, what: str) -> str:
        v = diffs[key]
        if not v:
            return f"{what}: not measured yet."
        return (f"{what} moves AUPRC by {statistics.mean(v):+.3f} on average (from {min(v):+.3f} to {max(v):+.3f}, "
                f"{len(v)} runs).")

    sentences = [
        say("last", f"The papers' reporting (the mean test AUPRC over the last {LAST_N} epochs; here the run's last "
                    f"epochs, at most {LAST_N}, against its final epoch on the same subsample)"),
        say("best", "Keeping the checkpoint with the best test AUPRC (a choice made with test labels)"),
        say("w1", "Weighting the reconstruction term by 1 instead of 1/(2σ²) (the same z, every digit alike)"),
        say("leak", "Scoring on the original loader's test part (a second permutation: about 72% of its normals are "
                    "in this model's training part, the fit 90% of the same 80%)"),
    ]
    return "\n".join(table), sentences


def score_table(rs, published: bool | None = None) -> str:
    """Mean AUPRC of every label-free score per row, over its runs on the published digits (``published`` True),
    on the other digits (False) or on all (None): rows are compared over the same digits only when split so."""
    if published is not None:
        rs = [r for r in rs if (int(r["digit"]) in PUBLISHED) == published]
    ms = [m for m in NAMES if m not in ("random", "pca") and any(r["method"] == m for r in rs)]
    out = ["| row | " + " | ".join(SCORES) + " |", "| --- " * (len(SCORES) + 1) + "|"]
    for m in ms:
        cells = []
        for s in SCORES:
            v = [float(r[f"auprc_{s}"]) for r in rs if r["method"] == m and r.get(f"auprc_{s}")]
            cells.append(f"{statistics.mean(v):.3f}" if v else "–")
        runs = {(int(r["digit"]), r["seed"]) for r in rs if r["method"] == m}
        digits = sorted({d for d, _ in runs})  # rows over different digits are not comparable: say which
        where = f"digit{'s' if len(digits) > 1 else ''} {', '.join(map(str, digits))}"
        out.append(f"| {NAMES[m]} ({len(runs)} run{'s' if len(runs) != 1 else ''}; {where}) | "
                   + " | ".join(cells) + " |")
    return "\n".join(out)


def cpu_minutes(r: dict, what: str) -> float | None:
    """A row's process CPU minutes for ``what`` (train | score); rows without it: wall minutes x threads."""
    if r.get(f"{what}_cpu_s"):
        return float(r[f"{what}_cpu_s"]) / 60
    if r.get(f"{what}_wall_s"):
        return float(r[f"{what}_wall_s"]) * int(r.get("threads") or 1) / 60
    return None


def cost_table(rs) -> str:
    out = ["| row | budget | updates | training CPU-min | scoring CPU-min | score chain steps | runs | CPU, precision |",
           "| --- " * 8 + "|"]
    for m in NAMES:
        if m == "random":
            continue
        # one line per CPU and precision: CPU-minutes of different CPUs or precisions are never averaged together
        def where(r):
            return r["cpu"].rsplit(" (", 1)[0], r["precision"]

        for cpu, prec in sorted({where(r) for r in rs if r["method"] == m}):
            sel = [r for r in rs if r["method"] == m and where(r) == (cpu, prec)]
            tw = [v for r in sel for v in [cpu_minutes(r, "train")] if v is not None]
            sw = [v for r in sel for v in [cpu_minutes(r, "score")] if v is not None]
            steps = [s if s != "0" else "encoder" for s in  # "0": one sample of the model's q(z|x), no chain
                     sorted({r["score_steps"] for r in sel if r.get("score_steps")}, key=int)]
            out.append(f"| {NAMES[m]} | {sel[0]['budget']} | {sel[0].get('updates') or '–'} | "
                       + (f"{statistics.mean(tw):.1f}" if tw else "–") + " | "
                       + (f"{statistics.mean(sw):.1f}" if sw else "–")
                       + f" | {', '.join(steps) or '–'} | {len(sel)} | {cpu}, {prec} |")
    return "\n".join(out)


def curve_table(path: Path | None = None) -> str:
    path = path or CURVE
    rs = read(path)
    if not rs:
        return "(no curve rows yet)"
    keys = sorted({(r["method"], int(r["digit"]), r["seed"]) for r in rs}, key=lambda k: (k[1], k[0], k[2]))
    epochs = sorted({int(r["epoch"]) for r in rs})
    out = ["| row | digit | seed | " + " | ".join(f"ep {e}" for e in epochs) + " |", "| --- " * (len(epochs) + 3) + "|"]
    for m, d, s in keys:
        by = {int(r["epoch"]): r["auprc_joint"] for r in curve_rows(m, d, s, path)}
        out.append(f"| {NAMES.get(m, m)} | {d} | {s} | " + " | ".join(by.get(e, "") for e in epochs) + " |")
    return "\n".join(out)


def curve_figure(path: str, curve_path: Path | None = None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = read(curve_path or CURVE)
    digits = sorted({int(r["digit"]) for r in rs})
    if not digits:
        return
    fig, axes = plt.subplots(1, len(digits), figsize=(3 * len(digits), 2.8), squeeze=False)
    for ax, d in zip(axes[0], digits):
        for m in NAMES:
            for s in sorted({r["seed"] for r in rs if r["method"] == m and int(r["digit"]) == d}):
                c = curve_rows(m, d, s, curve_path)
                ax.plot([int(r["epoch"]) for r in c], [float(r["auprc_joint"]) for r in c], marker=".",
                        label=f"{m} s{s}")
        if d in PUBLISHED:
            for m, (_, cells) in PAPER_OF.items():
                if m != "pretrain":
                    ax.axhline(parse(cells[PUBLISHED.index(d)])[0], ls=":", lw=0.8, color="grey")
        ax.set_title(f"held-out digit {d}")
        ax.set_xlabel("epoch")
    axes[0, 0].set_ylabel("test AUPRC (subsample)")
    axes[0, 0].legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=72)
    plt.close(fig)


def report(results: Path | None = None, curve_path: Path | None = None) -> str:
    results, curve_path = results or RESULTS, curve_path or CURVE
    rs = read(results)
    if not rs:
        return "(no v3 rows measured yet)"
    MAIN_PRECISION[0] = main_precision(rs)
    table, sentences = practices(rs, curve_path)
    cpus = sorted({r["cpu"] for r in rs})
    precs = [MAIN_PRECISION[0]] + [f"{p} (rows not shown in the tables)" for p in sorted(
        {r["precision"] for r in rs if r["method"] not in ("random", "pca")} - {MAIN_PRECISION[0]})]
    return "\n\n".join([
        "AUPRC under the papers' score -log p(x, z) at a noise-free posterior z"
        + (" (" + " and ".join(f"`{m}`" for m in ("joint-vi", "vae") if any(r["method"] == m for r in rs)) +
           ": at one sample of q(z|x), as the joint paper scores)" if any(
            r["method"] in ("joint-vi", "vae") for r in rs) else "") + ", mean ± std (seeds); published rows "
        f"from the papers' tables (recipes/papers.py). CPU: {'; '.join(cpus)}; precision of the learned rows: "
        f"{', '.join(precs)}.", main_table(rs), below_floor(rs),
        "Verdicts (ebmtool's clean number against each published cell; within 2 std = within twice the larger of "
        "the paper's std and ebmtool's seed std):", verdict_table(rs),
        "The lineage's practices, measured on the same runs (never the headline):", "\n".join(f"- {s}" for s in sentences),
        table,
        "Every label-free score (AUPRC, mean over measured runs), on the five published digits:",
        score_table(rs, published=True), *([
            "The same on the other digits (one run per digit):", score_table(rs, published=False)]
            if any(int(r["digit"]) not in PUBLISHED and r["method"] not in ("random", "pca") for r in rs) else []),
        "Budget and cost per row (process CPU minutes, mean over runs; the first rows, without a CPU-time column, "
        "count wall minutes x threads):", cost_table(rs),
        "Learning curves (test AUPRC on a fixed stratified subsample of the test part, every epoch of the same runs; "
        "never used to choose):", curve_table(curve_path)])


BEGIN = "<!-- anomaly-v3:begin (benchmarks/anomaly_report_v3.py --readme) -->"
END = "<!-- anomaly-v3:end -->"


def update_readme(path: Path) -> None:
    replace_block(path, BEGIN, END, report())


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--readme", help="rewrite the v3 block of this markdown file instead of printing")
    ap.add_argument("--figure", help="write the learning-curve figure here")
    ap.add_argument("--budget", choices=["cpu", "paper"], default="cpu",
                    help="paper: report anomaly_mnist_v3_paper.csv (make bench-anomaly-v3-paper) instead")
    a = ap.parse_args()
    if a.budget == "paper":
        BUDGET_NAME[0] = "paper"
        RESULTS = RESULTS.with_name("anomaly_mnist_v3_paper.csv")
        CURVE = CURVE.with_name("anomaly_mnist_v3_curve_paper.csv")
    if a.readme:
        update_readme(Path(a.readme))
    else:
        print(report())
    if a.figure:
        curve_figure(a.figure)
