"""Thin Typer app: parse options, build a pydantic config, call one function in ebmtool.stages, print.

Every user mistake is one line on stderr and exit status 2 (divergence: 3); results go to stdout
(a rich table, or one JSON object with --json). Langevin convention everywhere:
z <- z + (s^2/2) grad log pi(z) + s * eps (s = --step-size).
"""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.console import Console

try:  # typer >= 0.20 vendors click
    from typer._click.exceptions import ClickException as _ClickException
    from typer._click.exceptions import UsageError as _UsageError
    from typer.exceptions import Abort as _Abort
except ImportError:  # older typer depends on click
    from click.exceptions import Abort as _Abort
    from click.exceptions import ClickException as _ClickException
    from click.exceptions import UsageError as _UsageError
from rich.console import Console
from rich.table import Table

from ebmtool.errors import UserError

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ebmtool: energy-based priors in the latent space of generator models. "
                       "Stages chain through safetensors artifacts. Langevin convention: "
                       "z <- z + (s^2/2) grad log pi(z) + s*eps.")


@app.callback()
def _common(threads: Optional[int] = typer.Option(
        None, "--threads", min=1, envvar="EBMTOOL_THREADS",
        help="CPU threads for torch's intra-op pool (default: torch's choice; on a busy shared machine 1 can be "
             "several times faster than 2)")) -> None:
    """Options for every command: ebmtool [--threads N] COMMAND ..."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


data_app = typer.Typer(no_args_is_help=True, help="Dataset artifacts.")
app.add_typer(data_app, name="data")

out_console = Console()

# ------------------------------------------------------------------------------------------------
# common options
# ------------------------------------------------------------------------------------------------
OutOpt = typer.Option(..., "-o", "--output", help="output artifact (.safetensors)")
ForceOpt = typer.Option(False, "--force", help="overwrite an existing output")
JsonOpt = typer.Option(False, "--json", help="print one JSON object on stdout")
QuietOpt = typer.Option(False, "--quiet", "-q", help="no progress or log lines on stderr")
SeedOpt = typer.Option(None, "--seed", help="random seed")
DeviceOpt = typer.Option(None, "--device", help="auto|cpu|cuda|cuda:N|mps")
PrecisionOpt = typer.Option(None, "--precision", help="fp32 (default, exact) | auto (reduced only where native) | bf16 | fp16 | tf32")
EvalPrecisionOpt = typer.Option("fp32", "--precision", help="fp32 (default) | auto | bf16 | fp16 | tf32")
PresetOpt = typer.Option(None, "--preset", help="smoke | cpu | paper (see `ebmtool presets`)")
ConfigOpt = typer.Option(None, "--config", help="TOML file with config values (flags override it)")
SetOpt = typer.Option(None, "--set", help="any config field, e.g. --set posterior.steps=30 (repeatable)")
CkEveryOpt = typer.Option(0, "--checkpoint-every", help="write a resumable checkpoint every N iterations (0: only on Ctrl-C/SIGTERM)")
CkOpt = typer.Option(None, "--checkpoint", help="checkpoint file (default: OUTPUT with .ckpt.safetensors)")
ResumeOpt = typer.Option(None, "--resume", help="continue from a checkpoint written by the same command")
TensorBoardOpt = typer.Option(None, "--tensorboard", help="DIR: TensorBoard scalars and a sample grid per epoch "
                              "(needs pip install -e '.[tensorboard]')")
ScaleOpt = typer.Option(None, "--scale", min=1, help="upscale the PNG grid by this whole factor, nearest neighbour "
                        "(default: the least giving >= 256 px on the short side)")


def emit(result: dict[str, Any], as_json: bool, title: str) -> None:
    from ebmtool.distributed import world

    if not world().is_main:  # under torchrun rank 0 reports for all
        return
    if as_json:
        print(json.dumps(result, default=str))
        return
    t = Table(title=title, show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for k, v in result.items():
        if v is None:
            continue
        t.add_row(k, f"{v:.4g}" if isinstance(v, float) else str(v))
    out_console.print(t)


def parse_sets(items: Optional[List[str]]) -> dict[str, Any]:
    """--set a.b=value -> {"a": {"b": value}}; values parsed as JSON where possible (numbers, true/false)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        d = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise UserError(f"--set {item!r}: {p!r} was already set to a value, not a group of fields")
        d[parts[-1]] = val
    return out


