"""Charts with matplotlib (Agg, no display needed): NCE loss per stage with the chance level 2 ln 2
(adaptive-NCE Fig. 4), loss curves, Langevin energy profiles (LEBM Fig. 3-4, adaptive-NCE Fig. 5), precision-recall
and ROC curves with the random baseline, and AUPRC per digit per method with error bars.

Every function writes the figure to ``path`` (format from the extension: .png, .pdf or .svg; written atomically)
and returns the matplotlib ``Figure`` so that callers and tests can inspect its axes. Figures are built with
``matplotlib.figure.Figure`` directly (no pyplot state), so they are safe to make in a loop or a thread.
Image grids (samples, trajectories, reconstruction pairs) are not charts: see :func:`ebmtool.images.save_grid`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

FORMATS = ("png", "pdf", "svg")
CHANCE_NCE = 2 * math.log(2)  # NCE loss (data term + noise term) of a classifier that always says 1/2


def figure_format(path: str) -> str:
    """png | pdf | svg from the file's extension; anything else is a one-line UserError."""
    from ebmtool.errors import UserError

    ext = Path(path).suffix.lower().lstrip(".")
    if ext not in FORMATS:
        raise UserError(f"{path}: the figure format is chosen by the extension; use .png, .pdf or .svg")
    return ext


