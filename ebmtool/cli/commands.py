"""The commands that open artifacts and evaluate, report or list: each parses, calls one stage function, prints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from ebmtool.cli.app import (EvalBatchOpt, EvalDeviceOpt, EvalPrecisionOpt, EvalSeedOpt, ForceOpt, ModelOpt, JsonOpt,
                             OutOpt, QuietOpt, ScaleOpt, _s, app, data_app, dumps, emit, out_console)
from ebmtool.data.sources import SOURCES
from ebmtool.errors import UserError
from ebmtool.methods import METHODS

STEP_HELP = ("Langevin step size s, read in the model's chain convention "
             "(lebm: s; xiao-han: the sampler runs at sqrt(s))")
# the posterior chain's options of the commands that infer z (reconstruct, anomaly), defined once
# checked with every other evaluation option by config.check_options (one check for the CLI and the API)
StepsOpt = typer.Option(None, "--steps", help="posterior Langevin steps")
StepSizeOpt = typer.Option(None, "--step-size", help=STEP_HELP)
NoiseOpt = typer.Option(None, "--noise/--no-noise", help="posterior chain with (default: the model's) or without "
                        "Langevin noise (--no-noise: gradient ascent to a near-MAP z, the papers' anomaly code)")


# ------------------------------------------------------------------------------------------------
@data_app.command("prepare")
def data_prepare(
    dataset: str = typer.Option(..., "--dataset", help=" | ".join(SOURCES) + " (folder: ROOT/<class>/*.png or a "
                                "flat folder; array: an .npz/.npy file)"),
    output: Path = OutOpt,
    root: Optional[str] = typer.Option(None, "--root", help="folder with the dataset's standard files; folder: the "
                                       "images' folder; array: the .npz (images, optional labels, class_names) "
                                       "or .npy file"),
    split: str = typer.Option("train", "--split", help="train | test | train+test (both, training images first)"),
    download: bool = typer.Option(False, "--download", help="let torchvision download into --root (needs internet)"),
    exclude_class: Optional[str] = typer.Option(None, "--exclude-class", help="a class index or name"),
    only_class: Optional[str] = typer.Option(None, "--only-class", help="a class index or name"),
    anomaly_protocol: Optional[str] = typer.Option(None, "--anomaly-protocol", help="held-out class K (index or "
                                                   "name): the anomaly protocol's split (docs/design.md)"),
    part: Optional[str] = typer.Option(None, "--part", help="train | test part of the anomaly protocol; fit | "
                                       "calibration split train 90/10 (calibration: held-out normals for "
                                       "anomaly --calibrate)"),
    size: Optional[int] = typer.Option(None, "--size", help="the shorter side to SIZE (antialiased), then the "
                                       "centre SIZE x SIZE crop"),
    channels: Optional[int] = typer.Option(None, "--channels", help="1 (grey) | 3 (RGB)"),
    layout: Optional[str] = typer.Option(None, "--layout", help="array files whose shape fits two layouts: nhwc | "
                                         "nchw | nhw"),
    value_range: Optional[str] = typer.Option(None, "--value-range", help="array files of floats: 0,1 | -1,1 | "
                                              "0,255 (uint8 needs none)"),
    skip_bad: bool = typer.Option(False, "--skip-bad", help="folders: skip unreadable images and say how many "
                                  "(default: stop, naming the file)"),
    limit: Optional[int] = typer.Option(None, "--limit", help="keep the first N images"),
    test_permutation: str = typer.Option("same", "--test-permutation", help="same (default): test = the rest of the "
                                         "one permutation | second: the original loader's second draw, most test "
                                         "normals are training images (to measure that practice only)"),
    anomaly_split: str = typer.Option("random", "--anomaly-split", help="random (default, protocol v3): the normals "
                                      "split 80/20 once | standard (with --split train+test): train on the training "
                                      "file's normals, test on the whole test file"),
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Write a dataset artifact (uint8 images N x C x H x W, labels; class names and file paths where known)."""
    from ebmtool import stages
    from ebmtool.config import build, nested
    from ebmtool.data import DataConfig

    cfg = build(DataConfig, nested(dict(dataset=dataset, root=root, split=split, download=download,
                                        exclude_class=exclude_class, only_class=only_class,
                                        anomaly_protocol=anomaly_protocol, part=part, size=size, limit=limit,
                                        channels=channels, layout=layout, value_range=value_range,
                                        skip_bad=skip_bad or None,
                                        test_permutation=test_permutation, anomaly_split=anomaly_split)),
                where="data prepare")
    res = stages.data_prepare(cfg, str(output), force, quiet=quiet)
    if res.get("skipped"):
        typer.echo(f"ebmtool: warning: skipped {res['skipped']} unreadable image(s) (--skip-bad; listed in the "
                   f"artifact's meta.skipped)", err=True)
    emit(res, as_json, "dataset")


