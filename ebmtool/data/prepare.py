"""``ebmtool data prepare``: load a source, filter, split by the anomaly protocol, resize, limit."""

from __future__ import annotations

import math
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
    """Open a dataset or samples artifact: float images in [-1, 1] (N, C, H, W), labels (or -1), the artifact.
    Float images are read in the range the artifact's meta ``value_range`` states (uint8: [0, 255])."""
    art = artifacts.load(path, ("dataset", "samples", "reconstructions"), what=what)
    art.require("images")
    vr = art.meta.get("value_range")
    stated = tuple(vr) if isinstance(vr, (list, tuple)) and len(vr) == 2 and art.tensors["images"].is_floating_point() \
        else None
    xf, labels = as_images(art.tensors["images"], art.tensors.get("labels"), str(art.path), value_range=stated,
                           range_hint='the meta key "value_range": [{lo}, {hi}] in the artifact')
    return xf, labels, art


ImageSource = Any  # torch.Tensor | numpy.ndarray | torch.utils.data.Dataset | torch.utils.data.DataLoader
CONVERT_HINT = "or convert them: x * 2 - 1 gives [-1, 1], (x * 255).round().to(torch.uint8) gives uint8"


def _tensor(v: Any, where: str, what: str) -> torch.Tensor:
    """A tensor from a tensor, a NumPy array or a number; one line for anything else."""
    if isinstance(v, torch.Tensor):
        return v
    if type(v).__module__ == "numpy" and hasattr(v, "dtype"):
        import numpy as np

        a = np.asarray(v)
        if a.dtype.kind not in "biuf":
            raise UserError(f"{where}: {what} have NumPy dtype {a.dtype}; expected uint8, float or integers")
        return torch.from_numpy(np.ascontiguousarray(a))
    if isinstance(v, (int, float)) and not isinstance(v, bool) and what == "labels":
        return torch.tensor(v, device="cpu")
    if type(v).__module__.startswith("PIL"):
        raise UserError(f"{where}: {what} are PIL images; give the dataset transform=torchvision.transforms."
                        "PILToTensor() (uint8, C x H x W)")
    raise UserError(f"{where}: {what} must be a torch tensor or a NumPy array, not {type(v).__name__}")


def _split_item(item: Any, where: str) -> tuple[Any, Any]:
    """A dataset item or a loader batch: image(s), or (image(s), label(s)[, ...])."""
    if isinstance(item, (tuple, list)):
        if not item:
            raise UserError(f"{where}: an item is an empty {type(item).__name__}; expected an image or (image, label)")
        return item[0], (item[1] if len(item) > 1 else None)
    if isinstance(item, dict):
        raise UserError(f"{where}: items are dicts (keys {', '.join(map(str, item))}); give a dataset whose items "
                        "are an image or (image, label)")
    return item, None


