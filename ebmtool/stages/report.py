"""The reporting stages: ``inspect``, ``plot``, ``fid`` and ``train-features``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

from ebmtool import artifacts
from ebmtool.config import check_options
from ebmtool.errors import UserError
from ebmtool.runtime import resolve as resolve_precision
from ebmtool.runtime import resolve_device


def inspect(path: str) -> dict[str, Any]:
    art = artifacts.load(path)
    return {
        "path": str(art.path), "kind": art.kind, "version": art.version, "format": art.format,
        "integrity": "verified (ebmtool.sha256)" if art.format == artifacts.FORMAT else "none (written before the "
                     "integrity hash)",
        "sha256": art.sha256, "parents": art.parents, "meta": art.meta, "config": art.config,
        "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype).replace("torch.", "")}
                    for k, v in art.tensors.items()},
    }


def plot(path: str, out: str, force: bool = False, scale: Optional[int] = None) -> dict[str, Any]:
    """One figure of what an artifact holds (see :func:`ebmtool.eval.plots.plot_artifact`); ``scale``: the
    upscaling of an image grid."""
    from ebmtool.eval.plots import plot_artifact

    from ebmtool.config import check_options

    check_options("cli", scale=scale)  # the one check of --scale, as sample and reconstruct run it
    artifacts.check_distinct({"-o": out}, {"PATH": path})
    artifacts.check_output(out, force)
    return {"output": str(out), "drew": plot_artifact(artifacts.load(path), str(out), scale=scale, force=force)}


def fid(samples: str, ref: str, *, inception_weights: Optional[str] = None, features: Optional[str] = None,
        batch_size: int = 50, cache_dir: Optional[str] = None, device: str = "auto", precision: str = "fp32",
        quiet: bool = False):
    """Frechet distance between samples and a reference, in pytorch-fid's InceptionV3 pool3 features or in the
    features of a classifier from :func:`train_features`; returns :class:`ebmtool.eval.fid.FIDResult`. ``quiet``: no
    progress bar over the feature extraction. ``precision``: the feature extractor runs under it (the statistics
    and the distance stay float64); the result records it."""
    from ebmtool.eval import fid as F

    if features is not None and inception_weights is not None:
        raise UserError("give --features or --inception-weights, not both")
    if str(ref).endswith(".npz"):  # a damaged or hand-made statistics file: refused before any weights are read
        F.load_statistics(ref)
    torch_dev = resolve_device(device)
    prec = resolve_precision(precision, torch_dev)
    dev = str(torch_dev)
    ex = F.ClassifierExtractor(features, device=dev) if features is not None else \
        F.InceptionExtractor(weights_path=inception_weights, device=dev)
    cache = Path(cache_dir) if cache_dir else F.default_cache_dir()
    if prec.name != "fp32":  # reduced-precision reference statistics are cached apart from the exact ones
        cache = cache / prec.name
    with prec.context(torch_dev):
        res = F.fid(samples, ref, ex, batch_size=batch_size, cache_dir=cache, progress=not quiet)
    res.precision = prec.name
    return res


def train_features(data: str, out: str, *, epochs: int = 30, seed: int = 0, patience: int = 2, device: str = "auto",
                   precision: str = "fp32", force: bool = False, quiet: bool = False,
                   tensorboard: Optional[str] = None) -> dict[str, Any]:
    """Train the LeNet-style classifier whose dense layer is a dataset-specific FID feature space (early
    stopping on a validation split). ``tensorboard``: a directory for the per-epoch training loss and validation
    accuracy (scalars ``train-features/loss``, ``train-features/val_accuracy``). ``precision``: the classifier's
    forward passes run under it (fp16 is refused: training in fp16 needs loss scaling); the artifact records it."""
    from ebmtool.eval import fid as F

    check_options("cli", seed=seed)
    artifacts.check_distinct({"-o": out}, {"--data": data})
    torch_dev = resolve_device(device)
    prec = resolve_precision(precision, torch_dev)
    if prec.name == "fp16":
        raise UserError("--precision fp16: training in fp16 needs loss scaling, which ebmtool does not do; use bf16")
    tb = None
    if tensorboard is not None:
        from ebmtool.tensorboard import TensorBoardLogger

        tb = TensorBoardLogger(tensorboard)  # one line before any work when the package is missing
    try:
        res = F.train_features(data, out, epochs, seed, patience=patience, device=str(torch_dev),
                               precision=prec, force=force, progress=not quiet,
                               on_epoch=None if tb is None
                               else (lambda e, means: tb.log_epoch("train-features", e, means)))
    finally:
        if tb is not None:
            tb.close()
    return {k: (str(v) if hasattr(v, "__fspath__") else v) for k, v in vars(res).items()}