@app.command("sample")
def sample(
    model: Path = ModelOpt,
    n: int = typer.Option(64, "-n", help="number of samples (at most 1,000,000, all held in memory)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="samples artifact"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="PNG grid of the samples"),
    steps: Optional[int] = typer.Option(None, "--steps", help="prior Langevin steps (default: the model's)"),
    step_size: Optional[float] = StepSizeOpt,
    sampler: Optional[str] = typer.Option(None, "--sampler", help="langevin | sir (multi-stage and joint priors)"),
    trajectory: int = typer.Option(0, "--trajectory",
                                   help="record every K-th Langevin state (all chains in one batch)"),
    trajectory_png: Optional[Path] = typer.Option(None, "--trajectory-png",
                                                  help="PNG: one row per chain (8), time left to right"),
    scale: Optional[int] = ScaleOpt,
    layer_resample: Optional[int] = typer.Option(None, "--layer-resample", help="joint models: each grid row shares "
                                                 "one sample of layer K (1 = bottom); the other layers are resampled"),
    batch_size: int = typer.Option(500, "--batch-size", help="chains drawn at a time"),
    seed: int = EvalSeedOpt,
    device: str = EvalDeviceOpt,
    precision: str = EvalPrecisionOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Draw samples from a model's prior and decode them."""
    from ebmtool import stages

    res = stages.sample(str(model), n, out=_s(output), grid=_s(grid), steps=steps, step_size=step_size,
                        sampler=sampler, trajectory_every=trajectory, trajectory_png=_s(trajectory_png), seed=seed,
                        device=device, force=force, layer_resample=layer_resample, precision=precision, scale=scale,
                        batch_size=batch_size, quiet=quiet)
    emit(res, as_json, "samples")


@app.command("reconstruct")
def reconstruct(
    model: Path = ModelOpt,
    data: Path = typer.Option(..., "--data", help="dataset artifact"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="reconstructions artifact"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="PNG of (real | reconstructed) pairs"),
    steps: Optional[int] = StepsOpt,
    step_size: Optional[float] = StepSizeOpt,
    noise: Optional[bool] = NoiseOpt,
    batch_size: int = EvalBatchOpt,
    limit: Optional[int] = typer.Option(None, "--limit", help="first N images only"),
    scale: Optional[int] = ScaleOpt,
    seed: int = EvalSeedOpt,
    device: str = EvalDeviceOpt,
    precision: str = EvalPrecisionOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Infer posterior latents of images and decode them; per-image and mean MSE."""
    from ebmtool import stages

    res = stages.reconstruct(str(model), str(data), out=_s(output), grid=_s(grid), steps=steps, step_size=step_size,
                             noise=noise, batch_size=batch_size, limit=limit, seed=seed, device=device, force=force,
                             precision=precision, scale=scale, quiet=quiet)
    emit(res, as_json, "reconstruction")


@app.command("anomaly")
def anomaly(
    model: Path = ModelOpt,
    data: Path = typer.Option(..., "--data", help="test dataset artifact"),
    anomaly_class: Optional[str] = typer.Option(None, "--anomaly-class", help="the anomalous class K (label 1), by "
                                                "index or name; unlabelled images: ebmtool score"),
    labels_positive: Optional[str] = typer.Option(None, "--labels-positive", help="comma list of anomalous classes "
                                                  "(indices or names)"),
    ood_data: Optional[Path] = typer.Option(None, "--ood-data", help="OOD dataset artifact (label 1)"),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="scores artifact"),
    pr_curve: Optional[Path] = typer.Option(None, "--pr-curve", help="PNG of the precision-recall curve"),
    score: str = typer.Option("joint", "--score", help="joint (the papers' -log p(x, z)) | recon | prior | "
                              "typicality (needs --calibrate) | complexity (joint in bits - PNG bits) | "
                              "dose (needs --calibrate); see docs/usage.md"),
    calibrate: Optional[Path] = typer.Option(None, "--calibrate", help="held-out normal images (dataset artifact, "
                                             "e.g. data prepare --part calibration) for --score typicality|dose"),
    steps: Optional[int] = StepsOpt,
    step_size: Optional[float] = StepSizeOpt,
    noise: Optional[bool] = NoiseOpt,
    batch_size: int = EvalBatchOpt,
    seed: int = EvalSeedOpt,
    device: str = EvalDeviceOpt,
    precision: str = EvalPrecisionOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Anomaly / OOD scores and AUPRC (the papers' auc(recall, precision)), average precision, AUROC."""
    from ebmtool import stages

    positive: Optional[list] = None
    if anomaly_class is not None and labels_positive is not None:
        raise UserError("give --anomaly-class or --labels-positive, not both")
    if anomaly_class is not None:
        positive = [anomaly_class]
    elif labels_positive is not None:
        positive = [v.strip() for v in labels_positive.split(",") if v.strip()]
        if not positive:
            raise UserError("--labels-positive: empty list")
    res = stages.anomaly(str(model), str(data), positive=positive, ood_path=_s(ood_data), out=_s(output),
                         steps=steps, step_size=step_size, noise=noise, batch_size=batch_size, seed=seed, device=device,
                         force=force, pr_png=_s(pr_curve), precision=precision, score=score,
                         calibrate=_s(calibrate), quiet=quiet,
                         positive_option="--anomaly-class" if anomaly_class is not None else "--labels-positive")
    emit(res, as_json, "anomaly")


@app.command("score")
def score(
    model: Path = ModelOpt,
    data: Path = typer.Option(..., "--data", help="dataset artifact: the images to score (labels not needed)"),
    output: Path = typer.Option(..., "-o", "--output", help="table of every image: .csv (or .json, with the "
                                "summary): index, name, score, each term, flag"),
    calibration: Optional[Path] = typer.Option(None, "--calibration", help="held-out normal images (dataset "
                                               "artifact): the threshold flags --fpr of them"),
    fpr: Optional[float] = typer.Option(None, "--fpr", help="false-positive rate on the calibration normals "
                                        "(default 0.05 with --calibration)"),
    top: int = typer.Option(10, "--top", help="print the N most anomalous images (0: none)"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="PNG of the --top images, most anomalous first"),
    anomaly_class: Optional[str] = typer.Option(None, "--anomaly-class", help="labelled data: the anomalous class "
                                                "(index or name), for anomaly's metrics (default: the class the "
                                                "dataset was split by, data prepare --anomaly-protocol)"),
    kind: str = typer.Option("joint", "--score", help="joint (the papers' -log p(x, z)) | recon | prior | "
                             "complexity (typicality and dose: anomaly --calibrate)"),
    steps: Optional[int] = StepsOpt,
    step_size: Optional[float] = StepSizeOpt,
    noise: Optional[bool] = NoiseOpt,
    scale: Optional[int] = ScaleOpt,
    batch_size: int = EvalBatchOpt,
    seed: int = EvalSeedOpt,
    device: str = EvalDeviceOpt,
    precision: str = EvalPrecisionOpt,
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Score every image of a dataset (no labels needed): a table by file name, the most anomalous images, and a
    flag from a threshold set on held-out normals; with labels, anomaly's metrics as well."""
    from ebmtool import stages

    res = stages.score_data(str(model), str(data), str(output), calibration=_s(calibration), fpr=fpr,
                            anomaly_class=None if anomaly_class is None else [anomaly_class], top=top,
                            grid=_s(grid), scale=scale, score=kind, steps=steps, step_size=step_size, noise=noise,
                            batch_size=batch_size, seed=seed, device=device, force=force, precision=precision,
                            quiet=quiet)
    if as_json:
        print(dumps(res))
        return
    emit({k: v for k, v in res.items() if k not in ("top", "inputs")}, False, "score")
    if res["top"]:
        t = Table(title=f"the {len(res['top'])} most anomalous of {res['n']} (highest score first)")
        for c in ("rank", "name" if any(r["name"] for r in res["top"]) else "index", "score",
                  *(("flagged",) if "threshold" in res else ())):
            t.add_column(c)
        for r in res["top"]:
            t.add_row(str(r["rank"]), r["name"] or str(r["index"]), f"{r['score']:.4g}",
                      *(("yes" if r["flagged"] else "no",) if "threshold" in res else ()))
        out_console.print(t)


@app.command("fid")
def fid(
    samples: Path = typer.Option(..., "--samples", help="samples (or dataset) artifact"),
    ref: Path = typer.Option(..., "--ref", help="reference dataset/samples artifact, or a statistics .npz"),
    inception_weights: Optional[Path] = typer.Option(None, "--inception-weights",
                                                     help="pt_inception-2015-12-05-6726825d.pth "
                                                          "(else the torch hub cache)"),
    features: Optional[Path] = typer.Option(None, "--features",
                                            help="features artifact from `ebmtool train-features` "
                                                 "(dataset-specific FID)"),
    batch_size: int = typer.Option(50, "--batch-size", min=1),
    cache_dir: Optional[Path] = typer.Option(None, "--cache-dir", help="where reference statistics are cached"),
    device: str = EvalDeviceOpt,
    precision: str = EvalPrecisionOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
):
    """Fréchet distance between samples and a reference (pytorch-fid InceptionV3 pool3, or --features)."""
    from ebmtool import stages
    from ebmtool.distributed import world

    res = stages.fid(str(samples), str(ref), inception_weights=_s(inception_weights), features=_s(features),
                     batch_size=batch_size, cache_dir=_s(cache_dir), device=device, precision=precision,
                     quiet=quiet)
    if not world().is_main:  # under torchrun rank 0 reports for all
        return
    for w in res.warnings:
        typer.echo(f"ebmtool: warning: {w}", err=True)
    if as_json:
        print(dumps(res.to_dict()))
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
    seed: int = EvalSeedOpt,
    device: str = EvalDeviceOpt,
    precision: str = typer.Option("fp32", "--precision", help="fp32 (default) | auto | bf16 | tf32 (fp16 is "
                                  "refused: training in fp16 needs loss scaling)"),
    force: bool = ForceOpt,
    quiet: bool = QuietOpt,
    as_json: bool = JsonOpt,
    tensorboard: Optional[Path] = typer.Option(None, "--tensorboard", help="DIR: TensorBoard scalars per epoch, the "
                                               "training loss and validation accuracy "
                                               "(needs pip install -e '.\\[tensorboard]')"),
):
    """Train a LeNet-style classifier whose dense layer is a dataset-specific FID feature space (early stopping)."""
    from ebmtool import stages

    res = stages.train_features(str(data), str(output), epochs=epochs, seed=seed, patience=patience, device=device,
                                precision=precision, force=force, quiet=quiet, tensorboard=_s(tensorboard))
    emit(res, as_json, "features")


@app.command("inspect")
def inspect(path: Path = typer.Argument(..., help="any ebmtool artifact"), as_json: bool = JsonOpt):
    """Kind, config, lineage and tensor shapes of an artifact."""
    from ebmtool import stages

    info = stages.inspect(str(path))
    if as_json:
        print(dumps(info))
        return
    t = Table(title=f"{info['path']} ({info['kind']})", show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value", overflow="fold")
    t.add_row("kind", info["kind"])
    t.add_row("version / format", f"{info['version']} / {info['format']}")
    t.add_row("sha256", info["sha256"])
    t.add_row("integrity", info["integrity"])
    for p in info["parents"]:
        t.add_row("parent", f"{p.get('kind')} {p.get('path')} ({str(p.get('sha256'))[:12]})")
    for k, v in info["meta"].items():
        if k == "class_names" and isinstance(v, list):
            t.add_row("meta.class_names", ", ".join(f"{i}: {name}" for i, name in enumerate(v))[:600])
        elif k in ("paths", "skipped") and isinstance(v, list):
            shown = [x if isinstance(x, str) else json.dumps(x) for x in v[:3]]
            t.add_row(f"meta.{k}", f"{len(v)} (" + ", ".join(shown) + (", ..." if len(v) > 3 else "") + ")")
        else:
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
    as_json: bool = JsonOpt,
):
    """Figure of what an artifact holds (matplotlib): NCE loss per stage, loss curves, Langevin energy profile,
    PR and ROC curves; datasets and samples: an image grid."""
    from ebmtool import stages

    res = stages.plot(str(path), str(output), force, scale=scale)
    if as_json:
        print(dumps(res))
    else:
        out_console.print(f"{res['output']}: {res['drew']}")


@app.command("methods")
def methods():
    """List the prior-fitting methods."""
    t = Table(title="fit-prior --method")
    t.add_column("method", style="bold")
    t.add_column("description")
    for k, m in METHODS.items():
        if m.fit_prior:
            t.add_row(k, m.description)
    out_console.print(t)


@app.command("presets")
def presets():
    """List the presets and what they set, for every method and per method."""
    from ebmtool.config import PRESETS

    t = Table(title="--preset")
    t.add_column("preset", style="bold")
    t.add_column("description")
    t.add_column("settings", overflow="fold")
    for k, p in PRESETS.items():
        own = {m: spec.presets[k] for m, spec in METHODS.items() if k in spec.presets}
        t.add_row(k, p["description"], json.dumps({"common": p.get("common", {}), **own}))
    out_console.print(t)
