"""One library function per CLI stage: open inputs through one helper, do one thing, write one artifact.

The CLI (:mod:`ebmtool.cli`) only parses options and prints; everything here is importable and scriptable.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any, Optional

import torch

from ebmtool import artifacts, distributed
from ebmtool.data import DataConfig, load_images, prepare
from ebmtool.errors import UserError
from ebmtool.methods import METHODS, FitResult
from ebmtool.methods.common import RunContext, TrainData, resolve_device, seed_everything
from ebmtool.models import LatentModel, Model, load_model, model_tensors


def _precision(name: str, device: torch.device):
    from ebmtool.precision import resolve

    return resolve(name, device).context(device)


def _to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def batched(fn, x: torch.Tensor, batch_size: int, device: torch.device):
    """Apply fn to batches of x on the device; concatenate (tensors or tuples of tensors) on the CPU.
    Under torchrun each rank takes a contiguous shard of x and the results are gathered in order."""
    shard = distributed.world().parallel and len(x) >= distributed.world().size
    xs = distributed.take(x) if shard else x
    outs = [fn(xs[i: i + batch_size].to(device)) for i in range(0, len(xs), batch_size)]
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


# ----------------------------------------------------------------------------------------------------------
def data_prepare(cfg: DataConfig, out: str, force: bool = False) -> dict[str, Any]:
    artifacts.check_output(out, force)
    tensors, meta = prepare(cfg)
    artifacts.save(out, "dataset", tensors, config=cfg, meta=meta, force=force)
    return {"output": str(out), **{k: meta[k] for k in ("dataset", "split", "n", "image_shape", "classes")}}


def open_training_data(path: str, device: torch.device) -> TrainData:
    x, labels, art = load_images(path, what="--data")
    if art.kind != "dataset":
        raise UserError(f"{art.path}: training needs a dataset artifact, got {art.kind}")
    sha = art.meta.get("content_sha256") or artifacts.tensor_sha256(art.tensors["images"], art.tensors.get("labels", labels))
    return TrainData(x.to(device), labels, sha, art.as_parent())


def checkpoint_path(out: str) -> Path:
    """OUT.safetensors -> OUT.ckpt.safetensors (other names: NAME.ckpt.safetensors); keeps every dot of the name."""
    p = Path(out)
    return p.with_name(p.name.removesuffix(".safetensors") + ".ckpt.safetensors")


def train(method: str, cfg, data_path: str, out: str, *, init_path: Optional[str] = None, force: bool = False,
          quiet: bool = False, checkpoint_every: int = 0, checkpoint: Optional[str] = None,
          resume: Optional[str] = None, tensorboard: Optional[str] = None) -> dict[str, Any]:
    """Fit ``method`` with the resolved ``cfg`` on ``data_path``; write a model artifact to ``out``.

    With ``checkpoint_every`` > 0 (or on SIGINT/SIGTERM) a resumable checkpoint is written to ``checkpoint``
    (default: OUT with suffix .ckpt.safetensors); ``resume`` continues from one. The checkpoint is removed
    once the model artifact is written. ``tensorboard``: a directory for TensorBoard scalars and sample grids
    per epoch (:mod:`ebmtool.tensorboard`)."""
    from ebmtool.checkpoint import Checkpointer, open_resume

    spec = METHODS[method]
    artifacts.check_output(out, force)
    if hasattr(cfg, "batch_size"):
        distributed.check_batch_size(cfg.batch_size)
    if checkpoint_every < 0:
        raise UserError("--checkpoint-every must be >= 0")
    ck_path = Path(checkpoint) if checkpoint else checkpoint_path(out)
    if ck_path.resolve() == Path(out).resolve():
        raise UserError(f"--checkpoint {ck_path}: must differ from the output file")
    config_json = cfg.model_dump(mode="json")
    resume_art = None
    # an existing checkpoint is only overwritten when it is the one being resumed (or with --force)
    resuming_it = resume is not None and Path(resume).resolve() == ck_path.resolve()
    if ck_path.exists() and not resuming_it and not force:
        raise UserError(f"{ck_path}: a checkpoint of an earlier run exists (continue it with --resume {ck_path}, or pass --force)")
    artifacts.check_output(ck_path, True)
    if tensorboard is not None:
        from ebmtool.tensorboard import require

        require()  # one line before any work when the package is missing
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = open_training_data(data_path, device)
    init = init_art = None
    if init_path is not None:
        init, init_art = load_model(init_path, what="--init", device=device)
        init.train()
    inputs = {"data_content_sha256": data.content_sha256, "init_sha256": init_art.sha256 if init_art else None}
    if distributed.world().parallel:
        inputs["world_size"] = distributed.world().size
    if resume:
        resume_art = open_resume(resume, config_json, inputs)
    from ebmtool.precision import resolve as resolve_precision

    ck = Checkpointer(ck_path, checkpoint_every, config_json, resume_art, inputs=inputs)
    prec = resolve_precision(cfg.precision, device)
    if prec.name == "fp16":
        raise UserError("--precision fp16: training in fp16 needs loss scaling, which ebmtool does not do; use bf16 "
                        "(fp16 is available for sample/reconstruct/anomaly)")
    ctx = RunContext(device=device, quiet=quiet or not distributed.world().is_main, seed=cfg.seed, ckpt=ck,
                     precision=prec)
    tb = None
    if tensorboard is not None:
        from ebmtool.tensorboard import TensorBoardLogger

        tb = TensorBoardLogger(tensorboard)
        ctx.on_epoch = lambda label, epoch, means: tb.log_epoch(label, epoch, means, ck.objects.get("model"))
    t0 = time.perf_counter()
    handlers = ck.install_signal_handlers()  # Ctrl-C / SIGTERM: checkpoint at the next iteration boundary
    try:
        res: FitResult = spec.fit(cfg, data, init, init_art, ctx)
    finally:
        ck.restore_signal_handlers(handlers)
        if tb is not None:
            tb.close()
    wall = time.perf_counter() - t0
    model = res.model
    tensors = {**model_tensors(model), **res.history.tensors(), **res.tensors}
    meta = {
        "model": model.spec(), "method": method, "image_shape": list(data.image_shape),
        "data_content_sha256": data.content_sha256, "n_train": len(data.x),
        "final": res.history.summary(), "wall_time_s": round(wall, 2), "device": str(device),
        "cpu": platform.processor() or platform.machine(), "torch": torch.__version__,
        "precision": prec.name, "precision_reason": prec.reason, **res.meta,
    }
    parents = [data.parent] + ([init_art.as_parent()] if init_art is not None else [])
    artifacts.save(out, "model", tensors, config=cfg, meta=meta, parents=parents, force=True)
    if ck.path is not None and ck.path.exists() and distributed.world().is_main:
        ck.path.unlink()
    return {"output": str(out), "method": method, "wall_time_s": round(wall, 2), **res.history.summary(),
            **{k: v for k, v in res.meta.items() if k != "data_content_sha256"}}


# ----------------------------------------------------------------------------------------------------------
def sample(model_path: str, n: int, *, out: Optional[str] = None, grid: Optional[str] = None,
           steps: Optional[int] = None, step_size: Optional[float] = None, sampler: Optional[str] = None,
           trajectory_every: int = 0, trajectory_png: Optional[str] = None, seed: int = 0, device: str = "auto",
           force: bool = False, layer_resample: Optional[int] = None, precision: str = "fp32",
           scale: Optional[int] = None) -> dict[str, Any]:
    if out is None and grid is None:
        raise UserError("sample: give -o FILE.safetensors and/or --grid FILE.png")
    if n < 1:
        raise UserError("-n: the number of samples must be at least 1")
    for p in (out, grid, trajectory_png):
        if p is not None:
            artifacts.check_output(p, force)
    if trajectory_png is not None and trajectory_every < 1:
        raise UserError("--trajectory-png needs --trajectory K (record every K-th step)")
    dev = resolve_device(device)
    seed_everything(seed, per_rank=True)
    model, art = load_model(model_path, device=dev)
    if sampler == "sir" and not getattr(getattr(model, "prior", None), "supports_sir", False):
        raise UserError(f"--sampler sir: not available for a {model.method} model")
    if layer_resample is not None:
        if trajectory_every:
            raise UserError("--layer-resample cannot be combined with --trajectory")
        from ebmtool.methods.joint import hierarchical_sample

        with _precision(precision, dev):
            res = hierarchical_sample(model, n, layer_resample, group=8, steps=steps, step_size=step_size, sampler=sampler)
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
        raise UserError("--trajectory: this model's prior is sampled exactly or by SIR; there is no Langevin chain to record")
    images = _to_uint8(res.images.float().cpu())
    tensors = {"images": images, **_latent_tensors(res.latents if not isinstance(res.latents, torch.Tensor) else res.latents.cpu())}
    meta: dict[str, Any] = {"n": n, "image_shape": list(images.shape[1:]), "model_method": model.method,
                            "steps": steps, "step_size": step_size, "sampler": sampler, "layer_resample": layer_resample}
    if res.trajectory is not None:
        tr = res.trajectory
        tensors["trajectory.steps"] = torch.tensor(tr.steps, device="cpu")
        tensors["trajectory.log_prob"] = tr.stacked_log_probs().cpu()
        with torch.no_grad():
            from ebmtool.models import bottom

            tensors["trajectory.images"] = torch.stack(
                [_to_uint8(model.generator(bottom(s if len(s) > 1 else s[0]))[:8].cpu()) for s in tr.states])
    if out is not None:
        artifacts.save(out, "samples", tensors, meta=meta, parents=[art], force=True)
    if grid is not None:
        save_grid(images, grid, nrow=8 if layer_resample else None, scale=scale)
    if trajectory_png is not None:
        t = tensors["trajectory.images"]  # (T, 8, C, H, W): rows = chains, columns = time
        save_grid(t.transpose(0, 1).reshape(-1, *t.shape[2:]), trajectory_png, nrow=t.shape[0], scale=scale)
    return {"output": out, "grid": grid, "n": n, "image_shape": list(images.shape[1:])}


MIN_GRID_PX = 256  # short side of a saved grid when --scale is not given


def grid_scale(short_side: int, scale: Optional[int] = None) -> int:
    """Integer nearest-neighbour factor: ``scale`` if given (>= 1), else the least one that makes the short side
    at least MIN_GRID_PX."""
    if scale is not None:
        if scale < 1:
            raise UserError(f"--scale {scale}: must be a whole number >= 1")
        return int(scale)
    return max(1, -(-MIN_GRID_PX // max(1, short_side)))


def save_grid(images_u8: torch.Tensor, path: str, nrow: Optional[int] = None, scale: Optional[int] = None) -> None:
    """PNG grid (written atomically), ``nrow`` images per row (default: a square grid, ceil(sqrt(n))), upscaled by
    nearest neighbour by ``scale`` (default: enough for MIN_GRID_PX on the short side) so one can judge it by eye."""
    import math

    from PIL import Image
    from torchvision.utils import make_grid

    images_u8 = images_u8[:256]
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images_u8))))
    g = make_grid(images_u8, nrow=nrow, padding=1, pad_value=128)  # uint8 (C, H, W); C is 3 for grey input
    k = grid_scale(min(g.shape[1], g.shape[2]), scale)
    img = Image.fromarray(g.permute(1, 2, 0).contiguous().numpy())
    if k > 1:
        img = img.resize((img.width * k, img.height * k), Image.NEAREST)
    with artifacts.atomic_write(path) as tmp:
        img.save(tmp, format="PNG")


def _check_fits(model: Model, x: torch.Tensor, data_path: str) -> None:
    if tuple(x.shape[1:]) != tuple(model.image_shape):
        raise UserError(f"{data_path}: images are {tuple(x.shape[1:])} but the model makes {tuple(model.image_shape)}")


def reconstruct(model_path: str, data_path: str, *, out: Optional[str] = None, grid: Optional[str] = None,
                steps: Optional[int] = None, step_size: Optional[float] = None, batch_size: int = 500,
                limit: Optional[int] = None, seed: int = 0, device: str = "auto", force: bool = False,
                precision: str = "fp32", scale: Optional[int] = None) -> dict[str, Any]:
    for p in (out, grid):
        if p is not None:
            artifacts.check_output(p, force)
    dev = resolve_device(device)
    seed_everything(seed, per_rank=True)
    model, art = load_model(model_path, device=dev)
    x, labels, data_art = load_images(data_path)
    if limit is not None:
        x, labels = x[:limit], labels[:limit]
    _check_fits(model, x, data_path)
    with _precision(precision, dev):
        xhat, z = batched(lambda b: model.reconstruct(b, steps=steps, step_size=step_size), x, batch_size, dev)
    xhat = xhat.float()
    per = (xhat - x).pow(2).flatten(1).mean(1)
    res = {"mse": float(per.mean()), "rmse": float(per.mean().sqrt()), "n": len(x),
           "pixel_range": "[-1, 1]", "model_method": model.method}
    if out is not None:
        artifacts.save(out, "reconstructions", {"images": _to_uint8(xhat), "mse": per, "labels": labels,
                                                **_latent_tensors(z)},
                       meta=res, parents=[art, data_art], force=True)
    if grid is not None:
        k = min(32, len(x))
        pairs = torch.stack([_to_uint8(x[:k]), _to_uint8(xhat[:k])], 1).reshape(-1, *x.shape[1:])
        save_grid(pairs, grid, nrow=16, scale=scale)
    return {**res, "output": out, "grid": grid}


def score_terms(model: Model, x: torch.Tensor, *, steps: Optional[int] = None, step_size: Optional[float] = None,
                batch_size: int = 500, device: torch.device) -> dict[str, torch.Tensor]:
    """The terms of the model's anomaly score for every image (see :mod:`ebmtool.eval.scores`), each (N,) float64."""
    names: list[str] = []

    def fn(b):
        t = model.score_terms(b, steps=steps, step_size=step_size)
        names[:] = list(t)
        return tuple(t.values())

    vals = batched(fn, x, batch_size, device)
    return {k: v.double() for k, v in zip(names, vals)}


