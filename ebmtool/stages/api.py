"""The Python API: the few calls a researcher writes in a notebook (docs/api.md), re-exported by :mod:`ebmtool`
itself (``ebmtool.load_model``, ``ebmtool.sample``, ``ebmtool.reconstruct``, ``ebmtool.score``,
``ebmtool.fit_prior``, ``ebmtool.pretrain``). Their names and signatures are stable (tests/test_api_docs.py runs
every example of docs/api.md).

Each call is a thin shell over the in-memory core of a CLI stage (:func:`~ebmtool.stages.evaluate.draw_samples`,
:func:`~ebmtool.stages.evaluate.reconstruct_images`, :func:`~ebmtool.stages.evaluate.score_images`,
:func:`~ebmtool.stages.train.fit`), so the CLI and the API run the same code. Images in: (N, C, H, W) uint8 in
[0, 255] or float in [-1, 1] (another float range stated by ``value_range``), as a tensor, a NumPy array, a torch
``Dataset`` (items: an image, or (image, label)) or a ``DataLoader``, checked by the CLI's own
:func:`ebmtool.data.as_images`; out, (N, C, H, W) float32 in [-1, 1] on the CPU. A model is an object (from
:func:`load_model` or :func:`fit_prior`) or a model artifact's path. Every mistake raises
:class:`~ebmtool.errors.UserError` with one line that says what is wrong.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any, Mapping, Optional, Union

import torch

from ebmtool.config import check_options, deep_merge, nested, resolve
from ebmtool.data import as_images, load_images
from ebmtool.errors import UserError
from ebmtool.methods import METHODS
from ebmtool.models import Model
from ebmtool.models import load_model as open_model
from ebmtool.runtime import resolve_device, seed_everything
from ebmtool.stages.evaluate import (_check_fits, _precision, check_memory, draw_samples, reconstruct_images,
                                     score_images)
from ebmtool.stages.train import fit, tensor_training_data

if TYPE_CHECKING:
    import numpy as np
    from torch.utils.data import DataLoader, Dataset

__all__ = ["load_model", "sample", "reconstruct", "score", "fit_prior", "pretrain"]

PathLike = Union[str, "os.PathLike[str]"]
# images in: a tensor, a NumPy array, a torch Dataset or DataLoader (ebmtool.data.as_images says what each may hold)
Images = Union[torch.Tensor, "np.ndarray[Any, Any]", "Dataset[Any]", "DataLoader[Any]"]
ModelLike = Union[Model, PathLike]
ValueRange = Optional[tuple[float, float]]


def _path(v: Any) -> Optional[str]:
    """A path given as str or os.PathLike, as str; None if ``v`` is not one."""
    return os.fspath(v) if isinstance(v, (str, os.PathLike)) else None


def _model(model: Any, what: str = "model") -> Model:
    """A model object, or the model artifact at a path (opened on the CPU); one line for anything else."""
    if isinstance(model, Model):
        return model
    path = _path(model)
    if path is None:
        raise UserError(f"{what}: expected a model (ebmtool.load_model, ebmtool.fit_prior) or a model artifact's "
                        f"path, not {type(model).__name__}")
    return load_model(path)


def _device(model: Model) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _checked_model(model: Any, what: str = "model") -> Model:
    """:func:`_model`, in float32 (what ebmtool's chains, whose latents are float32, run; ``precision`` gives
    reduced precision), else one line."""
    model = _model(model, what)
    dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in model.parameters()} - {"float32"})
    if dtypes:
        raise UserError(f"{what}: its parameters are {', '.join(dtypes)}; ebmtool runs models in float32 (call "
                        "model.float(); precision='bf16' or 'fp16' runs the networks in reduced precision)")
    return model


def _images(model: Model, images: Any, where: str = "images", value_range: ValueRange = None) -> torch.Tensor:
    """Images in any form :func:`ebmtool.data.as_images` takes, or a dataset artifact's path -> float32 (N, C, H, W)
    in [-1, 1] on the CPU, checked against the model's shape (a copy outside inference mode: the chains
    differentiate through it)."""
    path = _path(images)
    with torch.inference_mode(False):
        if path is not None:
            if value_range is not None:
                raise UserError(f"value_range: a dataset artifact states its own ({path})")
            x, _, _ = load_images(path, what=where)
        else:
            x, _ = as_images(images, None, where, value_range=value_range)
        _check_fits(model, x, where)
        return x.cpu().clone()


def load_model(path: PathLike, device: Union[str, torch.device] = "cpu") -> Model:
    """Open a model artifact of any method (``ebmtool methods`` lists them; ``pretrain``: a generator).

    path: a ``.safetensors`` model artifact (``fit-prior -o``, ``pretrain-generator -o`` or :func:`fit_prior`).
    device: "cpu" | "cuda" | "cuda:N" | "mps" | "auto".
    Returns the model (a :class:`torch.nn.Module` in eval mode on ``device``), rebuilt from its saved spec.
    """
    if not isinstance(path, (str, os.PathLike)):
        raise UserError(f"path: expected a file name (str or os.PathLike), got {type(path).__name__}")
    if not isinstance(device, (str, torch.device)):
        raise UserError(f"device: expected a string or torch.device, got {device!r}")
    model, _ = open_model(os.fspath(path), what="model", device=resolve_device(str(device)))
    return model


def sample(model: ModelLike, n: int, *, steps: Optional[int] = None, step_size: Optional[float] = None,
           sampler: Optional[str] = None, seed: Optional[int] = None, batch_size: int = 500,
           precision: str = "fp32") -> torch.Tensor:
    """Draw ``n`` images: latents from the model's prior (its Langevin chain, SIR or exact), decoded.

    model: from :func:`load_model` or :func:`fit_prior`, or a model artifact's path. steps / step_size: override the
    prior chain (the step size read in the chain's convention); sampler: "langevin" | "sir" (ratio-product and
    joint priors). seed: seed torch first (None: draw from the global generator as it stands). batch_size: chains
    run at a time.
    Returns images: (n, C, H, W) float32 in [-1, 1], on the CPU.
    """
    model = _checked_model(model)
    check_options("api", n=n, steps=steps, step_size=step_size, sampler=sampler, seed=seed, batch_size=batch_size,
                  precision=precision)
    check_memory(n, model.image_shape, "n")
    if sampler == "sir" and not getattr(getattr(model, "prior", None), "supports_sir", False):
        raise UserError(f"sampler='sir': not available for a {model.method} model")
    if sampler == "sir" and (steps is not None or step_size is not None):
        raise UserError("steps/step_size: sampler='sir' runs no Langevin chain (it resamples draws of the prior's "
                        "base distribution)")
    dev = _device(model)
    if seed is not None:
        seed_everything(seed)
    with torch.inference_mode(False), _precision(precision, dev):  # chains need autograd, even in inference mode
        res = draw_samples(model, n, steps=steps, step_size=step_size, sampler=sampler, batch_size=batch_size,
                           device=dev)
    return res.images.float()


def reconstruct(model: ModelLike, images: Union[Images, PathLike], *, steps: Optional[int] = None,
                step_size: Optional[float] = None, noise: Optional[bool] = None, seed: Optional[int] = None,
                batch_size: int = 500, precision: str = "fp32", value_range: ValueRange = None) -> torch.Tensor:
    """Reconstruct images through the model's posterior: z ~ p(z|x) (short-run Langevin, or the encoder), x' = g(z).

    model: an object or a model artifact's path. images: (N, C, H, W) uint8 in [0, 255] or float in [-1, 1] (or
    in ``value_range``, e.g. (0, 1)), the model's image shape: a tensor, a NumPy array, a ``Dataset``, a
    ``DataLoader`` or a dataset artifact's path. steps / step_size / noise: override the posterior chain (with an
    encoder: refine its sample by that chain). seed: as in :func:`sample`.
    Returns images: (N, C, H, W) float32 in [-1, 1], on the CPU.
    """
    model = _checked_model(model)
    check_options("api", steps=steps, step_size=step_size, noise=noise, seed=seed, batch_size=batch_size,
                  precision=precision)
    x = _images(model, images, value_range=value_range)
    dev = _device(model)
    if seed is not None:
        seed_everything(seed)
    with torch.inference_mode(False), _precision(precision, dev):
        xhat, _ = reconstruct_images(model, x, steps=steps, step_size=step_size, noise=noise,
                                     batch_size=batch_size, device=dev)
    return xhat


def score(model: ModelLike, images: Union[Images, PathLike], *, kind: str = "joint",
          calibration: Union[Images, PathLike, None] = None, steps: Optional[int] = None,
          step_size: Optional[float] = None, noise: Optional[bool] = None, seed: Optional[int] = None,
          batch_size: int = 500, precision: str = "fp32",
          value_range: ValueRange = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Label-free anomaly scores, higher = more anomalous (docs/design.md §5).

    model: an object or a model artifact's path. images: (N, C, H, W) uint8 in [0, 255] or float in [-1, 1] (or in
    ``value_range``, which applies to ``calibration`` too), in any form :func:`reconstruct` takes. kind: "joint"
    (-log p(x, z) at a posterior sample, the papers' score) | "recon" | "prior" | "typicality" | "dose" |
    "complexity". calibration: (M, C, H, W) held-out normal images (any form, as ``images``), which "typicality" and
    "dose" need. steps / step_size / noise: override
    the posterior chain (``noise=False``: the papers' noise-free chain). seed: as in :func:`sample`.
    Returns (scores: (N,) float64, terms: {"recon", "tilt", "base"} -> (N,) float64 for a latent model, whose sum
    is the "joint" score; {"score"} for a BiDVL model), on the CPU.
    """
    model = _checked_model(model)
    check_options("api", steps=steps, step_size=step_size, noise=noise, seed=seed, batch_size=batch_size,
                  precision=precision)
    if not isinstance(kind, str):
        raise UserError(f"kind: expected a score name, got {kind!r}")
    x = _images(model, images, value_range=value_range)
    xc = _images(model, calibration, "calibration", value_range) if calibration is not None else None
    dev = _device(model)
    if seed is not None:
        seed_everything(seed)
    with torch.inference_mode(False), _precision(precision, dev):
        scores, terms, _ = score_images(model, x, score=kind, calibration=xc, steps=steps, step_size=step_size,
                                        noise=noise, batch_size=batch_size, device=dev)
    return scores, terms