def nested(flags: dict[str, Any]) -> dict[str, Any]:
    """{"posterior.steps": 30, "epochs": None} -> {"posterior": {"steps": 30}} (None = not given)."""
    out: dict[str, Any] = {}
    for key, v in flags.items():
        if v is None:
            continue
        d = out
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


# ------------------------------------------------------------------------------------------------
@data_app.command("prepare")
def data_prepare(
    dataset: str = typer.Option(..., "--dataset", help="digits | mnist | svhn | cifar10 | celeba | synthetic"),
    output: Path = OutOpt,
    root: Optional[str] = typer.Option(None, "--root", help="folder with the dataset's standard files"),
    split: str = typer.Option("train", "--split", help="train | test"),
    download: bool = typer.Option(False, "--download", help="let torchvision download into --root (needs internet)"),
    exclude_class: Optional[int] = typer.Option(None, "--exclude-class"),
    only_class: Optional[int] = typer.Option(None, "--only-class"),
    anomaly_protocol: Optional[int] = typer.Option(None, "--anomaly-protocol", help="held-out class K (DESIGN §5 split)"),
    part: Optional[str] = typer.Option(None, "--part", help="train | test part of the anomaly protocol; fit | calibration split train 90/10 (calibration: held-out normals for anomaly --calibrate)"),
    size: Optional[int] = typer.Option(None, "--size", help="resize to SIZE x SIZE"),
    limit: Optional[int] = typer.Option(None, "--limit", help="keep the first N images"),
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
):
    """Write a dataset artifact (uint8 images N x C x H x W, labels)."""
    from ebmtool import stages
    from ebmtool.config import build
    from ebmtool.data import DataConfig

    cfg = build(DataConfig, nested(dict(dataset=dataset, root=root, split=split, download=download,
                                        exclude_class=exclude_class, only_class=only_class,
                                        anomaly_protocol=anomaly_protocol, part=part, size=size, limit=limit)),
                where="data prepare")
    emit(stages.data_prepare(cfg, str(output), force), as_json, "dataset")


def _train(method: str, flags: dict[str, Any], sets, preset, config, data, init, output, force, quiet, as_json,
           *, fit_prior: bool = True, ck_every: int = 0, ck: Optional[Path] = None, resume: Optional[Path] = None,
           tensorboard: Optional[Path] = None):
    from ebmtool import stages
    from ebmtool.config import deep_merge, resolve
    from ebmtool.methods import METHODS

    if method not in METHODS or METHODS[method].fit_prior != fit_prior:
        choices = ", ".join(k for k, m in METHODS.items() if m.fit_prior)
        raise UserError(f"--method: unknown method {method!r} (choose from {choices})")
    cfg = resolve(METHODS[method].config, method=method, preset=preset, toml=config,
                  flags=deep_merge(nested(flags), parse_sets(sets)))
    res = stages.train(method, cfg, str(data), str(output), init_path=str(init) if init else None, force=force,
                       quiet=quiet, checkpoint_every=ck_every, checkpoint=_s(ck), resume=_s(resume),
                       tensorboard=_s(tensorboard))
    emit(res, as_json, f"{method}")


