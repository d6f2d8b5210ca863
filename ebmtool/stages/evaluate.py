"""The evaluation stages: ``sample``, ``reconstruct`` and ``anomaly``. Each opens its inputs through one helper,
runs the model's verb in batches (sharded across torchrun ranks) and writes one artifact."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import torch

from ebmtool import artifacts, distributed
from ebmtool import progress as bars
from ebmtool.data import load_images
from ebmtool.config import MAX_SAMPLES, check_options  # noqa: F401  (MAX_SAMPLES: the limit of -n, re-exported)
from ebmtool.data.prepare import ClassRef, class_index
from ebmtool.errors import UserError
from ebmtool.eval import scores as S
from ebmtool.eval.anomaly import binary_labels, metrics
from ebmtool.eval.plots import anomaly_title, figure_format, pr_curve_png
from ebmtool.images import GRID_MAX_IMAGES, check_grid_path, grid_image, grid_picture, grid_size, to_uint8, write_png
from ebmtool.models import LatentModel, Model, SampleOutput, bottom, hierarchical_sample, load_model
from ebmtool.runtime import resolve as resolve_precision
from ebmtool.runtime import check_fits_memory, resolve_device, seed_everything


# sample -n: at most MAX_SAMPLES samples per command (FID takes 50,000). All of them are held in memory together
# (float images while drawing, then uint8), so a larger n is refused up front (config.check_options), as is one the
# machine cannot hold (check_memory).


def check_memory(n: int, image_shape, name: str = "-n") -> None:
    """Refuse an n whose images (float32 while drawn, then uint8: 5 bytes a value) exceed this machine's RAM."""
    check_fits_memory(5 * n * math.prod(int(v) for v in image_shape),
                      f"{name} {n}: {n} images of {'x'.join(map(str, image_shape))}", f"use a smaller {name}")


def _precision(name: str, device: torch.device):
    return resolve_precision(name, device).context(device)


def batched(fn, x: torch.Tensor, batch_size: int, device: torch.device, show: bool = False, what: str = "batches"):
    """Apply fn to batches of x on the device; concatenate (tensors or tuples of tensors) on the CPU.
    Under torchrun each rank takes a contiguous shard of x and the results are gathered in order.
    ``show``: a progress bar over the batches, labelled ``what`` (:mod:`ebmtool.progress`)."""
    shard = distributed.world().parallel and len(x) >= distributed.world().size
    xs = distributed.take(x) if shard else x
    starts = range(0, len(xs), batch_size)
    outs = [fn(xs[i: i + batch_size].to(device)) for i in bars.track(starts, len(starts), what, show)]
    first = outs[0]
    if isinstance(first, tuple):
        res = tuple(_cat([o[j] for o in outs]) for j in range(len(first)))
    else:
        res = _cat(outs)
    return distributed.gather_nested(res) if shard else res


def _cat(parts):
    if parts[0] is None:
        return None
    if isinstance(parts[0], tuple):
        return tuple(torch.cat([p[j].cpu() for p in parts]) for j in range(len(parts[0])))
    return torch.cat([p.cpu() for p in parts])


def _latent_tensors(z, prefix: str = "latents") -> dict[str, torch.Tensor]:
    if z is None:
        return {}
    if isinstance(z, tuple):
        return {f"{prefix}.{i + 1}": t for i, t in enumerate(z)}
    return {prefix: z}


def draw_samples(model: Model, n: int, *, steps: Optional[int] = None, step_size: Optional[float] = None,
                 sampler: Optional[str] = None, batch_size: int = 500, device: torch.device,
                 quiet: bool = True) -> SampleOutput:
    """``n`` prior samples of an open model, ``batch_size`` chains at a time (under torchrun each rank draws its
    share, gathered in order). images: (n, C, H, W) float in [-1, 1]; latents: (n, d) (a tuple for multi-layer
    priors); both on the CPU. The in-memory core of :func:`sample` and :func:`ebmtool.sample`."""
    def draw(idx):
        r = model.sample(len(idx), steps=steps, step_size=step_size, sampler=sampler)
        return r.images, r.latents

    return SampleOutput(*batched(draw, torch.arange(n, device="cpu"), batch_size, device, show=not quiet,
                                 what="sample"))