def fit_prior(method: str, data: Union[Images, PathLike], labels: Any = None, *,
              init: Optional[ModelLike] = None, preset: Optional[str] = None,
              overrides: Optional[Mapping[str, Any]] = None, out: Optional[PathLike] = None, force: bool = False,
              quiet: bool = True, value_range: ValueRange = None) -> Model:
    """Fit a model by ``method`` (a name of the method registry, ``ebmtool.registry.METHODS``: ``ebmtool methods``
    lists them; "pretrain": a generator under N(0, I), as :func:`pretrain`), exactly as ``ebmtool fit-prior`` does.

    data: a dataset artifact's path (``ebmtool data prepare``), or images (N, C, H, W) uint8 in [0, 255] or float
    in [-1, 1] (or in ``value_range``, e.g. (0, 1) for torchvision's ``ToTensor``) as a tensor, a NumPy array, a
    torch ``Dataset`` whose items are an image or (image, label), or a ``DataLoader``; labels: (N,) integers for a
    tensor or an array (optional; a dataset artifact or a ``Dataset`` holds its own). init: a model to start from,
    an object (:func:`load_model`, :func:`fit_prior`; a copy is trained, the object stays as it was) or a model
    artifact's path (a pretrained generator; a model to continue or add stages to). preset: "smoke" | "cpu" |
    "paper" (``ebmtool presets``). overrides: config fields, dotted or nested, over the preset (``{"epochs": 5,
    "generator.nz": 16}`` = ``--set epochs=5 --set generator.nz=16``). out: also write the model artifact there
    (refused if it exists, unless ``force``); nothing is written without it. quiet: no progress.
    Returns the model, in eval mode, on the config's device.
    """
    if not isinstance(method, str) or method not in METHODS:
        raise UserError(f"method: unknown method {method!r} (choose from {', '.join(METHODS)})")
    if preset is not None and not isinstance(preset, str):
        raise UserError(f"preset: expected a preset name, got {preset!r}")
    if overrides is not None and not (isinstance(overrides, Mapping) and all(isinstance(k, str) for k in overrides)):
        raise UserError(f"overrides: expected a mapping of config fields to values, got {type(overrides).__name__}")
    if out is not None and not isinstance(out, (str, os.PathLike)):
        raise UserError(f"out: expected a file name (str or os.PathLike), got {type(out).__name__}")
    if init is not None and not isinstance(init, (Model, str, os.PathLike)):
        raise UserError(f"init: expected a model (ebmtool.load_model, ebmtool.fit_prior) or a model artifact's "
                        f"path, not {type(init).__name__}")
    for name, value in (("force", force), ("quiet", quiet)):
        if not isinstance(value, bool):
            raise UserError(f"{name}: expected True or False, got {value!r}")
    flags: dict[str, Any] = {}
    for key, value in (overrides or {}).items():
        flags = deep_merge(flags, nested({key: value}))
    cfg = resolve(METHODS[method].config, method=method, preset=preset, toml=None, flags=flags)
    asked = {section: {f: (v, f"overrides[{section}.{f}] = {v!r}") for f, v in vals.items()}
             for section, vals in flags.items() if isinstance(vals, dict)}
    path = _path(data)
    if path is None:
        source: Any = tensor_training_data(data, labels, value_range)
    elif labels is not None:
        raise UserError("labels: give them with image tensors or arrays only (a dataset artifact holds its own)")
    elif value_range is not None:
        raise UserError(f"value_range: a dataset artifact states its own ({path})")
    else:
        source = path
    init_model = init if isinstance(init, Model) else None
    init_path = _path(init) if init_model is None and init is not None else None
    model, _ = fit(method, cfg, source, None if out is None else os.fspath(out), init_path=init_path,
                   init_model=init_model, force=force, quiet=quiet, asked=asked)
    return model.eval()


def pretrain(data: Union[Images, PathLike], labels: Any = None, *, init: Optional[ModelLike] = None,
             preset: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
             out: Optional[PathLike] = None, force: bool = False, quiet: bool = True,
             value_range: ValueRange = None) -> Model:
    """Pretrain a generator under the N(0, I) prior, exactly as ``ebmtool pretrain-generator`` does: the model
    that ``init`` of a prior-fitting method starts from. The arguments are :func:`fit_prior`'s (``init``: a
    pretrained generator to continue).
    Returns the model (method "pretrain"), in eval mode, on the config's device.
    """
    return fit_prior("pretrain", data, labels, init=init, preset=preset, overrides=overrides, out=out, force=force,
                     quiet=quiet, value_range=value_range)
