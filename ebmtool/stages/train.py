"""The training stages: ``data prepare``, ``pretrain-generator`` and ``fit-prior`` (one function, :func:`train`)."""

from __future__ import annotations

import copy
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional

import torch

from ebmtool import artifacts, distributed
from ebmtool.checkpoint import Checkpointer, check_replaceable, open_resume
from ebmtool.data import DataConfig, as_images, collect_images, load_images, prepare
from ebmtool.errors import UserError
from ebmtool.methods import METHODS
from ebmtool.models import Model, load_model, model_tensors
from ebmtool.registry import Kept, MethodSpec
from ebmtool.runtime import cpu_name, resolve_device, seed_everything
from ebmtool.runtime import resolve as resolve_precision
from ebmtool.training import FitResult, RunContext, TrainData


def data_prepare(cfg: DataConfig, out: str, force: bool = False, quiet: bool = False) -> dict[str, Any]:
    if not isinstance(cfg, DataConfig):
        raise UserError(f"data_prepare: expected a DataConfig, got {type(cfg).__name__}")
    artifacts.check_output(out, force)
    tensors, meta = prepare(cfg, quiet=quiet)
    artifacts.save(out, "dataset", tensors, config=cfg, meta=meta, force=force)
    res = {"output": str(out), **{k: meta[k] for k in ("dataset", "split", "n", "image_shape", "classes")}}
    if "class_names" in meta:
        res["class_names"] = meta["class_names"]
    if cfg.skip_bad:
        res["skipped"] = len(meta.get("skipped", []))
    return res


def open_training_data(path: str, device: torch.device) -> TrainData:
    x, labels, art = load_images(path, what="--data")
    if art.kind != "dataset":
        raise UserError(f"{art.path}: training needs a dataset artifact, got {art.kind}")
    # a recorded content_sha256 was recomputed and checked by artifacts.load; without one it is computed here
    sha = art.meta.get("content_sha256") or artifacts.tensor_sha256(art.tensors["images"],
                                                                    art.tensors.get("labels", labels))
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
        outer, *inner = (k.spec_key or k.section).split(".")
        section, saved, part = getattr(cfg, k.section, None), spec.get(outer), spec.get(outer)
        for key in inner:
            saved = saved.get(key) if isinstance(saved, dict) else None
        fields = type(section).model_fields if section is not None else {}
        typed = k.when is not None and isinstance(saved, dict) and isinstance(part, dict) and part.get("type") == k.when
        if not fields or not isinstance(saved, dict) or (k.when is not None and not typed) or (
                not typed and any(f not in saved for f in fields)):
            if k.when is None:
                return cfg  # not a model this method continues: the method says why
            continue  # the init has no such part: this run builds it from the config
        # a part of the right type saved before one of the section's fields existed: the fields it has are kept
        # (and checked against what the user set), the missing one stays as the config says
        kept[k.section] = {f: saved[f] for f in fields if f in saved}
    for name, values in kept.items():
        for f, (value, where) in asked.get(name, {}).items():
            if f in values and not (f == "arch" and value == "auto") and value != values[f]:
                raise UserError(f"{where}: the --init model's {name} has {f} {values[f]} and is kept (drop the "
                                "option, or give the same value)")
    return cfg.model_copy(update={n: type(getattr(cfg, n))(**{**getattr(cfg, n).model_dump(), **v})
                                  for n, v in kept.items()})


class Snapshots:
    """``--snapshots DIR``: the model as it stands at each epoch end, ``DIR/epoch-NNN.safetensors`` (epochs counted
    from the run's start, resumed runs included), with the epoch's means; a file already there is refused unless
    ``force`` (it was made by another run)."""

    def __init__(self, folder: str, cfg, data, method: str, force: bool):
        self.dir, self.cfg, self.data, self.method, self.force = Path(folder), cfg, data, method, force
        self.t0 = time.perf_counter()

    def save(self, epoch: int, model, means: dict[str, float]) -> None:
        if not distributed.world().is_main:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        out = self.dir / f"epoch-{epoch + 1:03d}.safetensors"
        artifacts.check_output(str(out), self.force)
        meta = {"model": model.spec(), "method": self.method, "image_shape": list(self.data.image_shape),
                "data_content_sha256": self.data.content_sha256, "n_train": len(self.data.x), "epoch": epoch + 1,
                "epoch_means": means, "wall_time_s": round(time.perf_counter() - self.t0, 2), "cpu": cpu_name()}
        artifacts.save(str(out), "model", model_tensors(model), config=self.cfg, meta=meta,
                       parents=[self.data.parent], force=self.force)


