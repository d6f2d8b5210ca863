"""Lightweight PNG plots with Pillow (no plotting library needed): line charts for NCE loss curves
(adaptive-NCE Fig. 4), Langevin energy profiles (LEBM Fig. 3-4, adaptive-NCE Fig. 5) and precision-recall
curves. Image grids (samples, trajectories, reconstruction pairs) go through torchvision's save_image."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ebmtool.images import save_grid, to_uint8

PALETTE = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75),
           (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], path: str, *, title: str,
               xlabel: str, ylabel: str, size=(640, 420)) -> None:
    """series: (label, xs, ys) triples drawn as polylines on shared axes; written atomically."""
    from PIL import Image, ImageDraw

    w, h = size
    left, right, top, bottom = 70, 20, 40, 50
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    xs_all = np.concatenate([np.asarray(s[1], float) for s in series])
    ys_all = np.concatenate([np.asarray(s[2], float) for s in series])
    x0, x1 = float(xs_all.min()), float(xs_all.max())
    y0, y1 = float(ys_all.min()), float(ys_all.max())
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pad = 0.05 * (y1 - y0)
    y0, y1 = y0 - pad, y1 + pad

    def px(x, y):
        return (left + (x - x0) / (x1 - x0) * (w - left - right), h - bottom - (y - y0) / (y1 - y0) * (h - top - bottom))

    d.rectangle([left, top, w - right, h - bottom], outline="black")
    for i in range(5):
        yv = y0 + i * (y1 - y0) / 4
        _, yy = px(x0, yv)
        d.line([left - 4, yy, left, yy], fill="black")
        d.text((4, yy - 6), f"{yv:.3g}", fill="black")
        xv = x0 + i * (x1 - x0) / 4
        xx, _ = px(xv, y0)
        d.line([xx, h - bottom, xx, h - bottom + 4], fill="black")
        d.text((xx - 10, h - bottom + 8), f"{xv:.3g}", fill="black")
    d.text((left, 10), title, fill="black")
    d.text((w // 2 - 30, h - 18), xlabel, fill="black")
    d.text((4, top - 16), ylabel, fill="black")
    for i, (label, xs, ys) in enumerate(series):
        col = PALETTE[i % len(PALETTE)]
        pts = [px(float(a), float(b)) for a, b in zip(xs, ys)]
        if len(pts) > 1:
            d.line(pts, fill=col, width=2)
        for p in pts if len(pts) < 40 else []:
            d.ellipse([p[0] - 2, p[1] - 2, p[0] + 2, p[1] + 2], fill=col)
        d.text((w - right - 150, top + 6 + 14 * i), label, fill=col)
    _save(img, path)


def _save(img, path: str) -> None:
    from ebmtool.artifacts import atomic_write

    with atomic_write(path) as tmp:
        img.save(tmp, format="PNG")


def pr_curve_png(y: np.ndarray, scores: np.ndarray, path: str) -> None:
    from sklearn.metrics import auc, precision_recall_curve

    precision, recall, _ = precision_recall_curve(y, scores)
    line_chart([(f"AUPRC {auc(recall, precision):.3f}", recall, precision)], path,
               title="precision-recall (anomaly = 1)", xlabel="recall", ylabel="precision")


def nce_curves_png(stage_losses: dict[int, Sequence[float]], path: str) -> None:
    """Per-stage NCE loss by epoch (adaptive-NCE Fig. 4); epochs continue across stages."""
    series, start = [], 0
    for k in sorted(stage_losses):
        v = list(stage_losses[k])
        series.append((f"stage {k}", list(range(start + 1, start + len(v) + 1)), v))
        start += len(v)
    line_chart(series, path, title="NCE loss per stage", xlabel="epoch", ylabel="NCE loss")


def energy_profile_png(steps: Sequence[int], log_probs: np.ndarray, path: str) -> None:
    """Mean (and 10/90% quantiles) of log pi along Langevin chains; log_probs is (T, B)."""
    lp = np.asarray(log_probs, float)
    series = [("mean log p", steps, lp.mean(1)), ("10%", steps, np.quantile(lp, 0.1, 1)),
              ("90%", steps, np.quantile(lp, 0.9, 1))]
    line_chart(series, path, title="Langevin: log-density along the chain", xlabel="step", ylabel="log p(z)")


def plot_artifact(art, out: str) -> str:
    """One PNG for an artifact, chosen by what it holds; returns what was drawn.

    model with per-stage NCE history -> NCE loss per stage (adaptive-NCE Fig. 4); other models -> loss curves;
    samples with a trajectory -> log-density profile along the chains (LEBM Fig. 3-4, adaptive-NCE Fig. 5);
    scores -> precision-recall curve; dataset / samples / reconstructions -> image grid.
    """
    from ebmtool.errors import UserError

    t = art.tensors
    if art.kind == "model":
        stages = {int(k.split(".")[1][len("stage"):]): v.tolist() for k, v in t.items()
                  if k.startswith("history.stage") and k.endswith(".nce")}
        if stages:
            nce_curves_png(stages, out)
            return "NCE loss per stage"
        hist = {k[len("history."):]: v.tolist() for k, v in t.items() if k.startswith("history.") and v.ndim == 1}
        if not hist:
            raise UserError(f"{art.path}: model has no training history to plot")
        series = [(k, list(range(1, len(v) + 1)), v) for k, v in hist.items() if k.startswith("loss")] or \
                 [(k, list(range(1, len(v) + 1)), v) for k, v in hist.items()]
        line_chart(series, out, title=f"{art.meta.get('method', 'model')} training", xlabel="epoch", ylabel="loss")
        return "training loss per epoch"
    if art.kind == "samples" and "trajectory.log_prob" in t:
        energy_profile_png(t["trajectory.steps"].tolist(), t["trajectory.log_prob"].numpy(), out)
        return "log-density along the Langevin chains"
    if art.kind == "scores":
        pr_curve_png(t["labels"].numpy(), t["scores"].numpy(), out)
        return "precision-recall curve"
    if "images" in t and t["images"].ndim == 4:
        imgs = t["images"]
        save_grid((imgs if imgs.dtype == torch.uint8 else to_uint8(imgs))[:100], out)
        return "image grid"
    raise UserError(f"{art.path}: nothing to plot in a {art.kind} artifact")
