"""The anomaly benchmarks' report (benchmarks/anomaly.py), every protocol: every table, verdict and sentence generated
from the committed CSVs, none hand-copied.

- v3 / standard: the papers' published rows (recipes/papers.py) beside ebmtool's measured rows, a verdict for every
  published cell, the lineage's practices, every label-free score, the cost of each row, the learning curves;
- v2: the summary, wins, label-free scores, MSE, FID, adaptive NCE's stages, budgets and the bf16 quality cost;
- across splits (issue 35 §1): the random and the worst AUPRC of every published cell's digit under each split,
  from the label counts alone, which splits each cell is possible under, and the verdicts side by side.

    .venv/bin/python -m benchmarks.anomaly_report [--protocol v3|standard|v2] [--budget lineage|paper] [--figure PNG]
        [--curve] [--write FILE] [--splits]
"""

from __future__ import annotations

import argparse
import functools
import statistics
from pathlib import Path

from benchmarks.bench_csv import read, replace_block
from ebmtool.eval.scores import SCORES
from recipes import papers

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
# the results page whose generated block --write rewrites by default, and each block's markers
TARGETS = {"v3": ROOT / "docs" / "results" / "mnist_anomaly_v3.md", "v2": ROOT / "docs" / "results" / "mnist_anomaly_v2.md",
           "splits": ROOT / "docs" / "results" / "mnist_anomaly_splits.md",
           "standard": ROOT / "docs" / "results" / "mnist_anomaly_splits.md"}
BLOCKS = {"v3": ("<!-- anomaly-v3:begin (python -m benchmarks.anomaly_report --protocol v3 --write) -->",
                 "<!-- anomaly-v3:end -->"),
          "v2": ("<!-- anomaly-results:begin (python -m benchmarks.anomaly_report --protocol v2 --write) -->",
                 "<!-- anomaly-results:end -->"),
          "splits": ("<!-- anomaly-splits:begin (python -m benchmarks.anomaly_report --splits --write) -->",
                     "<!-- anomaly-splits:end -->"),
          "standard": ("<!-- anomaly-standard:begin (python -m benchmarks.anomaly_report --protocol standard --write) -->",
                       "<!-- anomaly-standard:end -->")}
FILES = {"v3": ("anomaly_mnist_v3.csv", "anomaly_mnist_v3_curve.csv"),
         "standard": ("anomaly_mnist_standard.csv", "anomaly_mnist_standard_curve.csv"),
         "v2": ("anomaly_mnist_v2.csv", "anomaly_mnist_curve.csv")}
DIGITS = list(range(10))
PUBLISHED = papers.DIGITS
NAMES = {
    "random": "random score (prevalence)",
    "data": "held-out real normals (FID floor)",
    "pca": "PCA, 32 components",
    "pretrain": "0-stage generator (ABP), N(0, I) prior",
    "pretrain-matched": "0-stage generator trained to LEBM's updates",
    "mle": "LEBM (`mle`) from scratch",
    "adaptive-nce": "adaptive NCE, 4 stages",
    "mle-warm": "LEBM from the 0-stage generator",
    "nce": "NCE, 1 stage",
    "adaptive-nce-tre": "adaptive NCE `--non-adaptive` (TRE)",
    "adaptive-nce-xh": "adaptive NCE, its paper's Langevin convention",
    "joint-mle": "joint prior (`joint-mle`) from scratch",
    "joint-vi": "joint prior (`joint-vi`: prior chains from q(z|x), scored at q(z|x)) from scratch",
    "vae": "hierarchical VAE (`joint-vi --set ebm=false`: the joint-vi row without energy terms, scored at q(z|x))",
}
V2_NAMES = {**{m: NAMES[m] for m in ("random", "data", "pca")}, "pretrain": "0-stage generator, N(0, I) prior",
            **{m: NAMES[m] for m in ("pretrain-matched", "mle", "adaptive-nce", "mle-warm", "nce", "adaptive-nce-tre",
                                     "adaptive-nce-xh", "joint-mle")}}
V3_ROWS = ["random", "pca", "pretrain", "pretrain-matched", "mle", "adaptive-nce", "joint-mle", "joint-vi", "vae"]
PAPER_OF = {  # ebmtool row -> (published label, published cells over PUBLISHED)
    "mle": ("LEBM, published", papers.LEBM_T4["rows"]["LEBM (Ours)"]),
    "adaptive-nce": ("adaptive CE, published", papers.ANCE_T2["rows"]["Adaptive CE (ours)"]),
    "joint-mle": ("joint EBM prior, published", papers.JOINT_T4["rows"]["Ours (joint EBM prior)"]),
    "joint-vi": ("joint EBM prior, published", papers.JOINT_T4["rows"]["Ours (joint EBM prior)"]),
    "pretrain": ("ABP, published", papers.ANCE_T2["rows"]["ABP"]),
}
VAE = papers.ANCE_T2["rows"]["VAE"]
LAST_N = 10  # the papers' "mean over the last 10 epochs"
# the 0-stage generator's epochs of v3 / standard per budget (benchmarks.anomaly's; tests/test_benchmark_v3.py checks)
GEN_EPOCHS = {"cpu": 4, "lineage": 0, "paper": 54}
BUDGET_NAME = ["cpu"]  # set by --budget
MAIN_PRECISION = ["fp32"]  # the precision of the learned rows the tables show (set by report)


