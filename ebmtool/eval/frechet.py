"""The Fréchet distance between two Gaussians (float64, no ``scipy.linalg.sqrtm``) and FID's small-n warning."""

from __future__ import annotations

from typing import Any

import numpy as np

from ebmtool.errors import UserError

WEAK_CLASSIFIER_ACCURACY = 0.9  # fid --features warns below this held-out accuracy

SMALL_N = 10_000


# --------------------------------------------------------------------------------------------- math


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any, eps: float = 1e-6) -> float:
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2), squared, in float64.

    Dowson & Landau (1982); FID of Heusel et al. (2017)::

        d² = ||mu1 - mu2||² + Tr(sigma1) + Tr(sigma2) - 2 Tr((sigma1 sigma2)^(1/2))

    ``sigma1 sigma2`` is similar to the symmetric PSD matrix ``M = sigma1^(1/2) sigma2 sigma1^(1/2)`` (same
    eigenvalues, also when sigma1 is singular), so ``Tr((sigma1 sigma2)^(1/2)) = Σ_i sqrt(λ_i(M))`` with
    ``λ`` from a symmetric eigensolver. That avoids ``scipy.linalg.sqrtm`` (and its ``disp`` argument, removed
    in SciPy 1.18) and the complex round-off of a general matrix square root; no diagonal offset is needed.

    Numerical guards (each a :class:`UserError` naming the problem): shape mismatch, non-finite entries,
    a non-symmetric sigma, an eigenvalue below ``-eps * max(1, largest |eigenvalue|)`` (not a covariance).
    Negative eigenvalues within that tolerance are round-off and are clipped to 0; a final value within
    ``eps * max(1, Tr sigma1 + Tr sigma2 + ||mu1 - mu2||²)`` below 0 is returned as 0.
    """
    m1 = _vector(mu1, "mu1")
    m2 = _vector(mu2, "mu2")
    s1 = _matrix(sigma1, "sigma1")
    s2 = _matrix(sigma2, "sigma2")
    if m1.shape != m2.shape:
        raise UserError(f"Fréchet distance: mu1 has {m1.shape[0]} dims but mu2 has {m2.shape[0]} "
                        "(different feature spaces?)")
    d = m1.shape[0]
    for name, s in (("sigma1", s1), ("sigma2", s2)):
        if s.shape != (d, d):
            raise UserError(f"Fréchet distance: {name} has shape {s.shape[0]}x{s.shape[1]}, expected {d}x{d} "
                            "to match mu")

    w1, v1 = _psd_eigh(s1, "sigma1", eps)
    _psd_eigh(s2, "sigma2", eps)  # validation only
    root1 = (v1 * np.sqrt(w1)) @ v1.T
    m = root1 @ s2 @ root1
    lam = _psd_eigvals(0.5 * (m + m.T), "sigma1^(1/2) sigma2 sigma1^(1/2)", eps)
    tr_covmean = float(np.sqrt(lam).sum())

    diff = m1 - m2
    mean_term = float(diff @ diff)
    value = mean_term + float(np.trace(s1)) + float(np.trace(s2)) - 2.0 * tr_covmean
    if not np.isfinite(value):
        raise UserError("Fréchet distance: result is not finite (overflow in the statistics?)")
    if value < 0.0:
        scale = max(1.0, float(np.trace(s1)) + float(np.trace(s2)) + mean_term)
        if value < -eps * scale:
            raise UserError(f"Fréchet distance: negative result {value:.6g} beyond round-off (inconsistent statistics)")
        value = 0.0
    return value


def _vector(x: Any, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise UserError(f"Fréchet distance: {name} must be a vector, got shape {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise UserError(f"Fréchet distance: {name} holds non-finite values")
    return a


def _matrix(x: Any, name: str) -> np.ndarray:
    a = np.atleast_2d(np.asarray(x, dtype=np.float64))
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise UserError(f"Fréchet distance: {name} must be a square matrix, got shape {tuple(a.shape)}")
    if not np.isfinite(a).all():
        raise UserError(f"Fréchet distance: {name} holds non-finite values")
    scale = max(1.0, float(np.abs(a).max()) if a.size else 1.0)
    if float(np.abs(a - a.T).max(initial=0.0)) > 1e-6 * scale:
        raise UserError(f"Fréchet distance: {name} is not symmetric (not a covariance matrix)")
    return 0.5 * (a + a.T)


def _psd_eigh(a: np.ndarray, name: str, eps: float) -> tuple[np.ndarray, np.ndarray]:
    try:
        w, v = np.linalg.eigh(a)
    except np.linalg.LinAlgError:
        raise UserError(f"Fréchet distance: eigendecomposition of {name} did not converge") from None
    return _clip_eigs(w, name, eps), v


def _psd_eigvals(a: np.ndarray, name: str, eps: float) -> np.ndarray:
    try:
        w = np.linalg.eigvalsh(a)
    except np.linalg.LinAlgError:
        raise UserError(f"Fréchet distance: eigenvalues of {name} did not converge") from None
    return _clip_eigs(w, name, eps)


def _clip_eigs(w: np.ndarray, name: str, eps: float) -> np.ndarray:
    if w.size and w.min() < -eps * max(1.0, float(np.abs(w).max())):
        raise UserError(
            f"Fréchet distance: {name} is not positive semi-definite (smallest eigenvalue {w.min():.3g}), "
            "not a covariance"
        )
    return np.clip(w, 0.0, None)


def small_n_warning(n: int | None, what: str = "images") -> str | None:
    """A one-line warning when FID's upward small-sample bias matters (n < :data:`SMALL_N`), else None."""
    if n is None or n >= SMALL_N:
        return None
    return (
        f"FID is biased upward for small n ({what}: n={n} < {SMALL_N}); compare scores only at equal n "
        "and the same reference"
    )