def sample(model_path: str, n: int, *, out: Optional[str] = None, grid: Optional[str] = None,
           steps: Optional[int] = None, step_size: Optional[float] = None, sampler: Optional[str] = None,
           trajectory_every: int = 0, trajectory_png: Optional[str] = None, seed: int = 0, device: str = "auto",
           force: bool = False, layer_resample: Optional[int] = None, precision: str = "fp32",
           scale: Optional[int] = None, batch_size: int = 500, quiet: bool = False) -> dict[str, Any]:
    """Prior samples decoded, drawn ``batch_size`` chains at a time (one group with a trajectory)."""
    if out is None and grid is None:
        raise UserError("sample: give -o FILE.safetensors and/or --grid FILE.png")
    check_options("cli", n=n, steps=steps, step_size=step_size, sampler=sampler, batch_size=batch_size, seed=seed,
                  scale=scale, trajectory_every=trajectory_every, layer_resample=layer_resample, precision=precision)
    if scale is not None and grid is None and trajectory_png is None:
        raise UserError("--scale: it upscales a PNG grid; give --grid (or --trajectory-png) or drop it")
    artifacts.check_distinct({"-o": out, "--grid": grid, "--trajectory-png": trajectory_png}, {"--model": model_path})
    for p in (out, grid, trajectory_png):
        if p is not None:
            artifacts.check_output(p, force)
    if trajectory_png is not None and trajectory_every < 1:
        raise UserError("--trajectory-png needs --trajectory K (record every K-th step)")
    for option, p in (("--grid", grid), ("--trajectory-png", trajectory_png)):
        if p is not None:
            check_grid_path(p, option)
    if sampler == "sir" and (steps is not None or step_size is not None):
        raise UserError("--steps/--step-size: --sampler sir runs no Langevin chain "
                        "(it resamples draws of the prior's base distribution)")
    dev = resolve_device(device)
    seed_everything(seed, per_rank=True)
    model, art = load_model(model_path, device=dev)
    check_memory(n, model.image_shape)
    if grid is not None:  # a --scale too large is refused before the samples are drawn
        grid_size(n, model.image_shape, 8 if layer_resample else None, scale)
    if sampler == "sir" and not getattr(getattr(model, "prior", None), "supports_sir", False):
        raise UserError(f"--sampler sir: not available for a {model.method} model")
    if layer_resample is not None:
        if trajectory_every:
            raise UserError("--layer-resample cannot be combined with --trajectory")
        with _precision(precision, dev):
            res = hierarchical_sample(model, n, layer_resample, group=8, steps=steps, step_size=step_size,
                                      sampler=sampler)
    elif not trajectory_every:  # batches of chains, each rank its share (gathered by batched)
        with _precision(precision, dev):
            res = draw_samples(model, n, steps=steps, step_size=step_size, sampler=sampler, batch_size=batch_size,
                               device=dev, quiet=quiet)
    else:
        W = distributed.world()
        shard = W.parallel and n >= W.size  # each rank draws its share; images and latents are gathered
        a, b = distributed.bounds(n) if shard else (0, n)
        with _precision(precision, dev):
            res = model.sample(b - a, steps=steps, step_size=step_size, sampler=sampler, record_every=trajectory_every)
        if shard:
            res.images = distributed.gather(res.images.contiguous())
            res.latents = distributed.gather_nested(res.latents)
    if trajectory_every and res.trajectory is None:
        raise UserError("--trajectory: this model's prior is sampled exactly or by SIR; "
                        "there is no Langevin chain to record")
    images = to_uint8(res.images.float().cpu())
    tensors = {"images": images,
               **_latent_tensors(res.latents if not isinstance(res.latents, torch.Tensor) else res.latents.cpu())}
    meta: dict[str, Any] = {"n": n, "image_shape": list(images.shape[1:]), "model_method": model.method,
                            "steps": steps, "step_size": step_size, "sampler": sampler,
                            "layer_resample": layer_resample,
                            "chain": model.sampling.override(steps, step_size).model_dump()
                            if hasattr(model, "sampling") and not getattr(model.prior, "is_base", False)
                            and (sampler or getattr(model, "sampler", "langevin")) == "langevin" else None,
                            "seed": seed, "precision": resolve_precision(precision, dev, warn=False).name,
                            "device": dev.type}
    if res.trajectory is not None:
        tr = res.trajectory
        tensors["trajectory.steps"] = torch.tensor(tr.steps, device="cpu")
        tensors["trajectory.log_prob"] = tr.stacked_log_probs().cpu()
        with torch.no_grad():
            tensors["trajectory.images"] = torch.stack(
                [to_uint8(model.generator(bottom(s if len(s) > 1 else s[0]))[:8].cpu()) for s in tr.states])
    pngs = {}  # drawn before anything is written: a grid refused (its size) leaves no file behind
    if grid is not None:
        pngs[grid] = grid_image(images[:GRID_MAX_IMAGES], nrow=8 if layer_resample else None, scale=scale)
    if trajectory_png is not None:
        t = tensors["trajectory.images"]  # (T, 8, C, H, W): rows = chains, columns = time
        pngs[trajectory_png] = grid_image(t.transpose(0, 1).reshape(-1, *t.shape[2:])[:GRID_MAX_IMAGES],
                                          nrow=t.shape[0], scale=scale)
    if out is not None:
        artifacts.save(out, "samples", tensors, meta=meta, parents=[art], force=force)
    for p, g in pngs.items():
        write_png(g, p, force)
    return {"output": out, "grid": grid, "n": n, "image_shape": list(images.shape[1:])}