@app.command("pretrain-generator")
def pretrain_generator(
    data: Path = typer.Option(..., "--data", help="dataset artifact"),
    output: Path = OutOpt,
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    arch: Optional[str] = typer.Option(None, "--arch", help="auto | digits8 | mnist32 | svhn32 | cifar32 | celeba64"),
    nz: Optional[int] = typer.Option(None, "--nz", help="latent dimension"),
    init: Optional[Path] = typer.Option(None, "--init", help="continue from a model artifact"),
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    precision: Optional[str] = PrecisionOpt,
    sets: Optional[List[str]] = SetOpt,
    checkpoint_every: int = CkEveryOpt,
    checkpoint: Optional[Path] = CkOpt,
    resume: Optional[Path] = ResumeOpt,
    tensorboard: Optional[Path] = TensorBoardOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Train a generator under N(0, I) with short-run posterior Langevin (the "0 stages" model)."""
    flags = {"epochs": epochs, "batch_size": batch_size, "generator.arch": arch, "generator.nz": nz, "seed": seed,
             "device": device, "precision": precision}
    _train("pretrain", flags, sets, preset, config, data, init, output, force, quiet, as_json, fit_prior=False,
           ck_every=checkpoint_every, ck=checkpoint, resume=resume, tensorboard=tensorboard)


def _method_help() -> str:
    from ebmtool.methods import METHODS

    return "; ".join(f"{k}: {m.description}" for k, m in METHODS.items() if m.fit_prior)


@app.command("fit-prior")
def fit_prior(
    method: str = typer.Option(..., "--method", help="training method (see `ebmtool methods`)"),
    data: Path = typer.Option(..., "--data", help="dataset artifact"),
    output: Path = OutOpt,
    init: Optional[Path] = typer.Option(None, "--init", help="start from a model artifact (pretrained generator, or a model to add stages to)"),
    preset: Optional[str] = PresetOpt,
    config: Optional[Path] = ConfigOpt,
    epochs: Optional[int] = typer.Option(None, "--epochs"),
    batch_size: Optional[int] = typer.Option(None, "--batch-size"),
    stages_: Optional[int] = typer.Option(None, "--stages", help="adaptive-nce: stages to add"),
    epochs_per_stage: Optional[int] = typer.Option(None, "--epochs-per-stage", help="adaptive-nce"),
    prior_sampler: Optional[str] = typer.Option(None, "--prior-sampler", help="adaptive-nce: memory | langevin"),
    non_adaptive: Optional[bool] = typer.Option(None, "--non-adaptive/--adaptive", help="adaptive-nce: TRE-style ablation"),
    layers: Optional[int] = typer.Option(None, "--layers", help="joint-mle/joint-vi: latent layers"),
    basic_ratio: Optional[float] = typer.Option(None, "--basic-ratio", help="bidvl: r' (0.05 at 32x32, 0.1 at 64x64)"),
    offset: Optional[bool] = typer.Option(None, "--offset/--no-offset", help="bidvl: offset (default) or not-offset variant"),
    arch: Optional[str] = typer.Option(None, "--arch", help="generator architecture (auto picks by image size)"),
    nz: Optional[int] = typer.Option(None, "--nz", help="latent dimension"),
    seed: Optional[int] = SeedOpt,
    device: Optional[str] = DeviceOpt,
    precision: Optional[str] = PrecisionOpt,
    sets: Optional[List[str]] = SetOpt,
    checkpoint_every: int = CkEveryOpt,
    checkpoint: Optional[Path] = CkOpt,
    resume: Optional[Path] = ResumeOpt,
    tensorboard: Optional[Path] = TensorBoardOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Fit a latent-space EBM prior (and its generator) with one of the seed methods."""
    flags = {"epochs": epochs, "batch_size": batch_size, "stages": stages_, "epochs_per_stage": epochs_per_stage,
             "prior_sampler": prior_sampler, "non_adaptive": non_adaptive, "layers": layers,
             "basic_ratio": basic_ratio, "offset": offset, "generator.arch": arch, "generator.nz": nz,
             "seed": seed, "device": device, "precision": precision}
    _train(method, flags, sets, preset, config, data, init, output, force, quiet, as_json,
           ck_every=checkpoint_every, ck=checkpoint, resume=resume, tensorboard=tensorboard)


@app.command("sample")
def sample(
    model: Path = typer.Option(..., "--model", help="model artifact"),
    n: int = typer.Option(64, "-n", help="number of samples"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="samples artifact"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="PNG grid of the samples"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="prior Langevin steps (default: the model's)"),
    step_size: Optional[float] = typer.Option(None, "--step-size", min=1e-12, help="Langevin step size s"),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="langevin | sir (multi-stage priors)"),
    trajectory: int = typer.Option(0, "--trajectory", min=0, help="record every K-th Langevin state"),
    trajectory_png: Optional[Path] = typer.Option(None, "--trajectory-png", help="PNG: one row per chain (8), time left to right"),
    scale: Optional[int] = ScaleOpt,
    layer_resample: Optional[int] = typer.Option(None, "--layer-resample", min=1, help="joint models: each grid row shares one sample of layer K (1 = bottom); the other layers are resampled"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    precision: str = EvalPrecisionOpt,
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
):
    """Draw samples from a model's prior and decode them."""
    from ebmtool import stages

    if sampler is not None and sampler not in ("langevin", "sir"):
        raise UserError(f"--sampler: unknown sampler {sampler!r} (langevin | sir)")
    res = stages.sample(str(model), n, out=_s(output), grid=_s(grid), steps=steps, step_size=step_size,
                        sampler=sampler, trajectory_every=trajectory, trajectory_png=_s(trajectory_png), seed=seed,
                        device=device, force=force, layer_resample=layer_resample, precision=precision, scale=scale)
    emit(res, as_json, "samples")


def _s(p: Optional[Path]) -> Optional[str]:
    return None if p is None else str(p)


@app.command("reconstruct")
def reconstruct(
    model: Path = typer.Option(..., "--model", help="model artifact"),
    data: Path = typer.Option(..., "--data", help="dataset artifact"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="reconstructions artifact"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="PNG of (real | reconstructed) pairs"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1, help="posterior Langevin steps"),
    step_size: Optional[float] = typer.Option(None, "--step-size", min=1e-12),
    batch_size: int = typer.Option(500, "--batch-size", min=1),
    limit: Optional[int] = typer.Option(None, "--limit", min=1, help="first N images only"),
    scale: Optional[int] = ScaleOpt,
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    precision: str = EvalPrecisionOpt,
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
):
    """Infer posterior latents of images and decode them; per-image and mean MSE."""
    from ebmtool import stages

    res = stages.reconstruct(str(model), str(data), out=_s(output), grid=_s(grid), steps=steps, step_size=step_size,
                             batch_size=batch_size, limit=limit, seed=seed, device=device, force=force,
                             precision=precision, scale=scale)
    emit(res, as_json, "reconstruction")


@app.command("anomaly")
def anomaly(
    model: Path = typer.Option(..., "--model", help="model artifact"),
    data: Path = typer.Option(..., "--data", help="test dataset artifact"),
    anomaly_class: Optional[int] = typer.Option(None, "--anomaly-class", help="the anomalous class K (label 1)"),
    labels_positive: Optional[str] = typer.Option(None, "--labels-positive", help="comma list of anomalous classes"),
    ood_data: Optional[Path] = typer.Option(None, "--ood-data", help="OOD dataset artifact (label 1)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="scores artifact"),
    pr_curve: Optional[Path] = typer.Option(None, "--pr-curve", help="PNG of the precision-recall curve"),
    score: str = typer.Option("joint", "--score", help="joint (the papers' -log p(x, z)) | recon | prior | "
                              "typicality (needs --calibrate) | complexity (joint in bits - PNG bits); see README"),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="held-out normal images (dataset artifact, "
                                             "e.g. data prepare --part calibration) for --score typicality"),
    steps: Optional[int] = typer.Option(None, "--steps", min=1),
    step_size: Optional[float] = typer.Option(None, "--step-size", min=1e-12),
    batch_size: int = typer.Option(500, "--batch-size", min=1),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    precision: str = EvalPrecisionOpt,
    force: bool = ForceOpt,
    as_json: bool = JsonOpt,
):
    """Anomaly / OOD scores and AUPRC (the papers' auc(recall, precision)), average precision, AUROC."""
    from ebmtool import stages

    positive = None
    if anomaly_class is not None and labels_positive is not None:
        raise UserError("give --anomaly-class or --labels-positive, not both")
    if anomaly_class is not None:
        positive = [anomaly_class]
    elif labels_positive is not None:
        try:
            positive = [int(v) for v in labels_positive.split(",") if v.strip()]
        except ValueError:
            raise UserError(f"--labels-positive {labels_positive!r}: expected a comma list of integers") from None
        if not positive:
            raise UserError("--labels-positive: empty list")
    res = stages.anomaly(str(model), str(data), positive=positive, ood_path=_s(ood_data), out=_s(output),
                         steps=steps, step_size=step_size, batch_size=batch_size, seed=seed, device=device,
                         force=force, pr_png=_s(pr_curve), precision=precision, score=score,
                         calibrate=_s(calibrate))
    emit(res, as_json, "anomaly")


@app.command("fid")
def fid(
    samples: Path = typer.Option(..., "--samples", help="samples (or dataset) artifact"),
    ref: Path = typer.Option(..., "--ref", help="reference dataset/samples artifact, or a statistics .npz"),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights", help="pt_inception-2015-12-05-6726825d.pth (else the torch hub cache)"),
    features: Optional[Path] = typer.Option(None, "--features", help="features artifact from `ebmtool train-features` (dataset-specific FID)"),
    batch_size: int = typer.Option(50, "--batch-size", min=1),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="where reference statistics are cached"),
    device: str = typer.Option("auto", "--device"),
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Fréchet distance between samples and a reference (pytorch-fid InceptionV3 pool3, or --features)."""
    from ebmtool.eval import fid as F
    from ebmtool.methods.common import resolve_device

    dev = str(resolve_device(device))
    if features is not None and inception_weights is not None:
        raise UserError("give --features or --inception-weights, not both")
    ex = F.ClassifierExtractor(str(features), device=dev) if features is not None else \
        F.InceptionExtractor(weights_path=_s(inception_weights), device=dev)
    res = F.fid(str(samples), str(ref), ex, batch_size=batch_size,
                cache_dir=str(cache_dir) if cache_dir else F.default_cache_dir(), progress=not quiet and sys.stderr.isatty())
    from ebmtool.distributed import world

    if not world().is_main:  # under torchrun rank 0 reports for all
        return
    for w in res.warnings:
        print(f"ebmtool: warning: {w}", file=sys.stderr)
    if as_json:
        print(json.dumps(res.to_dict(), default=str))
    else:
        out_console.print(f"FID {res.value:.4f}")
        out_console.print(res.protocol_line())


@app.command("train-features")
def train_features(
    data: Path = typer.Option(..., "--data", help="labelled dataset artifact"),
    output: Path = OutOpt,
    epochs: int = typer.Option(30, "--epochs", min=1, help="at most this many epochs (early stopping)"),
    patience: int = typer.Option(2, "--patience", min=1,
                                 help="stop after this many epochs without a better validation accuracy"),
    seed: int = typer.Option(0, "--seed"),
    device: str = typer.Option("auto", "--device"),
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Train a LeNet-style classifier whose dense layer is a dataset-specific FID feature space (early stopping)."""
    from ebmtool.eval import fid as F
    from ebmtool.methods.common import resolve_device

    res = F.train_features(str(data), str(output), epochs, seed, patience=patience, device=str(resolve_device(device)),
                           force=force, progress=not quiet and sys.stderr.isatty())
    emit({k: (str(v) if isinstance(v, Path) else v) for k, v in vars(res).items()}, as_json, "features")


@app.command("inspect")
def inspect(path: Path = typer.Argument(..., help="any ebmtool artifact"), as_json: bool = JsonOpt):
    """Kind, config, lineage and tensor shapes of an artifact."""
    from ebmtool import stages

    info = stages.inspect(str(path))
    if as_json:
        print(json.dumps(info, default=str))
        return
    t = Table(title=f"{info['path']} ({info['kind']})", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("kind", info["kind"])
    t.add_row("version / format", f"{info['version']} / {info['format']}")
    t.add_row("sha256", info["sha256"])
    for p in info["parents"]:
        t.add_row("parent", f"{p.get('kind')} {p.get('path')} ({str(p.get('sha256'))[:12]})")
    for k, v in info["meta"].items():
        t.add_row(f"meta.{k}", json.dumps(v, default=str)[:300])
    t.add_row("config", json.dumps(info["config"])[:600])
    out_console.print(t)
    tt = Table(title="tensors")
    for c in ("name", "shape", "dtype"):
        tt.add_column(c)
    for k, v in info["tensors"].items():
        tt.add_row(k, "x".join(map(str, v["shape"])) or "scalar", v["dtype"])
    out_console.print(tt)


@app.command("plot")
def plot(
    path: Path = typer.Argument(..., help="model, samples (with --trajectory), scores or dataset artifact"),
    output: Path = typer.Option(..., "-o", "--output", help="figure file: .png, .pdf or .svg (image grids: .png)"),
    scale: Optional[int] = ScaleOpt,
    force: bool = ForceOpt,
):
    """Figure of what an artifact holds (matplotlib): NCE loss per stage, loss curves, Langevin energy profile,
    PR and ROC curves; datasets and samples: an image grid."""
    from ebmtool import artifacts
    from ebmtool.eval.plots import plot_artifact

    artifacts.check_output(output, force)
    what = plot_artifact(artifacts.load(path), str(output), scale=scale)
    out_console.print(f"{output}: {what}")


@app.command("methods")
def methods():
    """List the prior-fitting methods and their default configs."""
    from ebmtool.methods import METHODS

    t = Table(title="fit-prior --method")
    t.add_column("method", style="bold")
    t.add_column("description")
    for k, m in METHODS.items():
        if m.fit_prior:
            t.add_row(k, m.description)
    out_console.print(t)


@app.command("presets")
def presets():
    """List the presets (smoke / cpu / paper) and what they set."""
    from ebmtool.config import PRESETS

    t = Table(title="--preset")
    t.add_column("preset", style="bold")
    t.add_column("description")
    t.add_column("settings", overflow="fold")
    for k, p in PRESETS.items():
        t.add_row(k, p["description"], json.dumps({a: b for a, b in p.items() if a != "description"}))
    out_console.print(t)


# ------------------------------------------------------------------------------------------------
# commands that share their work across torchrun ranks; any other command runs on rank 0 alone
PARALLEL_COMMANDS = {"pretrain-generator", "fit-prior", "sample", "reconstruct", "anomaly", "fid"}


def _say(msg: str, code: int) -> None:
    """One line on stderr. Under torchrun rank 0 speaks for all (every rank ran the same checks on the same
    inputs, and training agrees on divergence and interruption across ranks); other ranks speak only when they
    lost contact with a peer, prefixed with their rank."""
    from ebmtool.distributed import world

    w = world()
    if w.is_main:
        print(f"ebmtool: {msg}", file=sys.stderr)
    elif code == 1:  # a lost peer: each rank says what it saw
        print(f"ebmtool[rank {w.rank}]: {msg}", file=sys.stderr)


def _command_name(args: list[str]) -> Optional[str]:
    """The subcommand in argv (skipping the global --threads N)."""
    it = iter(args)
    for a in it:
        if a == "--threads":
            next(it, None)
        elif not a.startswith("-"):
            return a
    return None


def main(argv: Optional[list[str]] = None) -> None:
    from ebmtool import distributed

    args = sys.argv[1:] if argv is None else list(argv)
    ok = False
    try:
        if distributed.launched_by_torchrun():
            command = _command_name(args)
            if command in PARALLEL_COMMANDS:
                distributed.init_from_env()
            elif os.environ.get("RANK", "0") != "0":
                return  # nothing to share: rank 0 runs it alone
        rv = app(args=args, prog_name="ebmtool", standalone_mode=False)
        ok = True
    except UserError as e:
        _say(f"error: {e}", e.exit_code)
        if e.exit_code == 2:
            distributed.fail_together()
        sys.exit(e.exit_code)
    except _ClickException as e:
        msg = " ".join(e.format_message().split())
        code = 2 if isinstance(e, _UsageError) else getattr(e, "exit_code", 1)
        _say(f"error: {msg}", code)
        distributed.fail_together()
        sys.exit(code)
    except (_Abort, KeyboardInterrupt):
        _say("interrupted", 130)
        sys.exit(130)
    except RuntimeError as e:
        import torch.distributed as dist

        text = str(e)
        lost = isinstance(e, getattr(dist, "DistError", ())) or any(
            k in text for k in ("Connection closed", "Connection reset", "gloo", "Gloo", "NCCL", "Broken pipe", "imed out"))
        if not (distributed.world().parallel and lost):
            raise
        first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
        _say(f"error: lost contact with another torchrun rank, which probably failed (see its message): {first}", 1)
        sys.exit(1)
    finally:
        try:
            distributed.finish(ok)
        except UserError as e:  # a peer died after this rank's work was done
            _say(f"error: {e}", 1)
            sys.exit(1)
    if isinstance(rv, int) and rv != 0:
        sys.exit(rv)