def table(head: list[str], lines: list[list]) -> str:
    """A markdown table (a cell None: a blank cell written "| |")."""
    return "\n".join(["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
                     + [("| " + " | ".join("\0" if v is None else str(v) for v in c) + " |").replace(" \0", "")
                        for c in lines])


def parse(cell: str) -> tuple[float, float]:
    m, _, s = cell.partition("±")
    return float(m), float(s) if s else 0.0


def mean(v: list[float], f: str = ".3f", none: str = "–") -> str:
    return format(statistics.mean(v), f) if v else none


# --- v3 and standard ----------------------------------------------------------------------------------------------

def vals(rs, method, digit, col="auprc_joint") -> list[float]:
    """One cell's values over seeds: rows of the report's precision only (fp32 and bf16 repeats are not seeds)."""
    return [float(r[col]) for r in rs if r["method"] == method and int(r["digit"]) == digit and r.get(col)
            and r["precision"] in (MAIN_PRECISION[0], "fp32") and (r["method"] in ("random", "pca")
                                                                   or r["precision"] == MAIN_PRECISION[0])]


def diverged(rs, method, digit) -> int:
    """Runs of a cell that diverged (their row's budget says so and holds no AUPRC)."""
    return sum(1 for r in rs if r["method"] == method and int(r["digit"]) == digit
               and r.get("budget", "").startswith("diverged") and not r.get("auprc_joint"))


def fmt(v: list[float]) -> str:
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3f} (1)"
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f} ({len(v)})"


def cell(rs, method, digit) -> str:
    """fmt of the cell's values, and how many of its runs diverged (they have no number)."""
    v, k = vals(rs, method, digit), diverged(rs, method, digit)
    return fmt(v) if not k else (f"{fmt(v)}; {k} diverged" if v else f"diverged ({k})")


def main_precision(rs) -> str:
    learned = [r["precision"] for r in rs if r["method"] not in ("random", "pca")]
    return max(set(learned), key=learned.count) if learned else "fp32"


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


def composition(rs) -> dict[int, tuple[int, int]]:
    """Held-out digit -> (test images, anomalies), from the measured rows."""
    return {int(r["digit"]): (int(r["n_test"]), int(r["n_anomalous"])) for r in rs if r.get("n_test")}


def main_table(rs) -> str:
    out = [["VAE, published", *VAE, None]]
    if any(r["method"] == "vae" for r in rs):  # measured beside the published VAE: the joint-vi row's ablation
        out.append([f"**ebmtool: {NAMES['vae']}**", *(cell(rs, "vae", d) for d in PUBLISHED), "–"])
    if comp := composition(rs):
        out.append(["worst possible score on this split (every anomaly ranked last)", *(
            f"{worst_auprc(*comp[d]):.3f}" if d in comp else "–" for d in PUBLISHED), None])
    shown = set()
    for m in V3_ROWS[:-1]:
        if m in PAPER_OF and PAPER_OF[m][0] not in shown:  # one published row for the joint prior's two rows
            label, cells = PAPER_OF[m]
            shown.add(label)
            out.append([label, *cells, None])
        if any(r["method"] == m for r in rs):
            other = [statistics.mean(v) for d in DIGITS if d not in PUBLISHED for v in [vals(rs, m, d)] if v]
            out.append([f"**ebmtool: {NAMES[m]}**", *(cell(rs, m, d) for d in PUBLISHED),
                        f"{statistics.mean(other):.3f} ({len(other)} digits)" if other else "–"])
    return table(["row", *(f"digit {d}" for d in PUBLISHED), "other digits (mean)"], out)


def below_floor(rs) -> str:
    """Published cells below the worst AUPRC any score can reach on this split: their test set cannot have had
    this composition (said only when the numbers say it)."""
    comp, hits = composition(rs), []
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
    out = []
    for m, (label, cells) in PAPER_OF.items():
        if m == "joint-vi" and not any(r["method"] == m for r in rs):  # an extra row, shown once it has runs
            continue
        vs, n_ok, n = [], 0, 0
        for d, c in zip(PUBLISHED, cells):
            ours = vals(rs, m, d)
            v = verdict(c, ours)
            vs.append(f"{c} vs {statistics.mean(ours):.3f}: {v}" if ours else
                      f"{c}: diverged, no number" if diverged(rs, m, d) else f"{c}: not measured")
            n, n_ok = n + bool(ours), n_ok + (bool(ours) and v in ("within 2 std", "above"))
        out.append([f"{label} vs ebmtool `{m}`", *vs, f"{n_ok} of {n} measured"])
    return table(["published cell", *(f"digit {d}" for d in PUBLISHED), "at or above the paper"], out)


def curve_rows(method: str, digit: int, seed: str, path: Path, precision: str | None = None) -> list[dict]:
    return sorted((r for r in read(path) if r["method"] == method and int(r["digit"]) == digit and r["seed"] == seed
                   and precision in (None, r.get("precision"))), key=lambda r: int(r["epoch"]))