def train(method: "str | MethodSpec", cfg, data_path: str, out: str, *, init_path: Optional[str] = None,
          force: bool = False, quiet: bool = False, checkpoint_every: int = 0, checkpoint: Optional[str] = None,
          resume: Optional[str] = None, tensorboard: Optional[str] = None, snapshots: Optional[str] = None,
          asked: Optional[dict[str, dict[str, tuple[Any, str]]]] = None) -> dict[str, Any]:
    """The stage of ``pretrain-generator`` and ``fit-prior``: :func:`fit` on the dataset artifact ``data_path``,
    writing the model artifact ``out``; returns the run's summary."""
    return fit(method, cfg, data_path, out, init_path=init_path, force=force, quiet=quiet,
               checkpoint_every=checkpoint_every, checkpoint=checkpoint, resume=resume, tensorboard=tensorboard,
               snapshots=snapshots, asked=asked)[1]


def tensor_training_data(images: Any, labels: Any = None, value_range: Any = None) -> TrainData:
    """The in-memory twin of :func:`open_training_data`: images (N, C, H, W) uint8 in [0, 255] or float in [-1, 1]
    (or in ``value_range``), as a tensor, a NumPy array, a ``Dataset`` or a ``DataLoader``
    (:func:`ebmtool.data.as_images`), labels (N,) or None. Their content hash is the one ``data prepare`` records
    (``content_sha256``), so a model trained on a dataset artifact continues on the same tensors; the lineage
    names no file (``path`` None)."""
    raw, raw_labels = collect_images(images, labels, "data")
    x, y = as_images(raw, raw_labels, "data", value_range=value_range)
    sha = artifacts.tensor_sha256(raw, y)
    return TrainData(x, y, sha, {"path": None, "sha256": sha, "kind": "tensors"})


