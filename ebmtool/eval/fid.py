"""Fréchet Inception Distance, pytorch-fid style: small importable functions, pure math apart from I/O.

Pieces (each usable alone):

* :func:`frechet_distance` — the distance between two Gaussians, float64, no ``scipy.linalg.sqrtm``.
* :func:`images_to_float` — uint8 (0..255) or float ([-1, 1]) N×C×H×W images -> float [0, 1], RGB.
* feature extractors — :class:`InceptionExtractor` (pytorch-fid's FID InceptionV3, 2048-d pool3, weights from
  a local file only, never downloaded) and :class:`ClassifierExtractor` (a small conv classifier trained by
  :func:`train_features`, for quick CPU-scale comparisons; its scores are *not* comparable with Inception FIDs).
* :func:`compute_statistics` — mean and covariance of features (refuses n <= d).
* :func:`reference_statistics` — reference mean/covariance from a ``.npz`` or from an artifact, cached as
  ``<cache_dir>/<artifact sha256>-<extractor id>-<n>.npz``.
* :func:`fid` — samples artifact vs reference -> :class:`FIDResult` with a one-line protocol description.

Known pitfalls handled here: FID with fewer images than feature dimensions (singular covariance, pytorch-fid's
"imaginary component" error) is refused; FID is biased upward for small n, so a warning is attached below
:data:`SMALL_N`; the resize is part of the protocol line and of the cache key (through the extractor id).

The pieces live in :mod:`ebmtool.eval.frechet`, :mod:`ebmtool.eval.features` and
:mod:`ebmtool.eval.feature_training`; this module re-exports them as the one FID interface.
"""

from __future__ import annotations

import os
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ebmtool import artifacts, progress as bars
from ebmtool.eval.feature_training import TrainFeaturesResult, train_features
from ebmtool.eval.features import (INCEPTION_FILE, ClassifierExtractor, FeatureExtractor, FIDInceptionV3,
                                   InceptionExtractor, _artifact_images, _shape_str,
                                   build_fid_inception_net, images_to_float)
from ebmtool.eval.frechet import SMALL_N, frechet_distance, small_n_warning
from ebmtool.errors import UserError

WEAK_CLASSIFIER_ACCURACY = 0.9  # fid --features warns below this held-out accuracy

IMAGE_KINDS = ("samples", "dataset")
STATS_FORMAT = 1


# -------------------------------------------------------------------------------------- statistics


def _probe_feature_dim(images: torch.Tensor, extractor: FeatureExtractor) -> int:
    if extractor.feature_dim is None:
        extractor.feature_dim = int(extractor(images_to_float(images[:1])).shape[1])
    return int(extractor.feature_dim)


def _check_enough(n: int, d: int, what: str) -> None:
    if n <= d:
        raise UserError(
            f"FID needs more images than feature dimensions (n={n}, d={d}) for {what}: the covariance would be "
            f"singular; use at least {d + 1} images"
        )