def new_figure(ncols: int = 1, size: tuple[float, float] = (6.4, 4.2)):
    """(Figure, axes) with an Agg canvas; ``axes`` is one Axes for ncols=1, else a list."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(size[0] * ncols, size[1]), layout="constrained")
    FigureCanvasAgg(fig)
    axes = [fig.add_subplot(1, ncols, i + 1) for i in range(ncols)]
    for ax in axes:
        ax.grid(True, alpha=0.3, linewidth=0.6)
    return fig, (axes[0] if ncols == 1 else axes)


def save_figure(fig, path: str, dpi: int = 150, force: bool = True) -> None:
    """Write ``fig`` to ``path`` in the format its extension names, through the one atomic write
    (:func:`ebmtool.files.atomic_write`). Inside ebmtool (torch loaded) it goes through artifacts.atomic_write, which
    under torchrun lets rank 0 alone write; a torch-free caller (recipes/table.py) calls the torch-free one directly,
    so rendering a table's figure does not import torch. ``force`` False: a file that reached ``path`` meanwhile
    is kept and this write refused."""
    import sys

    fmt = figure_format(path)
    if "torch" in sys.modules:
        from ebmtool.artifacts import atomic_write
    else:
        from ebmtool.files import atomic_write
    with atomic_write(path, overwrite=force) as tmp:
        fig.savefig(tmp, format=fmt, dpi=dpi)


def _integer_x(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], path: str, *, title: str,
               xlabel: str, ylabel: str, integer_x: bool = True, hlines: Sequence[tuple[float, str]] = (),
               size: tuple[float, float] = (6.4, 4.2), force: bool = True):
    """series: (label, xs, ys) triples drawn as lines on shared axes; ``hlines``: (y, label) reference lines."""
    fig, ax = new_figure(size=size)
    for label, xs, ys in series:
        xs, ys = np.asarray(xs, float), np.asarray(ys, float)
        ax.plot(xs, ys, label=label, marker="o" if len(xs) < 30 else None, markersize=3, linewidth=1.5)
    for y, label in hlines:
        ax.axhline(y, color="0.35", linestyle="--", linewidth=1, label=label)
    if integer_x:
        _integer_x(ax)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    ax.legend(fontsize="small")
    save_figure(fig, path, force=force)
    return fig


def nce_curves_png(stage_losses: dict[int, Sequence[float]], path: str, force: bool = True):
    """Per-stage NCE loss by epoch (adaptive-NCE Fig. 4); epochs continue across stages; the chance level
    2 ln 2 (a classifier that cannot tell data from noise) is marked."""
    series, start = [], 0
    for k in sorted(stage_losses):
        v = list(stage_losses[k])
        series.append((f"stage {k}", list(range(start + 1, start + len(v) + 1)), v))
        start += len(v)
    return line_chart(series, path, title="NCE loss per stage", xlabel="epoch (cumulative over stages)",
                      ylabel="NCE loss (nats)", hlines=[(CHANCE_NCE, "chance 2 ln 2 = 1.386")], force=force)


def loss_curves_png(history: dict[str, Sequence[float]], path: str, *, title: str = "training", force: bool = True):
    """Per-epoch means of the logged scalars: losses on the left; the others (grad norms, log-ratio means, ...)
    on a second panel when there are any, since their scales differ."""
    losses = {k: v for k, v in history.items() if k.startswith("loss")}
    other = {k: v for k, v in history.items() if k not in losses}
    if not losses:
        losses, other = other, {}
    fig, axes = new_figure(ncols=2 if other else 1)
    axes = axes if other else [axes]
    for ax, group, ylabel in ((axes[0], losses, "loss (nats, per-epoch mean)"),
                              (axes[-1] if other else None, other, "value (per-epoch mean)")):
        if ax is None:
            continue
        for k, v in group.items():
            xs = np.arange(1, len(v) + 1)
            ax.plot(xs, np.asarray(v, float), label=k, marker="o" if len(v) < 30 else None, markersize=3)
        _integer_x(ax)
        ax.set(xlabel="epoch", ylabel=ylabel)
        ax.legend(fontsize="small")
    axes[0].set_title(f"{title}: losses")
    if other:
        axes[-1].set_title(f"{title}: other logged scalars")
    save_figure(fig, path, force=force)
    return fig


def energy_profile_png(steps: Sequence[int], log_probs: np.ndarray, path: str, force: bool = True):
    """Energy E(z) = -log pi(z) (up to the constant log Z) along Langevin chains, as in LEBM Fig. 3-4: the mean
    over chains with the 10-90% band and a few single chains; ``log_probs`` is (T, B)."""
    energy = -np.asarray(log_probs, float)
    steps = np.asarray(steps, float)
    fig, ax = new_figure()
    ax.fill_between(steps, np.quantile(energy, 0.1, 1), np.quantile(energy, 0.9, 1), alpha=0.25,
                    label="10-90% of chains")
    for j in range(min(4, energy.shape[1])):
        ax.plot(steps, energy[:, j], linewidth=0.7, alpha=0.6, color="0.4", label="single chains" if j == 0 else None)
    ax.plot(steps, energy.mean(1), linewidth=2, label=f"mean of {energy.shape[1]} chains")
    _integer_x(ax)
    ax.set(title="Langevin dynamics: energy along the chains", xlabel="Langevin step",
           ylabel="energy −log π(z) (nats, up to log Z)")
    ax.legend(fontsize="small")
    save_figure(fig, path, force=force)
    return fig


def pr_curve_png(y: np.ndarray, scores: np.ndarray, path: str, *, title: str = "anomaly detection (anomaly = 1)",
                 force: bool = True):
    """Precision-recall and ROC curves side by side, each with the random baseline (precision = fraction of
    anomalies; TPR = FPR). The PR legend gives the AUPRC of ``anomaly``'s table (the papers' trapezoidal
    ``auc(recall, precision)``, :func:`ebmtool.eval.anomaly.metrics`) and, named as such, the average precision.
    ``force`` False: a file that reached ``path`` meanwhile (another run's) is kept and this write refused."""
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score, roc_curve

    y, scores = np.asarray(y), np.asarray(scores, float)
    base = float(np.mean(y == 1))
    precision, recall, _ = precision_recall_curve(y, scores)
    fpr, tpr, _ = roc_curve(y, scores)
    fig, (pr, roc) = new_figure(ncols=2, size=(4.6, 4.2))
    pr.step(recall, precision, where="post", label=f"score (AUPRC {auc(recall, precision):.3f}, average precision "
                                                   f"{average_precision_score(y, scores):.3f})")
    pr.axhline(base, color="0.35", linestyle="--", linewidth=1, label=f"random (AUPRC {base:.3f})")
    pr.set(xlabel="recall (fraction of anomalies found)", ylabel="precision (fraction flagged that are anomalies)",
           title="precision-recall", xlim=(0, 1), ylim=(0, 1.01))
    roc.plot(fpr, tpr, label=f"score (AUROC {roc_auc_score(y, scores):.3f})")
    roc.plot([0, 1], [0, 1], color="0.35", linestyle="--", linewidth=1, label="random (AUROC 0.500)")
    roc.set(xlabel="false-positive rate (fraction of normals)", ylabel="true-positive rate (fraction of anomalies)",
            title="ROC", xlim=(0, 1), ylim=(0, 1.01))
    for ax in (pr, roc):
        ax.set_aspect("equal")
        ax.legend(fontsize="small", loc="lower right" if ax is roc else "best")
    fig.suptitle(title)
    save_figure(fig, path, force=force)
    return fig


def auprc_per_digit(results: dict[str, dict[int, list[float]]], random: dict[int, float], path: str,
                    title: str = "AUPRC per held-out digit (mean ± std over seeds)",
                    reference: Optional[dict[str, dict[int, float]]] = None):
    """Grouped bars: one group per digit, one bar per method (mean over the list, std as error bar), the random
    baseline of each digit (its anomaly fraction) marked as a short dashed line across the group.
    ``reference``: other numbers per digit (e.g. a paper's) drawn as markers over the groups."""
    methods = list(results)
    digits = sorted({int(d) for r in results.values() for d in r} | {int(d) for d in random})
    fig, ax = new_figure(size=(max(6.4, 0.9 * len(digits) + 2.5), 4.2))
    width = 0.8 / max(1, len(methods))
    x = np.arange(len(digits))
    for i, m in enumerate(methods):
        vals = [np.asarray(results[m].get(d, []), float) for d in digits]
        means = np.array([v.mean() if len(v) else np.nan for v in vals])
        stds = np.array([v.std(ddof=1) if len(v) > 1 else 0.0 for v in vals])
        ns = sorted({len(v) for v in vals if len(v)})
        n_txt = f"n={ns[0]}" if len(ns) == 1 else f"n={ns[0]}-{ns[-1]}" if ns else "n=0"
        ax.bar(x - 0.4 + width * (i + 0.5), means, width, yerr=stds, capsize=2, label=f"{m} ({n_txt})",
               error_kw={"linewidth": 0.8})
    marked = [j for j, d in enumerate(digits) if d in random]
    if marked:
        ax.hlines([float(random[digits[j]]) for j in marked], x[marked] - 0.45, x[marked] + 0.45, colors="k",
                  linestyles="--", linewidth=1.2, label="random (anomaly fraction)")
    for i, (name, vals) in enumerate((reference or {}).items()):
        xs = [x[j] for j, d in enumerate(digits) if vals.get(d) is not None]
        ax.plot(xs, [vals[d] for d in digits if vals.get(d) is not None], linestyle="none",
                marker="Dvs^o"[i % 5], markersize=6, markeredgecolor="k", color="white", label=name)
    ax.set_xticks(x, [str(d) for d in digits])
    ax.set(xlabel="held-out (anomalous) digit", ylabel="AUPRC", ylim=(0, 1), title=title)
    ax.legend(fontsize="small", ncols=min(3, len(methods) + 1), loc="upper center", bbox_to_anchor=(0.5, -0.14))
    save_figure(fig, path)
    return fig


def bar_panels(panels: Sequence[Sequence[dict]], path: str, *, title: str = ""):
    """A grid of grouped-bar panels (rows x columns), each a dict with ``title``, ``xlabel``, ``ylabel``,
    ``groups`` (tick labels) and ``series`` ({label: values per group, None = no bar}); optional ``baseline``
    (value, label) as a dashed line and ``ylim``. Used for the recipes' tables (paper | ebmtool side by side: the
    two are often measured on different data or feature spaces, so each panel has its own y axis)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    nr, nc = len(panels), max(len(r) for r in panels)
    fig = Figure(figsize=(4.8 * nc, 3.6 * nr), layout="constrained")
    FigureCanvasAgg(fig)
    for r, row in enumerate(panels):
        for c, pan in enumerate(row):
            ax = fig.add_subplot(nr, nc, r * nc + c + 1)
            ax.grid(True, axis="y", alpha=0.3, linewidth=0.6)
            groups, series = list(pan["groups"]), dict(pan["series"])
            x = np.arange(len(groups))
            width = 0.8 / max(1, len(series))
            for i, (label, vals) in enumerate(series.items()):
                ys = np.array([np.nan if v is None else float(v) for v in vals])
                ax.bar(x - 0.4 + width * (i + 0.5), ys, width, label=label)
                for xi, yi in zip(x - 0.4 + width * (i + 0.5), ys):
                    if np.isnan(yi):  # say so rather than leave a gap that reads as zero
                        ax.annotate("n/a", (xi, 0), ha="center", va="bottom", fontsize=7, color="0.4")
            if pan.get("baseline") is not None:
                ax.axhline(pan["baseline"][0], color="k", linestyle="--", linewidth=1, label=pan["baseline"][1])
            ax.set_xticks(x, groups)
            ax.set(title=pan.get("title", ""), xlabel=pan.get("xlabel", ""), ylabel=pan.get("ylabel", ""))
            if pan.get("ylim") is not None:
                ax.set_ylim(*pan["ylim"])
            if series:
                ax.legend(fontsize="x-small")
    if title:
        fig.suptitle(title)
    save_figure(fig, path)
    return fig


def plot_artifact(art, out: str, *, scale: Optional[int] = None, force: bool = True) -> str:
    """One figure for an artifact, chosen by what it holds; returns what was drawn. ``force`` False: a file that
    reached ``out`` meanwhile (another run's) is kept and this write refused.

    model with per-stage NCE history -> NCE loss per stage (adaptive-NCE Fig. 4); other models -> loss curves;
    samples with a trajectory -> energy profile along the chains (LEBM Fig. 3-4, adaptive-NCE Fig. 5);
    scores -> precision-recall and ROC curves; dataset / samples / reconstructions -> image grid (PNG only).
    """
    from ebmtool.errors import UserError

    t = art.tensors
    fmt = figure_format(out)

    def unscaled(what: str) -> str:  # --scale is honoured by image grids only: refused, not ignored, elsewhere
        if scale is not None:
            raise UserError(f"--scale: it upscales an image grid, and this {art.kind} artifact is plotted as {what}")
        return what

    if art.kind == "model":
        stages = {int(k.split(".")[1][len("stage"):]): v.tolist() for k, v in t.items()
                  if k.startswith("history.stage") and k.endswith(".nce")}
        if stages:
            what = unscaled("NCE loss per stage")
            nce_curves_png(stages, out, force=force)
            return what
        hist = {k[len("history."):]: v.tolist() for k, v in t.items() if k.startswith("history.") and v.ndim == 1}
        if not hist:
            raise UserError(f"{art.path}: model has no training history to plot")
        what = unscaled("training curves per epoch")
        loss_curves_png(hist, out, title=f"{art.meta.get('method', 'model')} training", force=force)
        return what
    if art.kind == "samples" and "trajectory.log_prob" in t:
        what = unscaled("energy along the Langevin chains")
        energy_profile_png(t["trajectory.steps"].tolist(), t["trajectory.log_prob"].numpy(), out, force=force)
        return what
    if art.kind == "scores":
        what = unscaled("precision-recall and ROC curves")
        pr_curve_png(t["labels"].numpy(), t["scores"].numpy(), out, force=force)
        return what
    if "images" in t and t["images"].ndim == 4:
        import torch

        from ebmtool.images import save_grid, to_uint8

        if fmt != "png":
            raise UserError(f"{out}: an image grid is written as .png")
        imgs = t["images"]
        save_grid((imgs if imgs.dtype == torch.uint8 else to_uint8(imgs))[:100], out, scale=scale, force=force)
        return "image grid"
    raise UserError(f"{art.path}: nothing to plot in a {art.kind} artifact")