def _check_fits(model: Model, x: torch.Tensor, data_path: str) -> None:
    if tuple(x.shape[1:]) != tuple(model.image_shape):
        raise UserError(f"{data_path}: images are {tuple(x.shape[1:])} but the model makes {tuple(model.image_shape)}")


def _open(model_path: str, data_path: str, outputs: dict[str, Optional[str]], seed: int, device: str, force: bool,
          limit: Optional[int] = None, inputs: Optional[dict[str, Optional[str]]] = None):
    """The opening of every stage that runs a model on a dataset: refuse outputs that exist or name an input
    ({option: path}; ``inputs``: those besides --model and --data), pick the device, seed each rank, open the model
    and the images (first ``limit``), check that they fit."""
    artifacts.check_distinct(outputs, {"--model": model_path, "--data": data_path, **(inputs or {})})
    for p in outputs.values():
        if p is not None:
            artifacts.check_output(p, force)
    dev = resolve_device(device)
    seed_everything(seed, per_rank=True)
    model, art = load_model(model_path, device=dev)
    x, labels, data_art = load_images(data_path)
    if limit is not None:
        x, labels = x[:limit], labels[:limit]
    _check_fits(model, x, data_path)
    return dev, model, art, x, labels, data_art


def reconstruct_images(model: Model, x: torch.Tensor, *, steps: Optional[int] = None,
                       step_size: Optional[float] = None, noise: Optional[bool] = None, batch_size: int = 500,
                       device: torch.device, quiet: bool = True) -> tuple[torch.Tensor, Any]:
    """Reconstructions of images by an open model (posterior chain or encoder), ``batch_size`` at a time.
    x: (N, C, H, W) float in [-1, 1]. Returns (images: (N, C, H, W) float32 in [-1, 1], latents: the posterior
    samples, (N, d) or a tuple for multi-layer priors, None for a model without latents), on the CPU. The in-memory
    core of :func:`reconstruct` and :func:`ebmtool.reconstruct`."""
    xhat, z = batched(lambda b: model.reconstruct(b, steps=steps, step_size=step_size, noise=noise), x,
                      batch_size, device, show=not quiet, what="reconstruct")
    return xhat.float(), z


def reconstruct(model_path: str, data_path: str, *, out: Optional[str] = None, grid: Optional[str] = None,
                steps: Optional[int] = None, step_size: Optional[float] = None, noise: Optional[bool] = None,
                batch_size: int = 500, limit: Optional[int] = None, seed: int = 0, device: str = "auto",
                force: bool = False, precision: str = "fp32", scale: Optional[int] = None,
                quiet: bool = False) -> dict[str, Any]:
    """Posterior reconstructions and their per-image MSE; the chain that made them is recorded (``chain``)."""
    check_options("cli", steps=steps, step_size=step_size, noise=noise, batch_size=batch_size, limit=limit, seed=seed,
                  scale=scale, precision=precision)
    if scale is not None and grid is None:
        raise UserError("--scale: it upscales the PNG grid; give --grid or drop it")
    if grid is not None:
        check_grid_path(grid)
    dev, model, art, x, labels, data_art = _open(model_path, data_path, {"-o": out, "--grid": grid}, seed, device,
                                                 force, limit)
    if grid is not None:  # a --scale too large is refused before the chains run
        grid_size(2 * min(32, len(x)), x.shape[1:], 16, scale)
    with _precision(precision, dev):
        xhat, z = reconstruct_images(model, x, steps=steps, step_size=step_size, noise=noise, batch_size=batch_size,
                                     device=dev, quiet=quiet)
    per = (xhat - x).pow(2).flatten(1).mean(1)
    res = {"mse": float(per.mean()), "rmse": float(per.mean().sqrt()), "n": len(x),
           "pixel_range": "[-1, 1]", "model_method": model.method,
           "chain": model.score_chain(steps, step_size, noise), "seed": seed,
           "precision": resolve_precision(precision, dev, warn=False).name,
           "device": dev.type}
    png = None
    if grid is not None:
        k = min(32, len(x))
        pairs = torch.stack([to_uint8(x[:k]), to_uint8(xhat[:k])], 1).reshape(-1, *x.shape[1:])
        png = grid_picture(pairs, nrow=16, scale=scale, header=["real", "recon"])  # columns alternate, labelled
    if out is not None:
        artifacts.save(out, "reconstructions", {"images": to_uint8(xhat), "mse": per, "labels": labels,
                                                **_latent_tensors(z)},
                       meta=res, parents=[art, data_art], force=force)
    if png is not None:
        write_png(png, grid, force)
    return {**res, "output": out, "grid": grid}