def practices(rs, curve_path: Path) -> tuple[str, list[str]]:
    """Each lineage practice against the clean number, per (method, published digit, seed) where measured."""
    diffs: dict[str, list[float]] = {"last": [], "best": [], "w1": [], "leak": []}
    out = []
    for r in rs:
        m, d = r["method"], int(r["digit"])
        if m not in ("mle", "adaptive-nce", "joint-mle", "joint-vi") or d not in PUBLISHED or not r.get("auprc_joint"):
            continue
        clean = float(r["auprc_joint"])
        c = curve_rows(m, d, r["seed"], curve_path, r["precision"])
        if m == "adaptive-nce":  # its own points: the stages, not the 0-stage generator's epochs before them
            c = [x for x in c if int(x["epoch"]) > GEN_EPOCHS[BUDGET_NAME[0]]]
        cells = [f"{clean:.3f}", "–", "–"]
        if c and r.get("epochs") and int(c[-1]["epoch"]) == int(r["epochs"]):  # the curve reaches the final model
            top, final = int(c[-1]["epoch"]), float(c[-1]["auprc_joint"])  # the clean model on the subsample
            last = [float(x["auprc_joint"]) for x in c if int(x["epoch"]) > top - LAST_N]
            best = max(c, key=lambda x: float(x["auprc_joint"]))
            diffs["last"].append(statistics.mean(last) - final)
            diffs["best"].append(float(best["auprc_joint"]) - final)
            cells[1:] = [f"{statistics.mean(last):.3f} (last {len(last)})",
                         f"{float(best['auprc_joint']):.3f} (epoch {best['epoch']})"]
        for key, col in (("w1", "auprc_recon_weight1"), ("leak", "auprc_joint_second_permutation")):
            if r.get(col):
                diffs[key].append(float(r[col]) - clean)
            cells.append(f"{float(r[col]):.3f}" if r.get(col) else "–")
        out.append([NAMES[m], d, r["seed"], *cells])

    def say(key: str, what: str) -> str:
        v = diffs[key]
        if not v:
            return f"{what}: not measured yet."
        return (f"{what} moves AUPRC by {statistics.mean(v):+.3f} on average (from {min(v):+.3f} to {max(v):+.3f}, "
                f"{len(v)} runs).")

    return table(["row", "digit", "seed", "clean (final model, whole test part)", "mean of the last epochs (curve)",
                  "best test epoch (curve)", "recon weighted 1", "test part of the second permutation"], out), [
        say("last", f"The papers' reporting (the mean test AUPRC over the last {LAST_N} epochs; here the run's last "
                    f"epochs, at most {LAST_N}, against its final epoch on the same subsample)"),
        say("best", "Keeping the checkpoint with the best test AUPRC (a choice made with test labels)"),
        say("w1", "Weighting the reconstruction term by 1 instead of 1/(2σ²) (the same z, every digit alike)"),
        say("leak", "Scoring on the original loader's test part (a second permutation: about 72% of its normals are "
                    "in this model's training part, the fit 90% of the same 80%)")]


def score_table(rs, published: bool | None = None) -> str:
    """Mean AUPRC of every label-free score per row, over its runs on the published digits (``published`` True),
    on the other digits (False) or on all (None): rows are compared over the same digits only when split so."""
    if published is not None:
        rs = [r for r in rs if (int(r["digit"]) in PUBLISHED) == published]
    out = []
    for m in [m for m in NAMES if m not in ("random", "pca") and any(r["method"] == m for r in rs)]:
        cells = [mean([float(r[f"auprc_{s}"]) for r in rs if r["method"] == m and r.get(f"auprc_{s}")])
                 for s in SCORES]
        runs = {(int(r["digit"]), r["seed"]) for r in rs if r["method"] == m}
        digits = sorted({d for d, _ in runs})  # rows over different digits are not comparable: say which
        where = f"digit{'s' if len(digits) > 1 else ''} {', '.join(map(str, digits))}"
        out.append([f"{NAMES[m]} ({len(runs)} run{'s' if len(runs) != 1 else ''}; {where})", *cells])
    return table(["row", *SCORES], out)


def cpu_minutes(r: dict, what: str) -> float | None:
    """A row's process CPU minutes for ``what`` (train | score); rows without it: wall minutes x threads."""
    if r.get(f"{what}_cpu_s"):
        return float(r[f"{what}_cpu_s"]) / 60
    if r.get(f"{what}_wall_s"):
        return float(r[f"{what}_wall_s"]) * int(r.get("threads") or 1) / 60
    return None


def cost_table(rs) -> str:
    out = []

    def where(r):  # one line per CPU and precision: CPU-minutes of different CPUs or precisions are never averaged
        return r["cpu"].rsplit(" (", 1)[0], r["precision"]

    for m in [m for m in NAMES if m != "random"]:
        for cpu, prec in sorted({where(r) for r in rs if r["method"] == m}):
            sel = [r for r in rs if r["method"] == m and where(r) == (cpu, prec)]
            tw = [v for r in sel for v in [cpu_minutes(r, "train")] if v is not None]
            sw = [v for r in sel for v in [cpu_minutes(r, "score")] if v is not None]
            steps = [s if s != "0" else "encoder" for s in  # "0": one sample of the model's q(z|x), no chain
                     sorted({r["score_steps"] for r in sel if r.get("score_steps")}, key=int)]
            out.append([NAMES[m], sel[0]["budget"], sel[0].get("updates") or "–", mean(tw, ".1f"), mean(sw, ".1f"),
                        ", ".join(steps) or "–", len(sel), f"{cpu}, {prec}"])
    return table(["row", "budget", "updates", "training CPU-min", "scoring CPU-min", "score chain steps", "runs",
                  "CPU, precision"], out)


