"""``ebmtool data prepare``: load a source, filter, split by the anomaly protocol, resize, limit."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Optional

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from ebmtool import artifacts
from ebmtool.config import Strict, registered
from ebmtool.data.sources import SOURCES
from ebmtool.errors import UserError

PROTOCOL_SEED = 20200  # fixed once: every call computes the same 80/20 split of the normals
PROTOCOL_TRAIN_FRACTION = 0.8
CALIBRATION_FRACTION = 0.1  # of the training part: --part calibration (the rest is --part fit)


class DataConfig(Strict):
    dataset: Annotated[str, registered(SOURCES)]  # a name of data.sources.SOURCES, the one list
    root: Optional[str] = None
    split: Literal["train", "test", "train+test"] = Field(
        "train", description="train | test | train+test (both files, training images first: the 70,000-image MNIST "
                             "of the anomaly papers' protocol)")
    download: bool = False
    exclude_class: Optional[int] = None
    only_class: Optional[int] = None
    anomaly_protocol: Optional[int] = Field(None, description="held-out (anomalous) class K")
    part: Optional[Literal["train", "test", "fit", "calibration"]] = Field(
        None, description="train | test; or train's two disjoint pieces: fit (90%) and calibration (10%), "
                          "normals held out from fitting for `anomaly --calibrate`")
    size: Optional[int] = Field(None, ge=4, le=512)
    limit: Optional[int] = Field(None, ge=1)
    anomaly_split: Literal["random", "standard"] = Field(
        "random", description="random (protocol v3): the normals of --split permuted once and split 80/20, every image "
                              "of class K in the test part; standard (--split train+test only): the training file's "
                              "normals train, the whole test file is the test part (the source's own split)")
    test_permutation: Literal["same", "second"] = Field(
        "same", description="same: the test part is the rest of the one permutation (disjoint from train); second: "
                            "the protocol's original loader, which draws a second permutation for the test part, so "
                            "most test normals are training images (for measuring that practice, never a headline)")

    @model_validator(mode="after")
    def _consistent(self):
        if self.anomaly_protocol is not None and self.part is None:
            raise ValueError("--anomaly-protocol needs --part train|test|fit|calibration")
        if self.part is not None and self.anomaly_protocol is None:
            raise ValueError("--part needs --anomaly-protocol K")
        if self.anomaly_protocol is not None and (self.exclude_class is not None or self.only_class is not None):
            raise ValueError("--anomaly-protocol cannot be combined with --exclude-class/--only-class")
        if self.exclude_class is not None and self.only_class is not None:
            raise ValueError("--exclude-class and --only-class are exclusive")
        if self.anomaly_split == "standard" and (self.anomaly_protocol is None or self.split != "train+test"):
            raise ValueError("--anomaly-split standard needs --anomaly-protocol K and --split train+test (it trains on "
                             "the training file's normals and tests on the whole test file)")
        if self.anomaly_split == "standard" and self.test_permutation != "same":
            raise ValueError("--test-permutation: the standard split draws no permutation for its test part")
        if self.test_permutation != "same" and self.anomaly_protocol is None:
            raise ValueError("--test-permutation needs --anomaly-protocol K")
        if self.test_permutation != "same" and self.part != "test":
            raise ValueError(f"--test-permutation {self.test_permutation} draws the test part only (--part test); "
                             f"--part {self.part} is the same for both")
        if self.dataset in ("digits", "synthetic") and (self.root is not None or self.download):
            raise ValueError(f"--root/--download: the {self.dataset} dataset is not read from files "
                             "(scikit-learn's digits / generated)")
        return self


def protocol_split(labels: torch.Tensor, anomaly_class: int, test_permutation: str = "same"
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The hold-one-class protocol (docs/design.md §5), computed once with a fixed seed.

    Normals (label != K) are permuted with a fixed generator and split 80/20. Returns the indices of the
    training part (80% of normals) and of the test part (the other 20% of normals + every image of class K).
    The two parts are disjoint by construction (no training image is in the test set).

    ``test_permutation="second"`` is like the protocol's original loader (Zenati et al., arXiv:1802.06222), which
    draws the test part's normals from a second permutation: about 80% of them are then training images (the same
    overlap, not the same indices: that loader draws later from its generator and rounds down). Only for
    measuring what that practice is worth.
    """
    normal = torch.nonzero(labels != anomaly_class).squeeze(1)
    anomal = torch.nonzero(labels == anomaly_class).squeeze(1)
    g = torch.Generator(device="cpu").manual_seed(PROTOCOL_SEED)
    perm = normal[torch.randperm(len(normal), generator=g, device="cpu")]
    n_train = int(round(PROTOCOL_TRAIN_FRACTION * len(normal)))
    train = perm[:n_train].sort().values
    if test_permutation == "second":
        perm = normal[torch.randperm(len(normal), generator=g, device="cpu")]
    test = torch.cat([perm[n_train:], anomal]).sort().values
    return train, test