def anomaly(model_path: str, data_path: str, *, positive: list[int] | None = None, ood_path: Optional[str] = None,
            out: Optional[str] = None, steps: Optional[int] = None, step_size: Optional[float] = None,
            batch_size: int = 500, seed: int = 0, device: str = "auto", force: bool = False,
            pr_png: Optional[str] = None, precision: str = "fp32", score: str = "joint",
            calibrate: Optional[str] = None) -> dict[str, Any]:
    """Anomaly / OOD evaluation with the label-free score ``score`` (:data:`ebmtool.eval.scores.SCORES`).
    ``calibrate``: a dataset of held-out normals whose mean joint score anchors ``typicality``."""
    from ebmtool.eval.anomaly import binary_labels, metrics
    from ebmtool.eval import scores as S

    if (positive is None) == (ood_path is None):
        raise UserError("anomaly: give exactly one of --anomaly-class/--labels-positive or --ood-data")
    if score not in S.SCORES:
        raise UserError(f"--score: unknown score {score!r} (choose from {', '.join(S.SCORES)})")
    if calibrate is not None and score != "typicality":
        raise UserError(f"--calibrate: only the typicality score uses it (got --score {score})")
    if score == "typicality" and calibrate is None:
        S.score("typicality", {}, calibration=None)  # raises the one-line error
    for p in (out, pr_png):
        if p is not None:
            artifacts.check_output(p, force)
    dev = resolve_device(device)
    seed_everything(seed, per_rank=True)
    model, art = load_model(model_path, device=dev)
    x, labels, data_art = load_images(data_path)
    _check_fits(model, x, data_path)
    parents = [art, data_art]
    if ood_path is not None:
        xo, _, ood_art = load_images(ood_path, what="--ood-data")
        _check_fits(model, xo, ood_path)
        x = torch.cat([x, xo])
        y = torch.cat([torch.zeros(len(x) - len(xo), dtype=torch.long, device=x.device), torch.ones(len(xo), dtype=torch.long, device=x.device)])
        parents.append(ood_art)
    else:
        y = binary_labels(labels, positive)
    cal_mean = None
    if calibrate is not None:
        xc, _, cal_art = load_images(calibrate, what="--calibrate")
        _check_fits(model, xc, calibrate)
        parents.append(cal_art)
    kw = dict(steps=steps, step_size=step_size, batch_size=batch_size, device=dev)
    with _precision(precision, dev):
        terms = score_terms(model, x, **kw)
        if calibrate is not None:
            cal_mean = float(S.joint(score_terms(model, xc, **kw)).mean())
    what = f"{model.method} model" if isinstance(model, LatentModel) else f"a {model.method} model"
    scores = torch.from_numpy(S.score(score, terms, images=_to_uint8(x), calibration=cal_mean, model=what))
    m = metrics(y, scores)
    base = ("-log p(x, z) at posterior samples" if isinstance(model, LatentModel)
            else getattr(model, "score_name", "anomaly score"))
    res = {**m.as_dict(), "model_method": model.method, "score": score, "score_description": base if score == "joint"
           else f"{score} (from {base})", "calibration_mean_joint": cal_mean,
           "anomaly_classes": positive, "ood_data": ood_path}
    if out is not None:
        tensors = {"scores": scores.double(), "labels": y, **{f"terms.{k}": v for k, v in terms.items()}}
        artifacts.save(out, "scores", tensors, meta=res, parents=parents, force=True)
    if pr_png is not None:
        from ebmtool.eval.plots import pr_curve_png

        pr_png and pr_curve_png(y.numpy(), scores.numpy(), pr_png)
    return {**res, "output": out}


# ----------------------------------------------------------------------------------------------------------
def inspect(path: str) -> dict[str, Any]:
    art = artifacts.load(path)
    return {
        "path": str(art.path), "kind": art.kind, "version": art.version, "format": artifacts.FORMAT,
        "sha256": art.sha256, "parents": art.parents, "meta": art.meta, "config": art.config,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")} for k, v in art.tensors.items()},
    }