def score_terms(model: Model, x: torch.Tensor, *, steps: Optional[int] = None, step_size: Optional[float] = None,
                noise: Optional[bool] = None, batch_size: int = 500, device: torch.device,
                quiet: bool = True) -> dict[str, torch.Tensor]:
    """The terms of the model's anomaly score for every image (see :mod:`ebmtool.eval.scores`), each (N,) float64.
    ``steps`` / ``step_size`` / ``noise`` override the model's posterior chain (``noise=False``: the noise-free,
    near-MAP chain of the papers' anomaly code)."""
    names: list[str] = []

    def fn(b):
        t = model.score_terms(b, steps=steps, step_size=step_size, noise=noise)
        names[:] = list(t)
        return tuple(t.values())

    vals = batched(fn, x, batch_size, device, show=not quiet, what="anomaly score")
    return {k: v.double() for k, v in zip(names, vals)}


def check_score(score: str, calibrated: bool) -> None:
    """Refuse, before any work, an unknown score, a calibration set the score does not use, or a calibrated score
    without one."""
    if score not in S.SCORES:
        raise UserError(f"--score: unknown score {score!r} (choose from {', '.join(S.SCORES)})")
    if calibrated and score not in S.CALIBRATED:
        raise UserError(f"--calibrate: only the {' and '.join(S.CALIBRATED)} scores use it (got --score {score})")
    if score in S.CALIBRATED and not calibrated:
        S.score(score, {}, calibration=None)  # raises the one-line error


def score_images(model: Model, x: torch.Tensor, *, score: str = "joint", calibration: Optional[torch.Tensor] = None,
                 steps: Optional[int] = None, step_size: Optional[float] = None, noise: Optional[bool] = None,
                 batch_size: int = 500, device: torch.device, quiet: bool = True):
    """The label-free anomaly score ``score`` (:data:`ebmtool.eval.scores.SCORES`) of every image; higher = more
    anomalous. x: (N, C, H, W) float in [-1, 1] on the CPU; calibration: (M, C, H, W) float in [-1, 1], held-out
    normals (``typicality`` and ``dose`` need them). Returns (scores: (N,) float64, terms: {name: (N,) float64},
    calibration terms: {name: (M,) ndarray} or None). The in-memory core of :func:`anomaly` and
    :func:`ebmtool.score`."""
    check_score(score, calibration is not None)
    kw = dict(steps=steps, step_size=step_size, noise=noise, batch_size=batch_size, device=device, quiet=quiet)
    terms = score_terms(model, x, **kw)
    cal_terms = None
    if calibration is not None:
        cal_terms = {k: v.numpy() for k, v in score_terms(model, calibration, **kw).items()}
    what = f"{model.method} model" if isinstance(model, LatentModel) else f"a {model.method} model"
    scores = torch.from_numpy(S.score(score, {k: v.numpy() for k, v in terms.items()}, images=to_uint8(x),
                                      calibration=cal_terms, model=what))
    return scores, terms, cal_terms


def score_record(model: Model, score: str, steps: Optional[int], step_size: Optional[float],
                 noise: Optional[bool]) -> dict[str, Any]:
    """What ``anomaly`` and ``score`` record of how they scored: the model's method, the score and what it is
    computed from, and the chain settings the posterior ran with (None for a model that runs no chain)."""
    base = ("-log p(x, z) at posterior samples" if isinstance(model, LatentModel)
            else getattr(model, "score_name", "anomaly score"))
    return {"model_method": model.method, "score": score,
            "score_description": base if score == "joint" else f"{score} (from {base})",
            "chain": model.score_chain(steps, step_size, noise) if isinstance(model, LatentModel) else None}


