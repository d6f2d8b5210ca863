"""``train-features``: a small conv classifier whose penultimate layer is a dataset-specific FID feature space."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from ebmtool import artifacts
from ebmtool.errors import DivergenceError, UserError
from ebmtool.eval.features import _artifact_images, _progress, images_to_float
from ebmtool.nets.classifier import FeatureClassifier



# ------------------------------------------------------------------------------------ train-features


@dataclass
class TrainFeaturesResult:
    path: Path
    accuracy: float
    n_train: int
    n_test: int
    epochs: int
    feature_dim: int
    classes: list[int]
    seconds: float


def train_features(
    dataset_artifact_path: str | os.PathLike,
    out_path: str | os.PathLike,
    epochs: int = 5,
    seed: int = 0,
    *,
    batch_size: int = 128,
    lr: float = 2e-3,
    widths: Sequence[int] = (32, 64, 64),
    test_fraction: float = 0.1,
    device: str | torch.device = "cpu",
    force: bool = False,
    progress: bool = False,
) -> TrainFeaturesResult:
    """Train :class:`~ebmtool.nets.classifier.FeatureClassifier` on a dataset artifact's ``images``/``labels``
    (a fixed-seed random 10% held out for the reported accuracy) and save a "features" artifact
    (tensors ``classifier.*``; meta ``feature_dim``, ``image_shape``, ``classes``, ``accuracy``, ``widths``).
    Default 5 epochs: about a second on a 2-core CPU for 8×8 digits (~0.98 held-out accuracy), about
    75 s for 10,000 MNIST 32×32 images.
    """
    out = artifacts.check_output(out_path, force)
    if int(epochs) < 1:
        raise UserError(f"epochs must be >= 1, got {epochs}")
    if int(batch_size) < 1:
        raise UserError(f"batch size must be >= 1, got {batch_size}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise UserError(f"test fraction must lie in (0, 1), got {test_fraction}")
    art = artifacts.load(dataset_artifact_path, kind="dataset", what="dataset")
    art.require("images", "labels")
    images = _artifact_images(art)
    labels = art.tensors["labels"]
    n = int(images.shape[0])
    if labels.ndim != 1 or labels.shape[0] != n or labels.is_floating_point() or labels.dtype == torch.bool:
        raise UserError(
            f"{art.path}: tensor 'labels' must be integer with one entry per image ({n}), "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    labels = labels.to(torch.int64)
    classes = torch.unique(labels)  # sorted
    if classes.numel() < 2:
        raise UserError(f"{art.path}: a feature classifier needs at least 2 classes, labels hold {classes.numel()}")
    n_test = max(1, int(round(n * float(test_fraction))))
    if n - n_test < 2:
        raise UserError(f"{art.path}: too few images ({n}) to train a feature classifier")
    y_all = torch.searchsorted(classes, labels)

    t0 = time.perf_counter()
    torch.manual_seed(int(seed))
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    perm = torch.randperm(n, generator=g, device="cpu")
    test_idx, train_idx = perm[:n_test], perm[n_test:]
    dev = torch.device(device)
    net = FeatureClassifier(int(classes.numel()), widths).to(dev)
    opt = torch.optim.Adam(net.parameters(), lr=float(lr))
    bs = int(batch_size)
    for epoch in _progress(range(int(epochs)), int(epochs), "train-features", progress):
        net.train()
        order = train_idx[torch.randperm(train_idx.numel(), generator=g, device="cpu")]
        for step, i in enumerate(range(0, order.numel(), bs)):
            idx = order[i : i + bs]
            if idx.numel() < 2 and order.numel() > 1:
                continue  # BatchNorm needs two images; a lone trailing image is skipped
            xb = images_to_float(images[idx]).to(dev)
            loss = F.cross_entropy(net(xb), y_all[idx].to(dev))
            if not torch.isfinite(loss):
                raise DivergenceError(
                    f"train-features: loss became non-finite at epoch {epoch + 1} step {step + 1}; try a smaller learning rate"
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    net.eval()
    correct = 0
    with torch.no_grad():
        for i in range(0, n_test, 512):
            idx = test_idx[i : i + 512]
            pred = net(images_to_float(images[idx]).to(dev)).argmax(1).cpu()
            correct += int((pred == y_all[idx]).sum())
    accuracy = correct / n_test
    seconds = time.perf_counter() - t0
    cls = [int(c) for c in classes.tolist()]
    config = {
        "epochs": int(epochs), "seed": int(seed), "batch_size": bs, "lr": float(lr), "widths": [int(w) for w in widths],
        "test_fraction": float(test_fraction),
    }
    meta = {
        "feature_dim": net.feature_dim,
        "image_shape": [int(s) for s in images.shape[1:]],
        "classes": cls,
        "accuracy": accuracy,
        "widths": [int(w) for w in widths],
        "n_train": int(train_idx.numel()),
        "n_test": n_test,
    }
    tensors = {f"classifier.{k}": v for k, v in net.state_dict().items()}
    artifacts.save(out, "features", tensors, config=config, meta=meta, parents=[art], force=True)
    return TrainFeaturesResult(out, accuracy, int(train_idx.numel()), n_test, int(epochs), net.feature_dim, cls, seconds)