def fit(method: "str | MethodSpec", cfg, data: "str | TrainData", out: Optional[str] = None, *,
        init_path: Optional[str] = None, init_model: Optional[Model] = None, force: bool = False, quiet: bool = False,
        checkpoint_every: int = 0, checkpoint: Optional[str] = None,
        resume: Optional[str] = None, tensorboard: Optional[str] = None, snapshots: Optional[str] = None,
        asked: Optional[dict[str, dict[str, tuple[Any, str]]]] = None) -> tuple[Model, dict[str, Any]]:
    """Fit ``method`` with the resolved ``cfg`` on ``data`` (a dataset artifact's path, or :class:`TrainData` from
    :func:`tensor_training_data`); write a model artifact to ``out`` when given. Returns (the model, the summary).

    With ``checkpoint_every`` > 0 (or on SIGINT/SIGTERM) a resumable checkpoint is written to ``checkpoint``
    (default: OUT with suffix .ckpt.safetensors); ``resume`` continues from one. The checkpoint is removed
    once the model artifact is written. ``tensorboard``: a directory for TensorBoard scalars and sample grids
    per epoch (:mod:`ebmtool.tensorboard`). ``snapshots``: a directory that receives the model as it stands at each
    epoch end, ``epoch-NNN.safetensors`` (model artifacts, for learning curves). ``init_model``: a model object to
    start from instead of the artifact ``init_path`` (a copy is trained; the lineage records its tensors' hash,
    :class:`~ebmtool.artifacts.MemoryArtifact`). ``asked``: the config fields the user set explicitly, by section, with
    where each was set (an option, --set, the TOML file); with ``init_path`` those of the sections the init model
    fixes must agree with it (:func:`keep_init_structure`)."""
    spec = method if isinstance(method, MethodSpec) else METHODS[method]  # the registry entry, or its name
    method = spec.name
    for section, why in (cfg.unused_sections() if hasattr(cfg, "unused_sections") else {}).items():
        for _, where in (asked or {}).get(section, {}).values():  # set by the user: refused, not ignored
            raise UserError(f"{where}: {why}")
    if out is not None:
        artifacts.check_output(out, force)
    if hasattr(cfg, "batch_size"):
        distributed.check_batch_size(cfg.batch_size)
    if checkpoint_every < 0:
        raise UserError("--checkpoint-every must be >= 0")
    ck_path = Path(checkpoint) if checkpoint else (checkpoint_path(out) if out is not None else None)
    if ck_path is None and checkpoint_every:
        raise UserError("--checkpoint-every: give an output file or a checkpoint file to write checkpoints to")
    config_json = cfg.model_dump(mode="json")
    resume_art = None
    data_path = str(data) if not isinstance(data, TrainData) else None
    inputs_given = {"--data": data_path, "--init": init_path, "--resume": resume}
    for folder in ("--snapshots", "--tensorboard"):  # (the two folders may be one: their files do not collide)
        artifacts.check_distinct({"-o": out, folder: {"--snapshots": snapshots, "--tensorboard": tensorboard}[folder]},
                                 inputs_given)
    resuming_it = False
    if ck_path is not None:
        artifacts.check_distinct({"--checkpoint": ck_path}, {"--data": data_path, "--init": init_path})
        if out is not None and ck_path.resolve() == Path(out).resolve():
            raise UserError(f"--checkpoint {ck_path}: must differ from the output file")
        # an existing checkpoint is only overwritten when it is the one being resumed (or with --force)
        resuming_it = resume is not None and Path(resume).resolve() == ck_path.resolve()
        check_replaceable(ck_path)  # a model (or any other file) there is never replaced nor removed
        if ck_path.exists() and not resuming_it and not force:
            raise UserError(f"{ck_path}: a checkpoint of an earlier run exists (continue it with --resume {ck_path}, "
                            "or pass --force)")
        artifacts.check_output(ck_path, True)
    if tensorboard is not None:
        from ebmtool.tensorboard import require

        require()  # one line before any work when the package is missing
    if snapshots is not None:
        if not spec.snapshots:
            raise UserError(f"--snapshots: a {method} run adds each stage's ratio only at the stage's end; save one "
                            "model per stage instead (--init the previous one with --stages 1)")
        if Path(snapshots).exists() and not Path(snapshots).is_dir():
            raise UserError(f"--snapshots {snapshots}: exists and is not a folder")
        taken = sorted(Path(snapshots).glob("epoch-*.safetensors")) if Path(snapshots).is_dir() else []
        if taken and resume is None and not force:  # refused before any work, not at the first epoch's end
            raise UserError(f"--snapshots {snapshots}: holds {taken[0].name} of an earlier run (another folder, "
                            "--resume that run, or --force)")
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    data = (replace(data, x=data.x.to(device)) if isinstance(data, TrainData)
            else open_training_data(str(data), device))
    init = init_art = config_asked = None
    if init_path is not None and init_model is not None:
        raise UserError("init: give a model artifact's path or a model object, not both")
    if init_model is not None:
        init = copy.deepcopy(init_model).to(device)  # the caller's object stays as it was
        init_art = artifacts.MemoryArtifact(Path(f"<{type(init_model).__name__} object>"), "model",
                                            {k: v.detach().cpu() for k, v in model_tensors(init_model).items()},
                                            meta={"model": init_model.spec()})
    elif init_path is not None:
        init, init_art = load_model(init_path, what="--init", device=device)
    if init is not None:
        init.train()
        cfg = keep_init_structure(cfg, init, spec.kept_from_init, asked or {})
        config_asked, config_json = config_json, cfg.model_dump(mode="json")
    inputs = {"data_content_sha256": data.content_sha256, "init_sha256": init_art.sha256 if init_art else None,
              "method": method}
    if distributed.world().parallel:
        inputs["world_size"] = distributed.world().size
    if resume:
        resume_art = open_resume(resume, config_json, inputs, also=config_asked)
    ck = Checkpointer(ck_path, checkpoint_every, config_json, resume_art, inputs=inputs)
    # the checkpoint file this run may replace: the one it resumes, or with --force; it removes only the one it resumes
    ck.claim(resuming_it or force, resumed=resuming_it)
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
    # a resumed run rewrites the epochs after its checkpoint (written before it was stopped)
    snap = Snapshots(snapshots, cfg, data, method, force or resume is not None) if snapshots is not None else None

    def on_epoch(label: str, epoch: int, means: dict[str, float]) -> None:
        if tb is not None:
            tb.log_epoch(label, epoch, means, ck.objects.get("model"))
        if snap is not None:
            snap.save(epoch, ck.objects["model"], means)

    ctx.on_epoch = on_epoch if (tb is not None or snap is not None) else None
    t0 = time.perf_counter()
    # Ctrl-C / SIGTERM: checkpoint at the next iteration boundary (in memory, with nowhere to write: Python's own)
    handlers = ck.install_signal_handlers() if ck.path is not None else {}
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
    # -o did not exist at the start (or --force was given): a file there now was written meanwhile by another run,
    # which keeps it; this run refuses rather than replace it (its own checkpoint, if it wrote one, stays)
    if out is not None and distributed.any_rank(not force and distributed.world().is_main and Path(out).exists()):
        kept = f"; this run's checkpoint {ck.path} is kept" if ck.owns_file() else ""
        raise UserError(f"{out}: output appeared while this run was training (another run wrote it); not "
                        f"overwriting it without --force{kept}")
    if out is not None:  # rank 0 alone writes and checks; a full disk: the model goes to $TMPDIR, the message says
        artifacts.save_or_rescue(out, "model", tensors, config=cfg, meta=meta, parents=parents,
                                 force=force or not distributed.world().is_main)
    if ck.path is not None and distributed.world().is_main and ck.owns_file():
        ck.path.unlink()  # only this run's own checkpoint (or the one it resumed), never another run's
    return model, {"output": None if out is None else str(out), "method": method, "wall_time_s": round(wall, 2),
                   **res.history.summary(), **{k: v for k, v in res.meta.items() if k != "data_content_sha256"}}
