"""Anomaly / OOD metrics, exactly as the papers' evaluation code computes them, plus a PCA baseline.

AUPRC is what Zenati et al.'s code (reused by MEG and the latent-EBM papers) reports:
``precision, recall, _ = precision_recall_curve(y, s); auc(recall, precision)`` (trapezoidal).
It is *not* ``average_precision_score``; both are reported, each under its own name, with AUROC.
Convention: anomalies (or OOD inputs) are label 1 and higher scores mean more anomalous.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch

from ebmtool.errors import UserError


@dataclass
class AnomalyMetrics:
    auprc: float  # sklearn.metrics.auc(recall, precision), the papers' number
    average_precision: float  # sklearn.metrics.average_precision_score
    auroc: float
    n: int
    n_anomalous: int

    def as_dict(self) -> dict:
        return asdict(self)


def metrics(y: np.ndarray | torch.Tensor, scores: np.ndarray | torch.Tensor) -> AnomalyMetrics:
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_auc_score

    y = np.asarray(y).astype(int)
    s = np.asarray(scores, dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise UserError("anomaly evaluation needs both normal (0) and anomalous (1) examples")
    if not np.isfinite(s).all():
        raise UserError("anomaly scores are non-finite (the posterior chain diverged: try a smaller --step-size)")
    precision, recall, _ = precision_recall_curve(y, s)
    return AnomalyMetrics(
        auprc=float(auc(recall, precision)),
        average_precision=float(average_precision_score(y, s)),
        auroc=float(roc_auc_score(y, s)),
        n=int(len(y)),
        n_anomalous=int(y.sum()),
    )


def binary_labels(labels: torch.Tensor, positive: list[int], where: str = "--data") -> torch.Tensor:
    present = set(int(c) for c in labels.unique())
    missing = [k for k in positive if k not in present]
    if missing:
        raise UserError(f"{where}: anomaly class {missing[0]} does not occur in the data (classes {sorted(present)})")
    y = torch.zeros(len(labels), dtype=torch.long, device=labels.device)
    for k in positive:
        y |= (labels == k).long()
    if int(y.sum()) == len(y):
        raise UserError(f"{where}: every example belongs to the anomaly class: no normals to compare against")
    return y


def pca_scores(train_x: torch.Tensor, test_x: torch.Tensor, components: int = 32, seed: int = 0) -> np.ndarray:
    """Baseline: PCA (scikit-learn) fitted on the training normals; score = squared reconstruction error."""
    from sklearn.decomposition import PCA

    a = train_x.flatten(1).double().numpy()
    b = test_x.flatten(1).double().numpy()
    k = min(components, a.shape[0] - 1, a.shape[1])
    pca = PCA(n_components=k, random_state=seed).fit(a)
    rec = pca.inverse_transform(pca.transform(b))
    return ((b - rec) ** 2).sum(1)