def standard_split(labels: torch.Tensor, anomaly_class: int, n_train_file: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard split of a source with its own training and test files (labels of train+test, training file
    first, ``n_train_file`` images long): the training part is every normal of the training file, the test part the
    whole test file (normals and class K, ~10% anomalies on MNIST). No permutation is drawn; the two are disjoint."""
    idx = torch.arange(len(labels), device=labels.device)
    train = idx[:n_train_file][labels[:n_train_file] != anomaly_class]
    return train, idx[n_train_file:]


def calibration_split(train: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split the protocol's training part into fit (90%) and calibration (10%) normals, fixed seed.

    The calibration normals are held out from fitting, so that a label-free score calibrated on them
    (``anomaly --score typicality --calibrate``) sees normals the model was not trained on."""
    perm = train[torch.randperm(len(train), generator=torch.Generator(device="cpu").manual_seed(PROTOCOL_SEED + 1), device="cpu")]
    n_cal = max(1, int(round(CALIBRATION_FRACTION * len(train))))
    return perm[n_cal:].sort().values, perm[:n_cal].sort().values


def load_split(dataset: str, root, split: str, download: bool, show: bool):
    """A source's split; ``train+test`` is the training split followed by the test split (in that order, so an
    index below the training set's length is a training image), each source's loader called once per file set."""
    return load_split_sized(dataset, root, split, download, show)[0]


def load_split_sized(dataset: str, root, split: str, download: bool, show: bool):
    """:func:`load_split`, and the number of its images that come from the training file."""
    if split != "train+test":
        loaded = SOURCES[dataset](root, split, download, show)
        return loaded, (len(loaded[1]) if split == "train" else 0)
    parts = [SOURCES[dataset](root, s, download, show) for s in ("train", "test")]
    keys = set(parts[0][2]) & set(parts[1][2])
    if parts[0][0].shape[1:] != parts[1][0].shape[1:]:
        raise UserError(f"{dataset}: train images are {tuple(parts[0][0].shape[1:])} but test images "
                        f"{tuple(parts[1][0].shape[1:])}")
    return (torch.cat([parts[0][0], parts[1][0]]), torch.cat([parts[0][1], parts[1][1]]),
            {k: torch.cat([parts[0][2][k], parts[1][2][k]]) for k in keys},
            f"{parts[0][3]} + {parts[1][3]} (train first, then test)"), len(parts[0][1])


def prepare(cfg: DataConfig, quiet: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The dataset's tensors and metadata; ``quiet=False``: download messages and a progress bar on stderr."""
    (images, labels, extra, source), n_train_file = load_split_sized(cfg.dataset, cfg.root, cfg.split, cfg.download,
                                                                      not quiet)
    classes_all = sorted(int(c) for c in labels.unique())
    idx = torch.arange(len(labels), device=labels.device)
    for k in (cfg.exclude_class, cfg.only_class, cfg.anomaly_protocol):
        if k is not None and k not in classes_all:
            raise UserError(f"class {k} does not occur in {cfg.dataset} (classes {classes_all})")
    if cfg.exclude_class is not None:
        idx = idx[labels != cfg.exclude_class]
    if cfg.only_class is not None:
        idx = idx[labels == cfg.only_class]
    if cfg.anomaly_protocol is not None:
        if cfg.anomaly_split == "standard":
            train, test = standard_split(labels, cfg.anomaly_protocol, n_train_file)
        else:
            train, test = protocol_split(labels, cfg.anomaly_protocol, cfg.test_permutation)
        fit, cal = calibration_split(train)
        idx = {"train": train, "test": test, "fit": fit, "calibration": cal}[cfg.part]
    if cfg.limit is not None:
        idx = idx[: cfg.limit]
    if len(idx) == 0:
        raise UserError(f"{cfg.dataset}: no images left after filtering")
    images, labels = images[idx], labels[idx]
    extra = {k: v[idx] for k, v in extra.items()}
    if cfg.size is not None and cfg.size != images.shape[-1]:
        x = F.interpolate(images.float(), size=(cfg.size, cfg.size), mode="bilinear", antialias=True, align_corners=False)
        images = x.round().clamp(0, 255).to(torch.uint8)
    tensors = {"images": images.contiguous(), "labels": labels.contiguous(), **extra}
    meta = {
        "dataset": cfg.dataset,
        "split": cfg.split,
        "source": source,
        "n": len(labels),
        "image_shape": list(images.shape[1:]),
        "value_range": [0, 255],
        "classes": sorted(int(c) for c in labels.unique()),
        "content_sha256": artifacts.tensor_sha256(images, labels),
    }
    if cfg.anomaly_protocol is not None:
        meta["protocol"] = {"anomaly_class": cfg.anomaly_protocol, "part": cfg.part, "seed": PROTOCOL_SEED,
                            **({"split": "standard", "n_train_file": n_train_file} if cfg.anomaly_split == "standard"
                               else {"train_fraction": PROTOCOL_TRAIN_FRACTION,
                                     "test_permutation": cfg.test_permutation}),
                            **({"calibration_fraction": CALIBRATION_FRACTION} if cfg.part in ("fit", "calibration") else {})}
    return tensors, meta


def load_images(path, what: str = "--data") -> tuple[torch.Tensor, torch.Tensor, artifacts.Artifact]:
    """Open a dataset or samples artifact: float images in [-1, 1] (N, C, H, W), labels (or -1), the artifact."""
    art = artifacts.load(path, ("dataset", "samples", "reconstructions"), what=what)
    art.require("images")
    xf, labels = as_images(art.tensors["images"], art.tensors.get("labels"), str(art.path))
    return xf, labels, art


def as_images(x: torch.Tensor, labels: Optional[torch.Tensor] = None,
              where: str = "images") -> tuple[torch.Tensor, torch.Tensor]:
    """Check images held in memory (or read from an artifact) and bring them to the form every stage uses.

    x: (N, C, H, W) uint8 in [0, 255], or float in [-1, 1]; labels: (N,) integers or None (-1 for each image).
    Returns (images: (N, C, H, W) float32 in [-1, 1], labels: (N,) int64). ``where`` names them in the one-line
    error of a wrong input."""
    if not isinstance(x, torch.Tensor) or x.ndim != 4:
        raise UserError(f"{where}: images must be N x C x H x W, got shape {tuple(getattr(x, 'shape', ()))}")
    if len(x) == 0:
        raise UserError(f"{where}: holds no images")
    if x.dtype == torch.uint8:
        xf = x.float().div_(127.5).sub_(1.0)
    elif x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise UserError(f"{where}: float images hold non-finite values (NaN or infinity)")
        if x.min() < -1 or x.max() > 1:
            raise UserError(f"{where}: float images must lie in [-1, 1] (found {float(x.min()):.3g}..{float(x.max()):.3g})")
        xf = x.float()
    else:
        raise UserError(f"{where}: images have dtype {x.dtype}; expected uint8 or float")
    if labels is None:
        labels = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    if len(labels) != len(x):
        raise UserError(f"{where}: {len(labels)} labels for {len(x)} images")
    return xf, labels.long()
