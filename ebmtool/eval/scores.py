"""Label-free anomaly scores built from the terms of -log p(x, z) (``anomaly --score NAME``).

A latent model scores an image x at a posterior sample z by the papers' decision function
-log p(x, z) = recon + tilt + base (up to constants shared by every image):

- ``recon`` = ||x - g(z)||^2 / (2 sigma^2)   (-log p(x | z))
- ``tilt``  = -f(z), or -sum_k log r_k(z)     (the learned part of the prior)
- ``base``  = -log p0(z), ||z||^2 / 2 under N(0, I)

The scores (higher = more anomalous; none looks at a test label):

- ``joint``: recon + tilt + base, the papers' score (LEBM Sec. 3.4; adaptive NCE Sec. 5.2).
- ``recon``: the reconstruction term alone.
- ``prior``: the latent terms alone, tilt + base = -log p(z).
- ``typicality``: |joint - mean of joint over held-out *normal* images| (the typicality test of
  Nalisnick et al. 2019, arXiv:1906.02994). The mean comes from ``--calibrate DATA``: normals the model
  was not trained on (``data prepare --part calibration``). Two-sided: an image whose score is far *below*
  the normals' (a 1 that reconstructs too well) is as atypical as one far above.
- ``complexity``: joint in bits minus the image's lossless PNG length in bits (Serrà et al. 2020,
  arXiv:1909.11480, "input complexity"): a likelihood corrected for how simple the image is.
- ``dose``: the density of states of Morningstar et al. 2021 (arXiv:2006.09273) with the score's own terms
  as the statistics: a Gaussian is fitted to the term vectors (recon, tilt, base) of the ``--calibrate``
  normals, and an image scores its squared Mahalanobis distance from them. Like ``typicality`` it is
  two-sided, but per term: an image whose reconstruction is too *good* and whose latent is improbable
  under the learned prior stands out on both axes, whatever their scales.
"""

from __future__ import annotations

import io
import math

import numpy as np
import torch

from ebmtool.errors import UserError

SCORES = ("joint", "recon", "prior", "typicality", "complexity", "dose")
CALIBRATED = ("typicality", "dose")  # need held-out normals (--calibrate)
LATENT_TERMS = ("recon", "tilt", "base")


def png_bits(images: torch.Tensor) -> np.ndarray:
    """Lossless PNG length of each image in bits (zlib level 9), (N,) float64.

    images: (N, C, H, W) uint8 with C in {1, 3}."""
    from PIL import Image

    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] not in (1, 3):
        raise ValueError(f"png_bits needs uint8 (N, 1|3, H, W) images, got {images.dtype} {tuple(images.shape)}")
    arr = images.permute(0, 2, 3, 1).contiguous().numpy()
    out = np.empty(len(arr))
    for i, a in enumerate(arr):
        buf = io.BytesIO()
        Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a).save(buf, format="PNG", compress_level=9)
        out[i] = 8 * buf.tell()
    return out


def joint(terms: dict[str, np.ndarray]) -> np.ndarray:
    """-log p(x, z) in nats, (N,): the sum of the terms."""
    return sum(np.asarray(v, dtype=np.float64) for v in terms.values())


def dose(terms: dict[str, np.ndarray], calibration: dict[str, np.ndarray]) -> np.ndarray:
    """Squared Mahalanobis distance of each image's term vector from a Gaussian fitted to the calibration
    normals' term vectors, (N,). A ridge of 1e-6 x the mean variance keeps the covariance invertible."""
    keys = sorted(terms)
    a = np.stack([np.asarray(calibration[k], dtype=np.float64) for k in keys], 1)  # (M, T)
    x = np.stack([np.asarray(terms[k], dtype=np.float64) for k in keys], 1)  # (N, T)
    if len(a) < len(keys) + 1:
        raise UserError(f"--calibrate: {len(a)} images are too few to fit {len(keys)} score terms (need > {len(keys)})")
    cov = np.atleast_2d(np.cov(a, rowvar=False))
    cov += 1e-6 * max(float(np.trace(cov)) / len(keys), 1e-12) * np.eye(len(keys))
    d = x - a.mean(0)
    return np.einsum("ni,ij,nj->n", d, np.linalg.inv(cov), d)


def score(name: str, terms: dict[str, np.ndarray], *, images: torch.Tensor | None = None,
          calibration: dict[str, np.ndarray] | None = None, model: str = "this model") -> np.ndarray:
    """Score ``name`` from per-image terms ((N,) arrays; see the module doc), higher = more anomalous.

    images: (N, C, H, W) uint8, needed by ``complexity``; calibration: the terms of held-out normal images
    (the same keys), needed by ``typicality`` and ``dose``."""
    if name not in SCORES:
        raise UserError(f"--score: unknown score {name!r} (choose from {', '.join(SCORES)})")
    if name == "joint":
        return joint(terms)
    if name in ("recon", "prior") and set(terms) != set(LATENT_TERMS):
        raise UserError(f"--score {name}: {model} has no latent decomposition of its score (use joint, "
                        "typicality, complexity or dose)")
    if name == "recon":
        return np.asarray(terms["recon"], dtype=np.float64)
    if name == "prior":
        return np.asarray(terms["tilt"], dtype=np.float64) + np.asarray(terms["base"], dtype=np.float64)
    if name in CALIBRATED and calibration is None:
        raise UserError(f"--score {name} needs --calibrate DATA (held-out normal images, e.g. "
                        "data prepare --part calibration)")
    if name == "typicality":
        return np.abs(joint(terms) - joint(calibration).mean())
    if name == "dose":
        return dose(terms, calibration)
    if images is None:
        raise ValueError("the complexity score needs the uint8 images")
    return joint(terms) / math.log(2) - png_bits(images)
