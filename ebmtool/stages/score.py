"""``ebmtool score``: every image of a dataset scored, labelled or not, as a table a person opens (index, file
name, score, each term, a flag from a threshold set on held-out normals), with the scoring core of
:func:`~ebmtool.stages.evaluate.anomaly` (:func:`~ebmtool.stages.evaluate.score_images`, the same chain settings,
recorded the same way)."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import torch

from ebmtool import artifacts
from ebmtool.config import check_options
from ebmtool.data import load_images
from ebmtool.data.prepare import ClassRef
from ebmtool.errors import UserError
from ebmtool.eval import scores as S
from ebmtool.eval.anomaly import binary_labels, metrics
from ebmtool.images import check_grid_path, grid_picture, grid_size, to_uint8, write_png
from ebmtool.runtime import resolve as resolve_precision
from ebmtool.stages.evaluate import (_check_fits, _open, _precision, check_score, resolve_classes, score_images,
                                     score_record)

DEFAULT_FPR = 0.05  # score --calibration without --fpr: flag 5% of the calibration normals

TABLE_FORMATS = (".csv", ".json")


def fpr_threshold(calibration_scores: torch.Tensor, fpr: float) -> tuple[float, float]:
    """The threshold above which an image is flagged, from the scores of held-out normal images: the least
    calibration score t with at most a fraction ``fpr`` of the calibration scores above it (the empirical
    (1 - fpr) quantile, numpy's ``inverted_cdf``). Returns (t, the fraction of calibration scores above t)."""
    import numpy as np

    c = calibration_scores.double().numpy()
    t = float(np.quantile(c, 1.0 - fpr, method="inverted_cdf"))
    return t, float((c > t).mean())


def _table_rows(scores: torch.Tensor, terms: dict[str, torch.Tensor], labels: torch.Tensor,
                meta: dict[str, Any], threshold: Optional[float]) -> list[dict[str, Any]]:
    """One row per image, in the dataset's order: index, name (its path relative to the folder it came from;
    empty where the dataset has none), label and class name (labelled data), score, each term, flag."""
    paths, names = meta.get("paths"), meta.get("class_names")
    labelled = not bool((labels == -1).all())
    rows = []
    for i in range(len(scores)):
        row: dict[str, Any] = {"index": i, "name": paths[i] if isinstance(paths, list) and i < len(paths) else ""}
        if labelled:
            k = int(labels[i])
            row["label"] = k
            if names:
                row["class"] = names[k] if 0 <= k < len(names) else ""
        row["score"] = float(scores[i])
        row.update({(f"term_{k}" if k in row else k): float(v[i]) for k, v in terms.items()})  # BiDVL: "score"
        if threshold is not None:
            row["flagged"] = int(float(scores[i]) > threshold)
        rows.append(row)
    return rows


def _write_table(path: str, rows: list[dict[str, Any]], summary: dict[str, Any], force: bool = False) -> None:
    """``.csv``: the rows (a header line, then one line per image); ``.json``: {"summary": ..., "rows": [...]}.
    Written atomically (``force`` False: exclusively)."""
    import csv
    import json

    with artifacts.atomic_write(path, overwrite=force) as tmp:
        with open(tmp, "w", newline="") as f:
            if path.lower().endswith(".json"):
                json.dump({"summary": summary, "rows": rows}, f, default=str)
            else:
                w = csv.DictWriter(f, fieldnames=list(rows[0]))
                w.writeheader()
                w.writerows(rows)


def score_data(model_path: str, data_path: str, out: str, *, calibration: Optional[str] = None,
               fpr: Optional[float] = None, anomaly_class: Optional[list[ClassRef]] = None, top: int = 10,
               grid: Optional[str] = None, scale: Optional[int] = None, score: str = "joint",
               steps: Optional[int] = None, step_size: Optional[float] = None, noise: Optional[bool] = None,
               batch_size: int = 500, seed: int = 0, device: str = "auto", force: bool = False,
               precision: str = "fp32", quiet: bool = False) -> dict[str, Any]:
    """Score every image of a dataset, labelled or not (``ebmtool score``), with the scoring core of
    :func:`anomaly` (:func:`score_images`, the same chain settings, recorded the same way).

    Writes ``out``: a table with one row per image (.csv; or .json with the summary too): index, name (the
    image's file for a folder dataset), label and class where the data has them, the score and each of its
    terms, and with ``calibration`` (held-out normal images) and ``fpr`` a flag: score above the threshold that
    flags a fraction ``fpr`` of the calibration normals. ``top``: the most anomalous images, listed in the result
    (``grid``: a PNG of them, most anomalous first). With labels and an anomalous class (``anomaly_class``, or the
    one the dataset was split by, ``data prepare --anomaly-protocol``) the result also holds :func:`anomaly`'s
    metrics, computed by the same code on the same scores."""
    if Path(out).suffix.lower() not in TABLE_FORMATS:
        raise UserError(f"-o {out}: the table is written as .csv or .json (chosen by the extension)")
    if fpr is not None and calibration is None:
        raise UserError("--fpr: the threshold is taken from held-out normal images; give --calibration NORMALS")
    if calibration is not None and fpr is None:
        fpr = DEFAULT_FPR
    if fpr is not None and not 0.0 < fpr < 1.0:
        raise UserError(f"--fpr {fpr}: a false-positive rate lies strictly between 0 and 1")
    if top < 0:
        raise UserError(f"--top {top}: must be 0 or more")
    if grid is not None and top == 0:
        raise UserError("--grid: it draws the --top images; --top 0 leaves none")
    if scale is not None and grid is None:
        raise UserError("--scale: it upscales the PNG grid; give --grid or drop it")
    if grid is not None:
        check_grid_path(grid)
    check_options("cli", steps=steps, step_size=step_size, noise=noise, batch_size=batch_size, seed=seed,
                  precision=precision, scale=scale)
    if score in S.CALIBRATED:
        raise UserError(f"--score {score}: it needs a reference set of normals of its own besides the threshold's; "
                        f"use ebmtool anomaly --score {score} --calibrate NORMALS")
    check_score(score, False)
    dev, model, art, x, labels, data_art = _open(model_path, data_path, {"-o": out, "--grid": grid}, seed, device,
                                                 force, inputs={"--calibration": calibration})
    parents = [art.as_parent(), data_art.as_parent()]
    if grid is not None:  # a grid too large to draw is refused before the scoring
        grid_size(min(top, len(x)), x.shape[1:], min(top, len(x), 10), scale)
    labelled = not bool((labels == -1).all())
    if anomaly_class:
        positive: Optional[list[int]] = resolve_classes(anomaly_class, data_art, labels)
    elif (labelled and isinstance(data_art.meta.get("protocol"), dict)
          and bool((labels == int(data_art.meta["protocol"]["anomaly_class"])).any())):
        positive = [int(data_art.meta["protocol"]["anomaly_class"])]  # a test part; a fit part holds none of it
    else:
        positive = None
    y = binary_labels(labels, positive) if positive is not None else None
    xc = None
    if calibration is not None:
        xc, _, cal_art = load_images(calibration, what="--calibration")
        _check_fits(model, xc, calibration)
        parents.append(cal_art.as_parent())
    kw: dict[str, Any] = dict(score=score, steps=steps, step_size=step_size, noise=noise, batch_size=batch_size,
                              device=dev, quiet=quiet)
    with _precision(precision, dev):
        scores, terms, _ = score_images(model, x, **kw)
        cal_scores = score_images(model, xc, **kw)[0] if xc is not None else None
    if not bool(torch.isfinite(scores).all()):
        raise UserError("scores are non-finite (the posterior chain diverged: try a smaller --step-size)")
    res: dict[str, Any] = {"n": len(x), **score_record(model, score, steps, step_size, noise)}
    threshold = None
    if cal_scores is not None and fpr is not None:
        threshold, cal_fpr = fpr_threshold(cal_scores, fpr)
        res.update({"threshold": threshold, "fpr": fpr, "calibration_fpr": cal_fpr, "n_calibration": len(cal_scores),
                    "n_flagged": int((scores > threshold).sum())})
    if y is not None:
        res.update({**metrics(y, scores).as_dict(), "anomaly_classes": positive})
    elif labelled:
        res["note"] = "the images have labels: give --anomaly-class K for anomaly's metrics (AUPRC, AUROC)"
    res.update({"seed": seed, "precision": resolve_precision(precision, dev, warn=False).name, "device": dev.type,
                "inputs": parents})
    order = torch.argsort(scores, descending=True, stable=True)[:top]
    rows = _table_rows(scores, terms, labels, data_art.meta, threshold)
    res["top"] = [{"rank": r + 1, **{k: rows[int(i)][k] for k in ("index", "name", "score")},
                   **({"flagged": rows[int(i)]["flagged"]} if threshold is not None else {})}
                  for r, i in enumerate(order)]
    png = grid_picture(to_uint8(x[order]), nrow=min(len(order), 10), scale=scale) if grid is not None else None
    _write_table(out, rows, {k: v for k, v in res.items() if k != "top"}, force)
    if png is not None:
        write_png(png, grid, force)
    return {**res, "output": out, "grid": grid}
