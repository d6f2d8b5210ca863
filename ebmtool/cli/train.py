"""The training commands, pretrain-generator and fit-prior, built from one option list and the method registry
(``fit-prior`` gets every registered method's flags)."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, List, Optional

import typer

from ebmtool.cli.app import (CkEveryOpt, CkOpt, ConfigOpt, DeviceOpt, ForceOpt, JsonOpt, OutOpt, PrecisionOpt,
                                 PresetOpt, QuietOpt, ResumeOpt, SeedOpt, SetOpt, SnapshotsOpt, TensorBoardOpt, _s, app,
                                 emit)
from ebmtool.errors import UserError
from ebmtool.methods import METHODS
from ebmtool.nets import GENERATORS


def _train(method: str, fields: dict[str, Any], sets, preset, config, data, init, output, force, quiet, as_json,
           ck_every: int, ck: Optional[Path], resume: Optional[Path], tensorboard: Optional[Path],
           snapshots: Optional[Path], fit_prior: bool) -> None:
    from ebmtool import stages
    from ebmtool.config import resolve_typed

    spec = METHODS.get(method)
    if spec is None or spec.fit_prior != fit_prior:
        choices = ", ".join(k for k, m in METHODS.items() if m.fit_prior)
        raise UserError(f"--method: unknown method {method!r} (choose from {choices})")
    cfg, asked = resolve_typed(spec.config, method=method, preset=preset, toml=config, sets=sets,
                               options={f: (v, OPTION_OF.get(f, f)) for f, v in fields.items()})
    res = stages.train(spec, cfg, str(data), str(output), init_path=_s(init), force=force, quiet=quiet,
                       checkpoint_every=ck_every, checkpoint=_s(ck), resume=_s(resume), tensorboard=_s(tensorboard),
                       snapshots=_s(snapshots), asked=asked)
    emit(res, as_json, method)


# the options of pretrain-generator and fit-prior: (parameter, type, option, config field or None)
TRAIN_OPTIONS: list[tuple[str, Any, Any, Optional[str]]] = [
    ("data", Path, typer.Option(..., "--data", help="dataset artifact"), None),
    ("output", Path, OutOpt, None),
    ("init", Optional[Path], typer.Option(None, "--init", help="start from a model artifact (a pretrained generator, "
                                          "or a model to continue or add stages to)"), None),
    ("preset", Optional[str], PresetOpt, None),
    ("config", Optional[Path], ConfigOpt, None),
    ("epochs", Optional[int], typer.Option(None, "--epochs", help="passes over the data (default: the preset's; "
                                           "adaptive-nce/nce count --epochs-per-stage instead)"), "epochs"),
    ("batch_size", Optional[int], typer.Option(None, "--batch-size", help="images per optimiser step (under torchrun: "
                                               "the global batch, split across ranks; default: the preset's)"),
     "batch_size"),
    ("arch", Optional[str], typer.Option(None, "--arch", help="generator architecture: auto (the papers' network "
                                         "at its size, general elsewhere) | " + " | ".join(GENERATORS)),
     "generator.arch"),
    ("nz", Optional[int], typer.Option(None, "--nz", help="latent dimension"), "generator.nz"),
    ("seed", Optional[int], SeedOpt, "seed"),
    ("device", Optional[str], DeviceOpt, "device"),
    ("precision", Optional[str], PrecisionOpt, "precision"),
    ("sets", Optional[List[str]], SetOpt, None),
    ("checkpoint_every", int, CkEveryOpt, None),
    ("checkpoint", Optional[Path], CkOpt, None),
    ("resume", Optional[Path], ResumeOpt, None),
    ("tensorboard", Optional[Path], TensorBoardOpt, None),
    ("snapshots", Optional[Path], SnapshotsOpt, None),
    ("force", bool, ForceOpt, None),
    ("quiet", bool, QuietOpt, None),
    ("as_json", bool, JsonOpt, None),
]


def _option_of() -> dict[str, str]:
    """config field -> the option that sets it (for messages)."""
    return {f: o.param_decls[0].split("/")[0] for _, _, o, f in TRAIN_OPTIONS + _method_flags() if f is not None}


def _method_flags() -> list[tuple[str, Any, Any, Optional[str]]]:
    """The options the registered methods declare (one per option name, shared by the methods that declare it)."""
    seen: dict[str, tuple[str, Any, Any, Optional[str]]] = {}
    for m in METHODS.values():
        for f in m.flags:
            if f.option not in seen:
                seen[f.option] = (f.param, Optional[f.type], typer.Option(None, *f.option.split(" "), help=f.help),
                                  f.field)
    return list(seen.values())


OPTION_OF = _option_of()


def _training_command(name: str, method: Optional[str], doc: str) -> None:
    """Register ``name``: pretrain-generator (``method`` fixed) or fit-prior (``--method`` and every method's flags)."""
    opts = list(TRAIN_OPTIONS)
    if method is None:
        names = ", ".join(k for k, m in METHODS.items() if m.fit_prior)
        opts = [("method", str, typer.Option(..., "--method", help=f"training method: {names} (see `ebmtool methods`)"),
                 None)] + opts[:10] + _method_flags() + opts[10:]
    fields = {p: f for p, _, _, f in opts if f is not None}

    def command(**kw: Any) -> None:
        _train(kw.pop("method", method), {f: kw.pop(p) for p, f in fields.items()}, kw["sets"], kw["preset"],
               kw["config"], kw["data"], kw["init"], kw["output"], kw["force"], kw["quiet"], kw["as_json"],
               kw["checkpoint_every"], kw["checkpoint"], kw["resume"], kw["tensorboard"], kw["snapshots"],
               fit_prior=method is None)

    command.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [inspect.Parameter(p, inspect.Parameter.KEYWORD_ONLY, default=o, annotation=t) for p, t, o, _ in opts])
    command.__annotations__ = {p: t for p, t, _, _ in opts}
    command.__doc__ = doc
    app.command(name)(command)


_training_command("pretrain-generator", "pretrain",
                  "Train a generator under N(0, I) with short-run posterior Langevin (the \"0 stages\" model).")
_training_command("fit-prior", None, "\n".join(
    ["Fit a latent-space EBM prior (and its generator) by one of the registered methods (`ebmtool methods`):", ""]
    + [f"{k}: {m.description.rstrip('.')}." for k, m in METHODS.items() if m.fit_prior]))