def resolve_classes(classes: list[ClassRef], data_art: artifacts.Artifact, labels: torch.Tensor,
                    option: str = "--anomaly-class") -> list[int]:
    """Classes given by index or name as labels of the dataset (names from its meta ``class_names``). Unlabelled
    data (every label -1) is refused, pointing to ``ebmtool score``, which needs no labels."""
    if bool((labels == -1).all()):
        raise UserError(f"{option}: {data_art.path} holds no labels (unlabelled images), so no class can be "
                        f"anomalous; score its images without labels: ebmtool score --model MODEL --data "
                        f"{data_art.path} -o scores.csv")
    return [class_index(c, data_art.meta.get("class_names"), option) for c in classes]


def anomaly(model_path: str, data_path: str, *, positive: list[ClassRef] | None = None,
            ood_path: Optional[str] = None,
            quiet: bool = False,
            out: Optional[str] = None, steps: Optional[int] = None, step_size: Optional[float] = None,
            noise: Optional[bool] = None, batch_size: int = 500, seed: int = 0, device: str = "auto",
            force: bool = False,
            pr_png: Optional[str] = None, precision: str = "fp32", score: str = "joint",
            calibrate: Optional[str] = None, positive_option: str = "--anomaly-class") -> dict[str, Any]:
    """Anomaly / OOD evaluation with the label-free score ``score`` (:data:`ebmtool.eval.scores.SCORES`).
    ``positive``: the anomalous classes, by index or name (``positive_option`` names them in an error).
    ``calibrate``: a dataset of held-out normals, the reference of ``typicality`` and ``dose``."""
    check_options("cli", steps=steps, step_size=step_size, noise=noise, batch_size=batch_size, seed=seed,
                  precision=precision)
    if (positive is None) == (ood_path is None):
        raise UserError("anomaly: give exactly one of --anomaly-class/--labels-positive or --ood-data")
    check_score(score, calibrate is not None)
    if pr_png is not None:
        figure_format(pr_png)  # a wrong extension is refused before any work, not after scoring
    dev, model, art, x, labels, data_art = _open(model_path, data_path, {"-o": out, "--pr-curve": pr_png}, seed,
                                                 device, force,
                                                 inputs={"--ood-data": ood_path, "--calibrate": calibrate})
    parents = [art, data_art]
    classes = None if positive is None else resolve_classes(positive, data_art, labels, positive_option)
    if ood_path is not None:
        xo, _, ood_art = load_images(ood_path, what="--ood-data")
        _check_fits(model, xo, ood_path)
        if xo.shape == x.shape and torch.equal(xo, x):  # the same file, a copy or a link: AUROC would be chance
            raise UserError(f"--ood-data {ood_path}: holds the same images as --data {data_path}; give "
                            "out-of-distribution images (another dataset)")
        x = torch.cat([x, xo])
        y = torch.cat([torch.zeros(len(x) - len(xo), dtype=torch.long, device=x.device),
                       torch.ones(len(xo), dtype=torch.long, device=x.device)])
        parents.append(ood_art)
    else:
        y = binary_labels(labels, classes or [])
    xc = None
    if calibrate is not None:
        xc, lc, cal_art = load_images(calibrate, what="--calibrate")
        _check_fits(model, xc, calibrate)
        bad = sorted(set(int(c) for c in lc.unique()) & set(classes or []))
        if bad:
            raise UserError(f"--calibrate {calibrate}: holds images of the anomaly class {bad[0]}; calibrate on "
                            "held-out normals only (data prepare --part calibration)")
        parents.append(cal_art)
    with _precision(precision, dev):
        scores, terms, cal_terms = score_images(model, x, score=score, calibration=xc, steps=steps,
                                                step_size=step_size, noise=noise, batch_size=batch_size, device=dev,
                                                quiet=quiet)
    cal_mean = float(S.joint(cal_terms).mean()) if cal_terms is not None else None
    m = metrics(y, scores)
    res = {**m.as_dict(), **score_record(model, score, steps, step_size, noise),
           "calibration_mean_joint": cal_mean, "anomaly_classes": classes, "ood_data": ood_path,
           "seed": seed, "precision": resolve_precision(precision, dev, warn=False).name, "device": dev.type}
    if out is not None:
        tensors = {"scores": scores.double(), "labels": y, **{f"terms.{k}": v for k, v in terms.items()},
                   **{f"calibration.terms.{k}": torch.from_numpy(v) for k, v in (cal_terms or {}).items()}}
        artifacts.save(out, "scores", tensors, meta=res, parents=parents, force=force)
    if pr_png is not None:
        pr_curve_png(y.numpy(), scores.numpy(), pr_png, force=force,
                     title=anomaly_title(Path(model_path).name, Path(data_path).name, positive, ood_path, score))
    return {**res, "output": out}