def compute_statistics(
    images: Any,
    extractor: FeatureExtractor,
    batch_size: int = 50,
    progress: bool = False,
    what: str = "images",
) -> tuple[np.ndarray, np.ndarray, int]:
    """Feature mean (D,) and covariance (D, D), float64, of N×C×H×W images; returns ``(mu, sigma, n)``.

    Images as for :func:`images_to_float` (converted batch by batch). Refuses n <= D (singular covariance).
    See :func:`small_n_warning` for FID's small-n bias.
    """
    x = torch.from_numpy(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.ndim != 4:
        raise UserError(f"{what}: images must be N×C×H×W, got shape {tuple(x.shape)}")
    if int(batch_size) < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    n = int(x.shape[0])
    if n < 2:
        raise UserError(f"{what}: FID needs at least 2 images, got {n}")
    extractor.check_image_shape(tuple(x.shape[1:]), what)
    d = _probe_feature_dim(x, extractor)
    _check_enough(n, d, what)
    from ebmtool import distributed

    # under torchrun each rank extracts the features of its contiguous shard; all are gathered in order
    lo, hi = distributed.bounds(n) if distributed.world().parallel else (0, n)
    local = torch.empty((hi - lo, d), dtype=torch.float64, device="cpu")  # features gather on the host
    starts = range(lo, hi, int(batch_size))
    for i in bars.track(starts, len(starts), f"features ({what})", progress):
        f = extractor(images_to_float(x[i : min(i + batch_size, hi)]))
        if f.shape != (min(batch_size, hi - i), d):
            raise UserError(f"feature extractor {extractor.name} returned shape {tuple(f.shape)}, "
                            f"expected (batch, {d})")
        local[i - lo : i - lo + f.shape[0]] = f.double().cpu()
    feats = distributed.gather(local).numpy()
    if not np.isfinite(feats).all():
        raise UserError(f"feature extractor {extractor.name} produced non-finite features for {what}")
    mu = feats.mean(axis=0)
    sigma = np.atleast_2d(np.cov(feats, rowvar=False))
    return mu, sigma, n


@dataclass
class ReferenceStatistics:
    mu: np.ndarray
    sigma: np.ndarray
    n: int | None
    description: str
    source: str  # "npz" (given by the user), "cache" (read from the cache) or "computed"
    cache_path: Path | None = None
    image_shape: tuple[int, ...] | None = None
    extractor_id: str | None = None


def default_cache_dir() -> Path:
    """``$EBMTOOL_CACHE/fid`` or ``$XDG_CACHE_HOME/ebmtool/fid`` or ``~/.cache/ebmtool/fid``."""
    if os.environ.get("EBMTOOL_CACHE"):
        return Path(os.environ["EBMTOOL_CACHE"]).expanduser() / "fid"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "ebmtool" / "fid"


def load_statistics(path: str | os.PathLike, extractor: FeatureExtractor | None = None) -> ReferenceStatistics:
    """Read ``mu``/``sigma`` (and ebmtool's metadata, when present) from a ``.npz``; pytorch-fid's
    ``--save-stats`` files (``mu``, ``sigma`` only) are accepted. Validates keys, shapes, finiteness and,
    when recorded, that the extractor matches."""
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: reference statistics file not found")
    if p.is_dir():
        raise UserError(f"{p}: reference statistics path is a folder, expected a .npz")
    if not p.is_file():  # a FIFO, a device: reading it would block or never end
        raise UserError(f"{p}: reference statistics path is not a regular file, expected a .npz")
    if not zipfile.is_zipfile(p):  # np.load would try it as a pickle and talk about allow_pickle
        raise UserError(f"{p}: is not a .npz statistics file (not a zip archive of arrays; expected mu and sigma, "
                        "as written by pytorch-fid --save-stats or numpy.savez)")
    try:
        with np.load(p, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
    except Exception as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "pickle" in msg:
            msg = "it holds Python objects, which are never loaded; expected numeric arrays mu and sigma"
        raise UserError(f"{p}: is not a .npz statistics file ({msg[:200]})") from None
    missing = [k for k in ("mu", "sigma") if k not in data]
    if missing:
        raise UserError(f"{p}: statistics file lacks {', '.join(missing)} (has {', '.join(sorted(data)) or 'nothing'})")
    mu, sigma = data["mu"], data["sigma"]
    if not (np.issubdtype(mu.dtype, np.number) and np.issubdtype(sigma.dtype, np.number)):
        raise UserError(f"{p}: mu and sigma must be numeric arrays")
    mu = mu.astype(np.float64)
    sigma = sigma.astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
        raise UserError(f"{p}: mu has shape {tuple(mu.shape)} and sigma {tuple(sigma.shape)}; expected (d,) and (d, d)")
    if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
        raise UserError(f"{p}: statistics hold non-finite values")
    eid = str(data["extractor_id"]) if "extractor_id" in data else None
    if extractor is not None:
        if eid is not None and eid != extractor.id:
            raise UserError(f"{p}: statistics were computed with extractor {eid}, not {extractor.id}")
        if extractor.feature_dim is not None and mu.shape[0] != extractor.feature_dim:
            raise UserError(f"{p}: statistics have {mu.shape[0]} dims but the extractor gives {extractor.feature_dim}")
    n = _stored_count(p, data["n"]) if "n" in data else None
    shape = _stored_shape(p, data["image_shape"]) if "image_shape" in data else None
    parts = []
    if "ref_sha256" in data:
        parts.append(f"reference sha256 {str(data['ref_sha256'])[:12]}")
    if eid is None:
        parts.append("extractor not recorded")
    desc = f"{p.name} ({', '.join(['statistics file'] + parts)})"
    return ReferenceStatistics(mu, sigma, n, desc, "npz", None, shape, eid)


def _stored_count(p: Path, v: np.ndarray) -> int:
    """The ``n`` of a statistics file: one whole number >= 2 (a covariance needs two images), else one line."""
    if v.ndim != 0 or not np.issubdtype(v.dtype, np.integer) or int(v) < 2:
        raise UserError(f"{p}: statistics field n must be a whole number of images >= 2, got {v.tolist()!r:.60}")
    return int(v)


def _stored_shape(p: Path, v: np.ndarray) -> tuple[int, ...]:
    """The ``image_shape`` of a statistics file: (C, H, W) of positive whole numbers, else one line."""
    if v.ndim != 1 or len(v) != 3 or not np.issubdtype(v.dtype, np.integer) or (v < 1).any():
        raise UserError(f"{p}: statistics field image_shape must be [channels, height, width], got "
                        f"{v.tolist()!r:.60}")
    return tuple(int(s) for s in v)


def save_statistics(path: str | os.PathLike, mu: np.ndarray, sigma: np.ndarray, **meta: Any) -> Path:
    """``np.savez`` written atomically (temporary file in the same folder, then ``os.replace``)."""
    p = Path(path)
    arrays = {"mu": np.asarray(mu, np.float64), "sigma": np.asarray(sigma, np.float64),
              "format": np.asarray(STATS_FORMAT)}
    arrays.update({k: np.asarray(v) for k, v in meta.items() if v is not None})
    with artifacts.atomic_write(p) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
    return p


def _prepare_cache_dir(cache_dir: str | os.PathLike) -> Path:
    c = Path(cache_dir).expanduser()
    try:
        c.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"{c}: cannot create the FID cache folder ({e.strerror or e})") from None
    if not c.is_dir() or not os.access(c, os.W_OK):
        raise UserError(f"{c}: FID cache folder is not a writable folder")
    return c


def _reference_from_artifact(
    art: artifacts.Artifact,
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike | None,
    batch_size: int,
    progress: bool,
) -> ReferenceStatistics:
    images = _artifact_images(art)
    n = int(images.shape[0])
    shape = tuple(int(s) for s in images.shape[1:])
    sha = art.sha256
    desc = f"{art.path.name} ({art.kind}, sha256 {sha[:12]})"
    cache_path = None
    if cache_dir is not None:
        cache_path = _prepare_cache_dir(cache_dir) / f"{sha}-{extractor.id}-{n}.npz"
        if cache_path.is_file():
            try:
                st = load_statistics(cache_path, extractor)
            except UserError:
                st = None  # a damaged cache entry is recomputed and replaced
            if st is not None and st.n == n:
                return ReferenceStatistics(st.mu, st.sigma, n, desc, "cache", cache_path, shape, extractor.id)
    mu, sigma, n = compute_statistics(images, extractor, batch_size, progress, what=f"reference {art.path.name}")
    if cache_path is not None:
        save_statistics(
            cache_path, mu, sigma, n=n, extractor_id=extractor.id, feature_dim=mu.shape[0], ref_sha256=sha,
            ref_path=str(art.path), image_shape=np.asarray(shape), extractor=extractor.name, weights=extractor.weights,
            resize=extractor.resize,
        )
    return ReferenceStatistics(mu, sigma, n, desc, "computed", cache_path, shape, extractor.id)


def reference_statistics(
    ref_path: str | os.PathLike,
    extractor: FeatureExtractor,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int = 50,
    progress: bool = False,
) -> ReferenceStatistics:
    """Reference mean/covariance: from a ``.npz`` (:func:`load_statistics`), or computed from a dataset/samples
    artifact and cached as ``<cache_dir>/<artifact sha256>-<extractor id>-<n>.npz`` (``cache_dir`` None: no cache).
    """
    if str(ref_path).endswith(".npz"):
        return load_statistics(ref_path, extractor)
    art = artifacts.load(ref_path, kind=IMAGE_KINDS, what="reference")
    return _reference_from_artifact(art, extractor, cache_dir, batch_size, progress)


# ----------------------------------------------------------------------------------------------- fid


@dataclass
class FIDResult:
    value: float
    n_samples: int
    n_ref: int | None
    extractor: str
    extractor_id: str
    feature_dim: int
    weights: str
    reference: str
    resize: str
    samples: str
    ref_source: str
    cache_path: str | None = None
    warnings: list[str] = field(default_factory=list)
    classifier_accuracy: float | None = None  # --features: the classifier's held-out accuracy
    precision: str = "fp32"  # the feature extractor's (--precision)

    def protocol_line(self) -> str:
        n_ref = self.n_ref if self.n_ref is not None else "unknown"
        return (
            f"FID {self.value:.4f} | extractor {self.extractor}, {self.feature_dim}-d | weights {self.weights} | "
            f"samples {self.samples}, n={self.n_samples} | reference {self.reference}, n={n_ref} | resize {self.resize}"
            + (f" | precision {self.precision}" if self.precision != "fp32" else "")
        )

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["protocol"] = self.protocol_line()
        return d


def fid(
    samples_path: str | os.PathLike,
    ref_path: str | os.PathLike,
    extractor: FeatureExtractor,
    *,
    batch_size: int = 50,
    cache_dir: str | os.PathLike | None = None,
    progress: bool = False,
) -> FIDResult:
    """FID between the images of a samples (or dataset) artifact and a reference (artifact or ``.npz``).

    Refuses different channel counts or sizes between samples and reference, images the extractor cannot
    take, and n <= feature dimension (before any feature is computed).
    """
    s_art = artifacts.load(samples_path, kind=IMAGE_KINDS, what="samples")
    s_images = _artifact_images(s_art)
    s_shape = tuple(int(s) for s in s_images.shape[1:])
    r_art = None
    if str(ref_path).endswith(".npz"):
        ref_pre = load_statistics(ref_path, extractor)
        r_shape, r_n, r_name = ref_pre.image_shape, ref_pre.n, Path(ref_path).name
    else:
        r_art = artifacts.load(ref_path, kind=IMAGE_KINDS, what="reference")
        r_images = _artifact_images(r_art)
        r_shape, r_n, r_name = tuple(int(s) for s in r_images.shape[1:]), int(r_images.shape[0]), r_art.path.name
    if r_shape is not None and tuple(r_shape) != s_shape:
        raise UserError(
            f"samples {s_art.path.name} are {_shape_str(s_shape)} but reference {r_name} is {_shape_str(r_shape)}; "
            "FID compares images of the same channels and size"
        )
    extractor.check_image_shape(s_shape, f"samples {s_art.path.name}")
    d = _probe_feature_dim(s_images, extractor)
    _check_enough(int(s_images.shape[0]), d, f"samples {s_art.path.name}")
    if r_n is not None:
        _check_enough(r_n, d, f"reference {r_name}")

    if r_art is None:
        ref = ref_pre
        if ref.mu.shape[0] != d:
            raise UserError(f"{ref_path}: statistics have {ref.mu.shape[0]} dims but the extractor gives {d}")
    else:
        ref = _reference_from_artifact(r_art, extractor, cache_dir, batch_size, progress)
    mu, sigma, n = compute_statistics(s_images, extractor, batch_size, progress, what=f"samples {s_art.path.name}")
    value = frechet_distance(mu, sigma, ref.mu, ref.sigma)
    warns = list(extractor.warnings)
    for w in (small_n_warning(n, "samples"), small_n_warning(ref.n, "reference")):
        if w:
            warns.append(w)
    return FIDResult(
        value=value,
        n_samples=n,
        n_ref=ref.n,
        extractor=extractor.name,
        extractor_id=extractor.id,
        feature_dim=d,
        weights=extractor.weights,
        reference=ref.description,
        resize=extractor.resize,
        samples=f"{s_art.path.name} ({s_art.kind}, sha256 {s_art.sha256[:12]})",
        ref_source=ref.source,
        cache_path=str(ref.cache_path) if ref.cache_path else None,
        warnings=warns,
        classifier_accuracy=getattr(extractor, "accuracy", None),
    )


__all__ = ["ClassifierExtractor", "FIDInceptionV3", "FIDResult", "FeatureExtractor", "INCEPTION_FILE",
           "InceptionExtractor", "SMALL_N", "TrainFeaturesResult", "build_fid_inception_net", "compute_statistics",
           "default_cache_dir", "fid", "frechet_distance", "images_to_float", "load_statistics",
           "reference_statistics", "save_statistics", "small_n_warning", "train_features"]