def collect_images(data: ImageSource, labels: Any = None, where: str = "images"
                   ) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Images held in memory, in any of the forms a notebook has them, as one tensor: a torch tensor or a NumPy
    array (N, C, H, W); a ``torch.utils.data.Dataset`` whose items are an image (C, H, W) or (image, label); a
    ``DataLoader`` whose batches are images (B, C, H, W) or (images, labels). Returns (images, labels or None),
    untouched otherwise (:func:`as_images` checks them). Anything else is one :class:`UserError`."""
    from torch.utils.data import DataLoader, Dataset

    if isinstance(data, (DataLoader, Dataset)):
        if labels is not None:
            raise UserError(f"{where}: labels come from the {type(data).__name__}'s items; give them there")
        batched = isinstance(data, DataLoader)
        try:
            items = iter(data) if batched or not hasattr(data, "__len__") else (data[i] for i in range(len(data)))
            xs, ys = [], []
            for item in items:
                x, y = _split_item(item, where)
                xs.append(_tensor(x, where, "images"))
                ys.append(None if y is None else _tensor(y, where, "labels"))
        except UserError:
            raise
        except (TypeError, ValueError, IndexError, KeyError, RuntimeError) as e:
            first = str(e).splitlines()[0] if str(e) else ""
            raise UserError(f"{where}: reading the {type(data).__name__} failed ({type(e).__name__}: "
                            f"{first})") from None
        if not xs:
            raise UserError(f"{where}: the {type(data).__name__} holds no images")
        if any((y is None) != (ys[0] is None) for y in ys):
            raise UserError(f"{where}: some items have labels and some do not")
        shapes = {tuple(x.shape[1:] if batched else x.shape) for x in xs}
        if len(shapes) > 1:
            raise UserError(f"{where}: images of different shapes ({', '.join(map(str, sorted(shapes)[:3]))}); "
                            "resize them to one size first")
        x = torch.cat(xs) if batched else torch.stack(xs)
        y = None if ys[0] is None else (torch.cat([v.reshape(-1) for v in ys]) if batched
                                        else torch.stack([v.reshape(()) for v in ys]))
        return x, y
    x = _tensor(data, where, "images")
    return x, None if labels is None else _tensor(labels, where, "labels")


def _check_range(value_range: Any, where: str) -> tuple[float, float]:
    try:
        lo, hi = (float(v) for v in value_range)
    except (TypeError, ValueError):
        raise UserError(f"{where}: value_range must be a pair (low, high) such as (0, 1), "
                        f"got {value_range!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
        raise UserError(f"{where}: value_range must be a pair low < high, got {value_range!r}")
    return lo, hi


def as_images(x: ImageSource, labels: Any = None, where: str = "images", *, value_range: Any = None,
              range_hint: str = "value_range=({lo}, {hi})") -> tuple[torch.Tensor, torch.Tensor]:
    """Check images held in memory (or read from an artifact) and bring them to the form every stage uses: the
    one check of the CLI and the Python API.

    x: (N, C, H, W) as a torch tensor, a NumPy array, a ``Dataset`` or a ``DataLoader`` (:func:`collect_images`):
    uint8 in [0, 255], or float in [-1, 1]. Floats in another range need ``value_range`` (low, high), e.g. (0, 1)
    for torchvision's ``ToTensor``: floats in [0, 1] without it are refused, since they may be either. labels: (N,)
    integers or None (-1 for each image). Returns (images: (N, C, H, W) float32 in [-1, 1], labels: (N,) int64).
    ``where`` names them in the one-line error of a wrong input; ``range_hint`` says how to state a range there
    (``{lo}`` and ``{hi}`` are replaced by a range's ends)."""
    x, labels = collect_images(x, labels, where)
    if x.ndim != 4:
        hint = ""
        if x.ndim == 3:
            hint = " (one channel: add the channel axis, x[:, None])"
        raise UserError(f"{where}: images must be N x C x H x W, got shape {tuple(x.shape)}{hint}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
        raise UserError(f"{where}: images of shape {tuple(x.shape)} look channels-last (N x H x W x C, as NumPy and "
                        "PIL give them); ebmtool takes N x C x H x W: x.permute(0, 3, 1, 2)")
    if len(x) == 0:
        raise UserError(f"{where}: holds no images")
    if value_range is not None:
        lo, hi = _check_range(value_range, where)
        if x.dtype == torch.uint8 and (lo, hi) != (0.0, 255.0):
            raise UserError(f"{where}: uint8 images are read in [0, 255]; value_range {value_range!r} is for float "
                            "images")
    if x.dtype == torch.uint8:
        xf = x.float().div_(127.5).sub_(1.0)
    elif x.is_floating_point():
        if not bool(torch.isfinite(x).all()):
            raise UserError(f"{where}: images hold NaN or infinite values")
        mn, mx = float(x.min()), float(x.max())
        if value_range is not None:
            if mn < lo or mx > hi:
                raise UserError(f"{where}: float images lie in {mn:.3g}..{mx:.3g}, outside the stated value_range "
                                f"[{lo:g}, {hi:g}]")
            xf = x.float() if (lo, hi) == (-1.0, 1.0) else (x.float() - lo).mul_(2 / (hi - lo)).sub_(1.0)
        elif mn < -1 or mx > 1:
            guess = ("0", "255") if 0 <= mn and mx <= 255 else ("low", "high")
            raise UserError(f"{where}: float images must lie in [-1, 1] (found {mn:.3g}..{mx:.3g}); state their range "
                            f"({range_hint.format(lo=guess[0], hi=guess[1])}) or convert them: x / 127.5 - 1 maps "
                            "[0, 255] to [-1, 1]")
        elif mn >= 0:
            raise UserError(f"{where}: float images in [0, 1] ({mn:.3g}..{mx:.3g}) may be torchvision's ToTensor range "
                            f"or a part of [-1, 1]: state it ({range_hint.format(lo=0, hi=1)}, or "
                            f"{range_hint.format(lo=-1, hi=1)}) "
                            f"{CONVERT_HINT}")
        else:
            xf = x.float()
    else:
        raise UserError(f"{where}: images have dtype {x.dtype}; expected uint8 or float")
    if labels is None:
        labels = torch.full((len(x),), -1, dtype=torch.long, device=x.device)
    if labels.ndim != 1 or len(labels) != len(x):
        raise UserError(f"{where}: {len(labels) if labels.ndim == 1 else tuple(labels.shape)} labels for "
                        f"{len(x)} images")
    if labels.is_floating_point() and not bool((labels == labels.round()).all()):
        raise UserError(f"{where}: labels must be integers")
    return xf, labels.long()
