"""The training stages: ``data prepare``, ``pretrain-generator`` and ``fit-prior`` (one function, :func:`train`)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import torch

from ebmtool import artifacts, distributed
from ebmtool.checkpoint import Checkpointer, open_resume
from ebmtool.data import DataConfig, load_images, prepare
from ebmtool.errors import UserError
from ebmtool.methods import METHODS
from ebmtool.models import load_model, model_tensors
from ebmtool.registry import Kept
from ebmtool.runtime import cpu_name, resolve_device, seed_everything
from ebmtool.runtime import resolve as resolve_precision
from ebmtool.training import FitResult, RunContext, TrainData


def data_prepare(cfg: DataConfig, out: str, force: bool = False, quiet: bool = False) -> dict[str, Any]:
    artifacts.check_output(out, force)
    tensors, meta = prepare(cfg, quiet=quiet)
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


def keep_init_structure(cfg, init, sections: tuple[Kept, ...], asked: dict[str, dict[str, tuple[Any, str]]]):
    """The config a run from ``--init`` really uses: for each config section the method takes from the init model
    (``MethodSpec.kept_from_init``: its generator, a continued prior's energy, BiDVL's three networks), the init's
    saved values replace the config's, so the new artifact says what was trained. ``asked``: {section: {field:
    (value, where the user set it)}}; a value that differs from the init's is refused in one line rather than
    silently ignored. Init models of another family are left to the method, which refuses them itself."""
    spec = init.spec() if hasattr(init, "spec") else {}
    kept = {}
    for k in sections:
        section, saved = getattr(cfg, k.section, None), spec.get(k.spec_key or k.section)
        fields = list(type(section).model_fields) if section is not None else []
        if (not isinstance(saved, dict) or not fields or any(f not in saved for f in fields)
                or (k.when is not None and saved.get("type") != k.when)):
            if k.when is None:
                return cfg  # not a model this method continues: the method says why
            continue  # the init has no such part: this run builds it from the config
        kept[k.section] = {f: saved[f] for f in fields}
    for name, values in kept.items():
        for f, (value, where) in asked.get(name, {}).items():
            if f in values and not (f == "arch" and value == "auto") and value != values[f]:
                raise UserError(f"{where}: the --init model's {name} has {f} {values[f]} and is kept (drop the "
                                "option, or give the same value)")
    return cfg.model_copy(update={n: type(getattr(cfg, n))(**v) for n, v in kept.items()})


def train(method: str, cfg, data_path: str, out: str, *, init_path: Optional[str] = None, force: bool = False,
          quiet: bool = False, checkpoint_every: int = 0, checkpoint: Optional[str] = None,
          resume: Optional[str] = None, tensorboard: Optional[str] = None,
          asked: Optional[dict[str, dict[str, tuple[Any, str]]]] = None) -> dict[str, Any]:
    """Fit ``method`` with the resolved ``cfg`` on ``data_path``; write a model artifact to ``out``.

    With ``checkpoint_every`` > 0 (or on SIGINT/SIGTERM) a resumable checkpoint is written to ``checkpoint``
    (default: OUT with suffix .ckpt.safetensors); ``resume`` continues from one. The checkpoint is removed
    once the model artifact is written. ``tensorboard``: a directory for TensorBoard scalars and sample grids
    per epoch (:mod:`ebmtool.tensorboard`). ``asked``: the config fields the user set explicitly, by section, with
    where each was set (an option, --set, the TOML file); with ``init_path`` those of the sections the init model
    fixes must agree with it (:func:`keep_init_structure`)."""
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
    init = init_art = config_asked = None
    if init_path is not None:
        init, init_art = load_model(init_path, what="--init", device=device)
        init.train()
        cfg = keep_init_structure(cfg, init, spec.kept_from_init, asked or {})
        config_asked, config_json = config_json, cfg.model_dump(mode="json")
    inputs = {"data_content_sha256": data.content_sha256, "init_sha256": init_art.sha256 if init_art else None}
    if distributed.world().parallel:
        inputs["world_size"] = distributed.world().size
    if resume:
        resume_art = open_resume(resume, config_json, inputs, also=config_asked)
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
        "cpu": cpu_name(), "torch": torch.__version__,
        "precision": prec.name, "precision_reason": prec.reason, **res.meta,
    }
    parents = [data.parent] + ([init_art.as_parent()] if init_art is not None else [])
    artifacts.save(out, "model", tensors, config=cfg, meta=meta, parents=parents, force=True)
    if ck.path is not None and ck.path.exists() and distributed.world().is_main:
        ck.path.unlink()
    return {"output": str(out), "method": method, "wall_time_s": round(wall, 2), **res.history.summary(),
            **{k: v for k, v in res.meta.items() if k != "data_content_sha256"}}