def curve_table(path: Path) -> str:
    rs = read(path)
    if not rs:
        return "(no curve rows yet)"
    keys = sorted({(r["method"], int(r["digit"]), r["seed"]) for r in rs}, key=lambda k: (k[1], k[0], k[2]))
    epochs = sorted({int(r["epoch"]) for r in rs})
    return table(["row", "digit", "seed", *(f"ep {e}" for e in epochs)], [
        [NAMES.get(m, m), d, s, *(by.get(e, "") for e in epochs)] for m, d, s in keys
        for by in [{int(r["epoch"]): r["auprc_joint"] for r in curve_rows(m, d, s, path)}]])


def curve_figure(path: str, curve_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rs = read(curve_path)
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
    """The v3 (or standard) report of ``results`` and ``curve_path`` (default: v3's committed CSVs)."""
    results, curve_path = results or RESULTS_DIR / FILES["v3"][0], curve_path or RESULTS_DIR / FILES["v3"][1]
    rs = read(results)
    if not rs:
        return "(no v3 rows measured yet)"
    MAIN_PRECISION[0] = main_precision(rs)
    tab, sentences = practices(rs, curve_path)
    cpus = sorted({r["cpu"] for r in rs})
    precs = [MAIN_PRECISION[0]] + [f"{p} (rows not shown in the tables)" for p in sorted(
        {r["precision"] for r in rs if r["method"] not in ("random", "pca")} - {MAIN_PRECISION[0]})]
    q = [f"`{m}`" for m in ("joint-vi", "vae") if any(r["method"] == m for r in rs)]
    return "\n\n".join([
        "AUPRC under the papers' score -log p(x, z) at a noise-free posterior z"
        + (f" ({' and '.join(q)}: at one sample of q(z|x), as the joint paper scores)" if q else "")
        + ", mean ± std (seeds); published rows from the papers' tables (recipes/papers.py). CPU: "
        f"{'; '.join(cpus)}; precision of the learned rows: {', '.join(precs)}.", main_table(rs), below_floor(rs),
        "Verdicts (ebmtool's clean number against each published cell; within 2 std = within twice the larger of "
        "the paper's std and ebmtool's seed std):", verdict_table(rs),
        "The lineage's practices, measured on the same runs (never the headline):",
        "\n".join(f"- {s}" for s in sentences), tab,
        "Every label-free score (AUPRC, mean over measured runs), on the five published digits:",
        score_table(rs, published=True), *([
            "The same on the other digits (one run per digit):", score_table(rs, published=False)]
            if any(int(r["digit"]) not in PUBLISHED and r["method"] not in ("random", "pca") for r in rs) else []),
        "Budget and cost per row (process CPU minutes, mean over runs; the first rows, without a CPU-time column, "
        "count wall minutes x threads):", cost_table(rs),
        "Learning curves (test AUPRC on a fixed stratified subsample of the test part, every epoch of the same runs; "
        "never used to choose):", curve_table(curve_path)])


# --- v2 -------------------------------------------------------------------------------------------------------------

V2_PRECISION = "bf16"  # v2's learned rows; fp32 repeats of them go to v2_precision_table only
LATENT = ["pretrain", "pretrain-matched", "mle", "adaptive-nce", "adaptive-nce-xh", "mle-warm", "nce",
          "adaptive-nce-tre", "joint-mle"]
PAPER = {m: {d: parse(v)[0] for d, v in zip(PUBLISHED, PAPER_OF[m][1]) if v != "-"}
         for m in ("mle", "adaptive-nce", "joint-mle")}


def v2_rows(path: Path | None = None, *, all_precisions: bool = False) -> list[dict]:
    """The CSV's rows; by default the learned rows of V2_PRECISION only (baselines are exact in fp32)."""
    rs = read(path or RESULTS_DIR / FILES["v2"][0])
    return rs if all_precisions else [r for r in rs if r["method"] not in LATENT or r["precision"] == V2_PRECISION]


def values(rs, method, digit, col="auprc_joint") -> list[float]:
    return [float(r[col]) for r in rs if r["method"] == method and int(r["digit"]) == digit and r.get(col)]


def v2_cell(v: list[float], chain_std: str = "") -> str:
    if not v:
        return "–"
    if len(v) == 1:
        return f"{v[0]:.3f}" + (f" (c ±{float(chain_std):.3f})" if chain_std else "")
    return f"{statistics.mean(v):.3f} ± {statistics.stdev(v):.3f} (n={len(v)})"


def digits_of(rs) -> list[int]:
    return sorted({int(r["digit"]) for r in rs})


def has(rs, ms) -> list[str]:
    return [m for m in ms if any(r["method"] == m for r in rs)]


def v2_main_table(rs) -> str:
    out = []
    for m in has(rs, [m for m in V2_NAMES if m != "data"]):
        cells = []
        for d in digits_of(rs):
            one = [r for r in rs if r["method"] == m and int(r["digit"]) == d]
            c = v2_cell(values(rs, m, d), one[0].get("auprc_joint_chain_std", "") if len(one) == 1 else "")
            cells.append(c + (f" [paper {PAPER[m][d]:.3f}]" if d in PAPER.get(m, {}) else ""))
        out.append([V2_NAMES[m], *cells])
    return table(["method", *(f"digit {d}" for d in digits_of(rs))], out)


def summary_table(rs) -> str:
    """One line per learned row: mean AUPRC (papers' score) over the digits it has, seeds per digit, digits where
    it beats both baselines by more than the seed std, FID below the 0-stage generator."""
    out = []
    for m in has(rs, LATENT):
        have = [d for d in digits_of(rs) if values(rs, m, d)]
        n = [len(values(rs, m, d)) for d in have]

        def mean_over(method):
            v = [statistics.mean(values(rs, method, d)) for d in have if values(rs, method, d)]
            return f"{statistics.mean(v):.3f}" if len(v) == len(have) else "–"

        fid = [(values(rs, m, d, "fid_features"), values(rs, "pretrain", d, "fid_features")) for d in have]
        fid_both = [(a, b) for a, b in fid if a and b]
        fid_wins = sum(statistics.mean(a) < statistics.mean(b) for a, b in fid_both)
        (wins, n2), (wins_m, n2_m) = wins_count(rs, m), wins_count(rs, m, "pretrain-matched")
        base = m in ("pretrain", "pretrain-matched")
        out.append([V2_NAMES[m], len(have), f"{min(n)}–{max(n)}", mean_over(m),
                    *([mean_over("pretrain"), mean_over("pretrain-matched")] if m != "pretrain" else ["–", "–"]),
                    mean_over("pca"), (f"{wins} of {n2}" if n2 else "– (one seed)") if not base else "–",
                    (f"{wins_m} of {n2_m}" if n2_m else "–") if not base else "–",
                    f"{fid_wins} of {len(fid_both)}" if m != "pretrain" else "–"])
    return table(["model", "digits", "seeds per digit", "mean AUPRC over its digits",
                  "0-stage generator on the same digits", "same, trained to LEBM's updates", "PCA on the same digits",
                  "beats PCA and the 0-stage generator by > std (digits with ≥ 2 seeds)",
                  "beats PCA and the update-matched generator by > std", "FID below the 0-stage generator"], out)


def latent_share(rs) -> str:
    """How much the latent terms move the papers' score: AUPRC of joint against recon alone, per learned row."""
    d = [abs(float(r["auprc_joint"]) - float(r["auprc_recon"])) for r in rs
         if r["method"] in LATENT and r["method"] not in ("pretrain", "pretrain-matched") and r.get("auprc_recon")]
    if not d:
        return ""
    said = (f"Over {len(d)} rows with a learned prior, AUPRC under the papers' score (`joint`) and under `recon` "
            f"alone differ by {statistics.mean(d):.3f} on average (at most {max(d):.3f}).")
    if max(d) < 0.02:  # below the typical seed std of a row: the latent terms do not change the ranking
        said += (" The latent terms barely move the papers' score at 32x32: what a learned prior changes there, it "
                 "changes through the generator it was trained with.")
    return said


def v2_precision_table(all_rs) -> str:
    """bf16 against fp32 for the (row, digit, seed) measured in both: AUPRC (papers' score), FID, train wall."""
    by = {}
    for r in all_rs:
        if r["method"] in LATENT:
            by.setdefault((r["method"], r["digit"], r["seed"]), {})[r["precision"]] = r
    pairs = {k: v for k, v in by.items() if {"bf16", "fp32"} <= set(v)}
    if not pairs:
        return "(no row measured in both bf16 and fp32 at this protocol yet)"
    return table(["row", "digit", "seed", "AUPRC bf16", "AUPRC fp32", "FID bf16", "FID fp32",
                  "train wall bf16 / fp32 (s)", "CPU (bf16 / fp32 where they differ)"], [
        [V2_NAMES[m], d, sd, b["auprc_joint"], f["auprc_joint"], f"{float(b['fid_features'] or 'nan'):.0f}",
         f"{float(f['fid_features'] or 'nan'):.0f}", f"{float(b['train_wall_s']):.0f} / {float(f['train_wall_s']):.0f}",
         b["cpu"] if b["cpu"] == f["cpu"] else b["cpu"] + " / " + f["cpu"]]
        for (m, d, sd), v in sorted(pairs.items()) for b, f in [(v["bf16"], v["fp32"])]])


def v2_score_table(rs) -> str:
    """Mean AUPRC of each label-free score per latent model and digit (mean over seeds)."""
    out = []
    for m in has(rs, LATENT):
        for s in SCORES:
            v = [values(rs, m, d, f"auprc_{s}") for d in digits_of(rs)]
            means = [statistics.mean(x) for x in v if x]
            out.append([V2_NAMES[m], s, *(mean(x) for x in v), mean(means),
                        f"{min(means):.3f}" if means else "–"])
    return table(["model", "score", *(f"digit {d}" for d in digits_of(rs)), "mean", "worst digit"], out)


def mse_table(rs) -> str:
    return table(["model", *(f"digit {d}: normal / anomalous" for d in digits_of(rs))], [
        [V2_NAMES[m], *(f"{statistics.mean(n):.4f} / {statistics.mean(a):.4f}" if n and a else "–"
                        for d in digits_of(rs) for n, a in [(values(rs, m, d, "mse_normal"),
                                                             values(rs, m, d, "mse_anomalous"))])]
        for m in has(rs, LATENT)])


def fid_table(rs) -> str:
    """Feature-space FID (LeNet features of each digit's fit part) of 2,000 prior samples; lower is better."""
    out = []
    for m in [m for m in ["data"] + LATENT if any(r["method"] == m and r.get("fid_features") for r in rs)]:
        v = [values(rs, m, d, "fid_features") for d in digits_of(rs)]
        g = [values(rs, "pretrain", d, "fid_features") for d in digits_of(rs)]
        wins = sum(1 for a, b in zip(v, g) if a and b and statistics.mean(a) < statistics.mean(b))
        both = sum(1 for a, b in zip(v, g) if a and b)
        out.append([V2_NAMES[m], *((f"{statistics.mean(x):.0f}" + (f" ± {statistics.stdev(x):.0f}" if len(x) > 1
                                                                    else "")) if x else "–" for x in v),
                    f"{wins} of {both}" if m not in ("data", "pretrain") else None])
    return table(["model", *(f"digit {d}" for d in digits_of(rs)), "below the 0-stage generator"], out)


def wins_table(rs, score: str = "joint") -> str:
    """Per EBM row: on how many digits its mean AUPRC beats PCA and the 0-stage generator by more than the
    larger of the two rows' seed std (digits with at least 2 seeds of both)."""
    return table(["model", "digits with ≥ 2 seeds", "beats PCA by > std", "beats the 0-stage generator by > std",
                  "beats both"], [[V2_NAMES[m], *w] for m in has(rs, LATENT[2:])
                                  for w in [wins(rs, m, score)] if w[0]])


def wins(rs, m: str, score: str = "joint", generator: str = "pretrain") -> tuple[int, int, int, int]:
    """(digits with ≥ 2 seeds of m and of the generator row, beats PCA, beats the generator, beats both), each
    by more than the larger of the two rows' seed std."""
    n = bp = bg = bb = 0
    for d in digits_of(rs):
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


def nce_table(path: Path | None = None) -> str:
    """Adaptive NCE per stage, mean over digits and seeds: NCE loss against chance and the log-ratio gap."""
    nr = v2_rows(path or RESULTS_DIR / "anomaly_mnist_nce.csv")
    if not nr:
        return "(no stage statistics yet: python -m benchmarks.anomaly --protocol v2 --nce-stats)"
    out = []
    for m, k in sorted({(r.get("method") or "adaptive-nce", int(r["stage"])) for r in nr}):
        rk = [r for r in nr if int(r["stage"]) == k and (r.get("method") or "adaptive-nce") == m]

        def avg(c):
            return statistics.mean(float(r[c]) for r in rk)

        out.append([m, k, len(rk), f"{avg('nce_first_epoch'):.3f}", f"{avg('nce_last_epoch'):.3f}",
                    f"{float(rk[0]['chance']):.3f}", f"{avg('log_r_pos'):+.3f}", f"{avg('log_r_neg'):+.3f}"])
    return table(["row", "stage", "runs", "NCE loss, first epoch", "NCE loss, last epoch", "chance 2 ln 2",
                  "mean log r on posterior samples", "on prior samples"], out)


def budget_table(rs) -> str:
    out = []
    for m in has(rs, V2_NAMES):
        mr = [r for r in rs if r["method"] == m]
        walls = [float(r["train_wall_s"]) for r in mr if r.get("train_wall_s")]
        out.append([m, mr[0]["budget"], mr[0].get("updates") or "–" if walls else "–",
                    f"{statistics.median(walls):.0f}" if walls else "–", mr[0]["cpu"], mr[0]["precision"]])
    return table(["row", "budget (per row)", "updates", "median train wall (s)", "CPU", "precision"], out)


def v2_curve_table(path: Path | None = None) -> str:
    cr = [r for r in read(path or RESULTS_DIR / FILES["v2"][1]) if r["precision"] == V2_PRECISION]
    if not cr:
        return "(no curve points yet)"
    return table(["method", "digit", "seed", "updates", "AUPRC joint", "AUPRC typicality", "AUPRC complexity",
                  "MSE normal", "MSE anomalous", "train wall (s)"], [
        [r[c] for c in ("method", "digit", "seed", "updates", "auprc_joint", "auprc_typicality", "auprc_complexity",
                        "mse_normal", "mse_anomalous", "train_wall_s")]
        for r in sorted(cr, key=lambda r: (r["method"], int(r["digit"]), int(r["seed"]), int(r["updates"])))])


def v2_figure(rs, path: str, score: str = "joint") -> None:
    """AUPRC per digit per row (mean ± std over seeds), the random baseline, the papers' numbers as markers."""
    from ebmtool.eval.plots import auprc_per_digit

    digits = digits_of(rs)
    res = {V2_NAMES[m]: {d: values(rs, m, d, f"auprc_{score}") for d in digits} for m in V2_NAMES
           if m not in ("random", "data") and any(values(rs, m, d, f"auprc_{score}") for d in digits)}
    rand = {d: float(next(r["random_auprc"] for r in rs if int(r["digit"]) == d and r.get("random_auprc")))
            for d in digits}
    ref = {f"paper: {V2_NAMES[m]}": {d: v for d, v in PAPER[m].items() if d in digits} for m in PAPER
           } if score == "joint" else None
    auprc_per_digit(res, rand, path, title=f"MNIST hold-one-digit anomaly, score: {score} (mean ± std over seeds)",
                    reference=ref)


def v2_curve_figure(path: str) -> None:
    """AUPRC (joint) and the reconstruction MSE of normals and anomalies against updates, per digit and row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cr = [r for r in read(RESULTS_DIR / FILES["v2"][1]) if r["precision"] == V2_PRECISION]
    keys = sorted({(r["method"], int(r["digit"])) for r in cr})
    digits = sorted({d for _, d in keys})
    fig, axes = plt.subplots(2, len(digits), figsize=(2.6 * len(digits), 5.2), sharex="col", squeeze=False)
    for j, d in enumerate(digits):
        for m in sorted({m for m, dd in keys if dd == d}):
            for seed in sorted({r["seed"] for r in cr if r["method"] == m and int(r["digit"]) == d}):
                pts = sorted((int(r["updates"]), r) for r in cr if r["method"] == m and int(r["digit"]) == d
                             and r["seed"] == seed)
                # adaptive NCE starts from the 0-stage generator: count its updates too
                off = int(next((r["updates"] for r in v2_rows() if r["method"] == "pretrain" and int(r["digit"]) == d
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


def v2_report(path: Path | None = None) -> str:
    rs = v2_rows(path)
    if not rs:
        return "(no rows measured yet)"
    return "\n\n".join([
        "Summary, papers' score -log p(x, z) (AUPRC, higher is better; FID lower is better):", summary_table(rs),
        latent_share(rs),
        "AUPRC under the papers' score, -log p(x, z) (higher is better):", v2_main_table(rs),
        "Every label-free score (AUPRC, mean over seeds):", v2_score_table(rs),
        "Wins under the papers' score:", wins_table(rs),
        "Reconstruction MSE at the posterior sample (pixels in [-1, 1]), normals / anomalies:", mse_table(rs),
        "Feature-space FID of 2,000 prior samples against the fit images (lower is better):", fid_table(rs),
        "Adaptive NCE, per stage (every digit and seed measured):", nce_table(),
        "Budgets:", budget_table(rs),
        f"The quality cost of bf16 (rows measured in both precisions; the tables above use {V2_PRECISION}):",
        v2_precision_table(v2_rows(path, all_precisions=True))])


# --- which split can each published cell come from (issue 35 §1) -------------------------------------------------

# MNIST's label counts per digit 0-9, training file and test file (checked against the IDX files by the tests)
MNIST_COUNTS = {"train": [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
                "test": [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]}
SPLITS = {"v3": "80/20 of all 70,000 images' normals, every image of the held-out digit in the test part",
          "standard": "the whole 10,000-image test file"}
# every published row of the three papers' MNIST anomaly tables, once (the first table that prints it)
PUBLISHED_ROWS = {"VAE": VAE, **{k: papers.LEBM_T4["rows"][k] for k in ("MEG", "BiGAN-σ")},
                  "ABP": PAPER_OF["pretrain"][1], "OT-SRI": papers.JOINT_T4["rows"]["OT-SRI"],
                  **{label.replace(", published", ""): cells for m, (label, cells) in PAPER_OF.items()
                     if m != "pretrain"}}


def worst_ap(n: int, n_anomalous: int) -> float:
    """The average precision of the worst ranking, every anomaly below every normal: (1/P) sum_i i / (N - P + i)
    for P anomalies among N. (The papers' trapezoidal auc(recall, precision), ``worst_auprc``, is lower by less
    than 0.001 at these sizes; a cell is called impossible only below both.)"""
    return sum(i / (n - n_anomalous + i) for i in range(1, n_anomalous + 1)) / n_anomalous


@functools.cache
def split_counts(split: str, digit: int) -> tuple[int, int]:
    """(test images, anomalies) of ``split`` for held-out ``digit``, from the label counts alone, through the data
    stage's own split functions (no image is read)."""
    import torch

    from ebmtool.data.prepare import protocol_split, standard_split

    labels = torch.cat([torch.full((c,), k) for f in ("train", "test") for k, c in enumerate(MNIST_COUNTS[f])])
    test = (protocol_split(labels, digit)[1] if split == "v3" else
            standard_split(labels, digit, sum(MNIST_COUNTS["train"]))[1])
    return len(test), int((labels[test] == digit).sum())


def floor(split: str, digit: int) -> float:
    """The lowest AUPRC any score can reach on ``split`` for ``digit`` (the lower of the two estimators)."""
    n, a = split_counts(split, digit)
    return min(worst_ap(n, a), worst_auprc(n, a))


def possible(cell: str, digit: int) -> list[str]:
    """The splits a published cell can come from: those whose worst AUPRC it is not below."""
    return [s for s in SPLITS if parse(cell)[0] >= floor(s, digit)]


def splits_table() -> str:
    """Per split and held-out digit: the test part's composition, the random and the worst AUPRC."""
    out = []
    for s in SPLITS:
        comp = [split_counts(s, d) for d in PUBLISHED]
        out += [[f"{s}: anomalies / test images", *(f"{a:,} / {n:,}" for n, a in comp)],
                [f"{s}: random AUPRC (the prevalence)", *(f"{a / n:.3f}" for n, a in comp)],
                [f"{s}: worst AUPRC (every anomaly ranked last)", *(f"{worst_ap(n, a):.3f}" for n, a in comp)]]
    return table(["split", *(f"digit {d}" for d in PUBLISHED)], out)


def feasibility_table() -> str:
    """Every published cell and the splits it is possible under."""
    def says(cell: str, d: int) -> str:
        ok = possible(cell, d)
        return f"{cell}: " + (" and ".join(ok) if len(ok) < len(SPLITS) else "both") if ok else f"{cell}: neither"

    return table(["published row", *(f"digit {d}" for d in PUBLISHED)],
                 [[label, *(says(c, d) for d, c in zip(PUBLISHED, cells))] for label, cells in PUBLISHED_ROWS.items()])


def side_by_side(v3: list[dict], standard: list[dict]) -> str:
    """One line per published cell ebmtool measures a method for: the splits it is possible under, ebmtool's clean
    number and verdict on each split measured so far ("—" where a split has no run yet)."""
    prec = {"v3": main_precision(v3), "standard": main_precision(standard)}
    out = []
    for m, (label, cells) in PAPER_OF.items():
        if m == "joint-vi" and not any(r["method"] == m for r in v3 + standard):
            continue
        for d, c in zip(PUBLISHED, cells):
            line = [f"{label.replace(', published', '')} (`{m}`)", d, c, " and ".join(possible(c, d)) or "neither"]
            for split, rs in (("v3", v3), ("standard", standard)):
                MAIN_PRECISION[0] = prec[split]
                ours = vals(rs, m, d)
                v = verdict(c, ours) + ("" if split in possible(c, d) else f" (the cell cannot come from {split})")
                line += [fmt(ours), v] if ours else ["—", "—"]
            out.append(line)
    return table(["published cell", "digit", "paper", "possible under", "ebmtool v3", "verdict v3",
                  "ebmtool standard", "verdict standard"], out)


def splits_report(v3: Path | None = None, standard: Path | None = None) -> str:
    """The comparability report: compositions, feasibility, and the verdicts under both splits side by side."""
    v3_rs = read(v3 or RESULTS_DIR / FILES["v3"][0])
    std_rs = read(standard or RESULTS_DIR / FILES["standard"][0])
    return "\n\n".join([
        "Which test composition can each published cell come from? From MNIST's label counts alone (no training): "
        + "; ".join(f"{s}: {what}" for s, what in SPLITS.items()) + ". The worst AUPRC is the average precision when "
        "every anomaly ranks below every normal, (1/P) Σᵢ i / (N − P + i) for P anomalies among N.", splits_table(),
        "Published cells and the splits they are possible under (a cell below a split's worst AUPRC cannot come from "
        "it):", feasibility_table(),
        "Verdicts under both splits (ebmtool's clean number, mean over seeds; within 2 std = within twice the larger "
        "of the paper's std and ebmtool's seed std):", side_by_side(v3_rs, std_rs)])


# --- the generated blocks -----------------------------------------------------------------------------------------

def block(protocol: str) -> str:
    """The text of a generated block (``protocol`` v2, v3, or splits; what --write puts between its markers)."""
    if protocol == "standard":
        return report(*(RESULTS_DIR / f for f in FILES["standard"]))
    return {"v2": v2_report, "v3": report, "splits": splits_report}[protocol]()


def write_block(protocol: str, path: Path | None = None) -> None:
    """Replace ``protocol``'s block in the markdown file ``path`` (default: its results page) with the report."""
    replace_block(path or TARGETS[protocol], *BLOCKS[protocol], block(protocol))


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.anomaly_report", description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=list(FILES), default="v3")
    ap.add_argument("--budget", choices=list(GEN_EPOCHS), default="cpu",
                    help="lineage: the rows of --budget lineage (~10k updates); paper: those of make "
                         "bench-anomaly-v3-paper (v3 and standard)")
    ap.add_argument("--write", nargs="?", const="", metavar="FILE",
                    help="rewrite the protocol's generated block of FILE (default: its page in docs/results/) instead "
                         "of printing")
    ap.add_argument("--figure", help="write the protocol's figure here (v2: AUPRC per digit; --curve, v3: curves)")
    ap.add_argument("--score", default="joint", choices=list(SCORES), help="the score v2's AUPRC figure shows")
    ap.add_argument("--curve", action="store_true", help="print the learning-curve table instead")
    ap.add_argument("--splits", action="store_true",
                    help="the published cells under both MNIST splits (v3 and standard) side by side, instead")
    a = ap.parse_args(argv)
    if a.splits:
        print(splits_report()) if a.write is None else write_block("splits", Path(a.write) if a.write else None)
        return
    write = None if a.write is None else Path(a.write) if a.write else TARGETS.get(a.protocol)
    if a.write is not None and (a.protocol not in BLOCKS or a.budget != "cpu") or a.budget != "cpu" and a.protocol == "v2":
        ap.error(f"--protocol {a.protocol} has no " + (f"generated block at --budget {a.budget}" if a.write is not None
                                                       else f"{a.budget} budget"))
    if a.protocol == "v2":
        print(v2_curve_table() if a.curve else v2_report()) if write is None else write_block("v2", write)
        if a.figure:
            v2_curve_figure(a.figure) if a.curve else v2_figure(v2_rows(), a.figure, a.score)
        return
    BUDGET_NAME[0] = a.budget
    sfx = "" if a.budget == "cpu" else f"_{a.budget}"
    res, cur = (RESULTS_DIR / f.replace(".csv", f"{sfx}.csv") for f in FILES[a.protocol])
    if write is not None:
        replace_block(write, *BLOCKS[a.protocol], report(res, cur))
    else:
        print(curve_table(cur) if a.curve else report(res, cur))
    if a.figure:
        curve_figure(a.figure, cur)


if __name__ == "__main__":
    main()
