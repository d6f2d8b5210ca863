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


def nce_curves_png(stage_losses: dict[int, Sequence[float]], path: str, *, title: str = "NCE loss per stage",
                   force: bool = True):
    """Per-stage NCE loss by epoch (adaptive-NCE Fig. 4). ``stage_losses``: {stage index from 0 (the artifact's
    ``history.stageK.nce``): per-epoch losses}; stages are labelled from 1, as the CLI counts them (``--stages``,
    the progress lines). Epochs continue across stages on one line (one epoch per stage is still a line, not
    isolated dots), each stage's epochs marked in its own colour, stage boundaries dotted; the chance level 2 ln 2
    (a classifier that cannot tell data from noise) is marked. The legend sits beside the axes, off the curves."""
    fig, ax = new_figure(size=(7.4, 4.2))
    xs_all: list[int] = []
    ys_all: list[float] = []
    parts = []
    for k in sorted(stage_losses):
        v = [float(y) for y in stage_losses[k]]
        xs = list(range(len(xs_all) + 1, len(xs_all) + len(v) + 1))
        parts.append((k, xs, v))
        xs_all += xs
        ys_all += v
    ax.plot(xs_all, ys_all, color="0.55", linewidth=1.2, label="all epochs", zorder=1)
    for k, xs, v in parts:
        ax.plot(xs, v, marker="o", markersize=4, linewidth=2, label=f"stage {k + 1}", zorder=2)
        if xs[0] > 1:
            ax.axvline(xs[0] - 0.5, color="0.7", linestyle=":", linewidth=1)
    ax.axhline(CHANCE_NCE, color="0.35", linestyle="--", linewidth=1, label="chance 2 ln 2 = 1.386")
    _integer_x(ax)
    ax.set(title=title, xlabel="epoch (cumulative over stages)", ylabel="NCE loss (nats)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    save_figure(fig, path, force=force)
    return fig


def loss_curves_png(history: dict[str, Sequence[float]], path: str, *, title: str = "training", force: bool = True):
    """Per-epoch means of the logged scalars, one panel per quantity, each on its own y axis (``loss_e`` ~0.5 and
    ``loss_g`` ~1000 cannot share one): losses first, then the others (grad norms, log-ratio means, ...); the
    panel's title names its quantity, so no legend covers a curve. ``title``: the figure's (model and data)."""
    names = [k for k in history if k.startswith("loss")] + [k for k in history if not k.startswith("loss")]
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    ncols = min(3, len(names))
    nrows = -(-len(names) // ncols)
    fig = Figure(figsize=(4.2 * ncols, 3.2 * nrows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    for i, k in enumerate(names):
        ax = fig.add_subplot(nrows, ncols, i + 1)
        ax.grid(True, alpha=0.3, linewidth=0.6)
        v = np.asarray(history[k], float)
        ax.plot(np.arange(1, len(v) + 1), v, marker="o" if len(v) < 30 else None, markersize=3, linewidth=1.5)
        _integer_x(ax)
        ax.set(title=k, xlabel="epoch", ylabel="loss (nats, per-epoch mean)" if k.startswith("loss")
               else "per-epoch mean")
    fig.suptitle(title)
    save_figure(fig, path, force=force)
    return fig


def energy_profile_png(steps: Sequence[int], log_probs: np.ndarray, path: str, *,
                       title: str = "Langevin dynamics: energy along the chains", force: bool = True):
    """Energy E(z) = -log pi(z) (up to the constant log Z) along Langevin chains, as in LEBM Fig. 3-4: the mean
    over chains with the 10-90% band and a few single chains; ``log_probs`` is (T, B)."""
    fig, ax = new_figure()
    _energy_axes(ax, steps, log_probs)
    ax.set_title(title)
    save_figure(fig, path, force=force)
    return fig


def _energy_axes(ax, steps: Sequence[int], log_probs: np.ndarray) -> None:
    energy = -np.asarray(log_probs, float)
    steps = np.asarray(steps, float)
    ax.fill_between(steps, np.quantile(energy, 0.1, 1), np.quantile(energy, 0.9, 1), alpha=0.25,
                    label="10-90% of chains")
    for j in range(min(4, energy.shape[1])):
        ax.plot(steps, energy[:, j], linewidth=0.7, alpha=0.6, color="0.4", label="single chains" if j == 0 else None)
    ax.plot(steps, energy.mean(1), linewidth=2, label=f"mean of {energy.shape[1]} chains")
    _integer_x(ax)
    ax.set(xlabel="Langevin step", ylabel="energy −log π(z) (nats, up to log Z)")
    ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)


def trajectory_figure(steps: Sequence[int], images_u8, log_probs: Optional[np.ndarray], path: str, *,
                      title: str = "Langevin chains", force: bool = True):
    """``sample --trajectory``'s chains as the README shows them: an image grid, one row per chain and time left to
    right (``images_u8``: (T, chains, C, H, W) uint8, columns labelled by Langevin step), and, below it, the energy
    along the chains (``log_probs`` (T, B), LEBM Fig. 3-4) when the artifact has it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from ebmtool.images import tile

    t = images_u8
    n_t, chains, _, h, w = t.shape
    grid = tile(t.transpose(0, 1).reshape(-1, *t.shape[2:]), nrow=n_t)  # (3, H', W') uint8
    height = 4.6
    grid_w = min(12.0, max(2.5, (height - 0.9) * grid.shape[2] / grid.shape[1] + 0.8))
    cols = 2 if log_probs is not None else 1
    fig = Figure(figsize=(grid_w + (6.2 if cols == 2 else 0), height), layout="constrained")
    FigureCanvasAgg(fig)
    gs = fig.add_gridspec(1, cols, width_ratios=[grid_w, 6.2][:cols])
    ax = fig.add_subplot(gs[0])
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    every = -(-n_t // 16)  # at most 16 step labels
    ax.set_xticks([1 + j * (w + 1) + (w - 1) / 2 for j in range(0, n_t, every)],
                  [str(int(steps[j])) for j in range(0, n_t, every)])
    ax.set_yticks([1 + c * (h + 1) + (h - 1) / 2 for c in range(chains)], [str(c + 1) for c in range(chains)])
    ax.tick_params(length=0, labelsize="small")
    ax.set(xlabel="Langevin step", ylabel="chain", title="images (time left to right)")
    fig.suptitle(title)
    if log_probs is not None:
        energy = fig.add_subplot(gs[1])
        _energy_axes(energy, steps, log_probs)
        energy.set_title("energy along the chains")
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
    for ax in (pr, roc):  # legends below the axes: a curve can pass through any corner
        ax.set_aspect("equal")
        ax.legend(fontsize="small", loc="upper center", bbox_to_anchor=(0.5, -0.16))
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


def _name(parent: Optional[dict]) -> str:
    """A lineage entry's file name ("tensors in memory" for the Python API's tensors)."""
    if not parent:
        return "?"
    return Path(parent["path"]).name if parent.get("path") else f"{parent.get('kind', 'data')} in memory"


def _parent(art, kind: str, nth: int = 0) -> Optional[dict]:
    found = [p for p in art.parents if isinstance(p, dict) and p.get("kind") == kind]
    return found[nth] if len(found) > nth else None


def anomaly_title(model: str, data: str, anomaly_classes: Optional[Sequence[int]], ood: Optional[str],
                  score: str = "joint") -> str:
    """The title of an anomaly figure: the model, the data and what the anomalies are."""
    what = (f"anomaly class {', '.join(map(str, anomaly_classes))}" if anomaly_classes
            else f"OOD data {Path(ood).name}" if ood else "anomalies = label 1")
    return f"{model} on {data}: {what} ({score} score)"


def plot_artifact(art, out: str, *, scale: Optional[int] = None, force: bool = True) -> str:
    """One figure for an artifact, chosen by what it holds; returns what was drawn. Titles name the model, the
    data (from the artifact's lineage) and, for scores, the anomaly class.

    model with per-stage NCE history -> NCE loss per stage (adaptive-NCE Fig. 4); other models -> loss curves,
    one panel per quantity; samples with a trajectory -> the chains' image grid (one row per chain, as
    ``sample --trajectory-png``) over the energy along them (LEBM Fig. 3-4, adaptive-NCE Fig. 5); scores ->
    precision-recall and ROC curves; dataset / samples / reconstructions -> image grid (PNG only).
    """
    from ebmtool.errors import UserError

    t = art.tensors
    figure_format(out)  # a wrong extension is refused before anything is drawn

    def unscaled(what: str) -> str:  # --scale is honoured by image grids only: refused, not ignored, elsewhere
        if scale is not None:
            raise UserError(f"--scale: it upscales an image grid, and this {art.kind} artifact is plotted as {what}")
        return what

    if art.kind == "model":
        who = f"{art.meta.get('method', 'model')} model {Path(art.path).name} on {_name(_parent(art, 'dataset'))}"
        stages = {int(k.split(".")[1][len("stage"):]): v.tolist() for k, v in t.items()
                  if k.startswith("history.stage") and k.endswith(".nce")}
        if stages:
            what = unscaled("NCE loss per stage")
            nce_curves_png(stages, out, title=f"NCE loss per stage: {who}", force=force)
            return what
        hist = {k[len("history."):]: v.tolist() for k, v in t.items() if k.startswith("history.") and v.ndim == 1}
        if not hist:
            raise UserError(f"{art.path}: model has no training history to plot")
        what = unscaled("training curves per epoch")
        loss_curves_png(hist, out, title=f"training: {who}", force=force)
        return what
    if art.kind == "samples" and ("trajectory.images" in t or "trajectory.log_prob" in t):
        who = f"{art.meta.get('model_method', '')} model {_name(_parent(art, 'model'))}".strip()
        steps = t["trajectory.steps"].tolist()
        lp = t["trajectory.log_prob"].numpy() if "trajectory.log_prob" in t else None
        if "trajectory.images" not in t:  # written before the images were kept: the energy profile alone
            what = unscaled("energy along the Langevin chains")
            energy_profile_png(steps, lp, out, title=f"Langevin chains of the {who}: energy", force=force)
            return what
        what = unscaled("the Langevin chains' images and energy")
        trajectory_figure(steps, t["trajectory.images"], lp, out, title=f"Langevin chains of the {who}", force=force)
        return what
    if art.kind == "scores":
        what = unscaled("precision-recall and ROC curves")
        y, scores = t.get("labels"), t.get("scores")
        if scores is None or scores.ndim != 1:
            raise UserError(f"{art.path}: scores artifact has no 1-d tensor 'scores' to plot")
        if y is None or y.shape != scores.shape or not set(y.unique().tolist()) == {0, 1}:
            raise UserError(f"{art.path}: the precision-recall and ROC curves need labels 0 (normal) and 1 "
                            f"(anomaly), one per score; this scores artifact has "
                            f"{'none' if y is None else 'labels ' + str(sorted(set(y.unique().tolist())))[:40]}")
        m = art.meta
        title = anomaly_title(_name(_parent(art, "model")), _name(_parent(art, "dataset")), m.get("anomaly_classes"),
                              m.get("ood_data"), m.get("score", "joint"))
        pr_curve_png(y.numpy(), scores.double().numpy(), out, title=title, force=force)
        return what
    if "images" in t and t["images"].ndim == 4:
        import torch

        from ebmtool.images import check_grid_path, save_grid, to_uint8

        check_grid_path(out, "-o")
        imgs = t["images"]
        save_grid((imgs if imgs.dtype == torch.uint8 else to_uint8(imgs))[:100], out, scale=scale, force=force)
        return "image grid"
    raise UserError(f"{art.path}: nothing to plot in a {art.kind} artifact")
