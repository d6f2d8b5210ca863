"""``ebmtool data prepare``: load a source, filter, split by the anomaly protocol, resize, convert channels, limit."""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal, Optional, Union

import torch
from pydantic import Field, model_validator

from ebmtool import artifacts
from ebmtool.config import Strict, registered
from ebmtool.data.files import LAYOUTS, VALUE_RANGES, FileOptions
from ebmtool.data.sources import FILE_SOURCES, SOURCES, Loaded
from ebmtool.errors import UserError
from ebmtool.images import resize_center, to_channels

PROTOCOL_SEED = 20200  # fixed once: every call computes the same 80/20 split of the normals
PROTOCOL_TRAIN_FRACTION = 0.8
CALIBRATION_FRACTION = 0.1  # of the training part: --part calibration (the rest is --part fit)


ClassRef = Union[int, str]  # a class by index, or by name (a folder's class-folder name, an .npz's class_names)


class DataConfig(Strict):
    dataset: Annotated[str, registered(SOURCES)]  # a name of data.sources.SOURCES, the one list
    root: Optional[str] = Field(None, description="the dataset's folder; folder: the images' folder; array: the "
                                                  ".npz/.npy file")
    split: Literal["train", "test", "train+test"] = Field(
        "train", description="train | test | train+test (both files, training images first: the 70,000-image MNIST "
                             "of the anomaly papers' protocol)")
    download: bool = False
    exclude_class: Optional[ClassRef] = None
    only_class: Optional[ClassRef] = None
    anomaly_protocol: Optional[ClassRef] = Field(None, description="held-out (anomalous) class K (index or name)")
    part: Optional[Literal["train", "test", "fit", "calibration"]] = Field(
        None, description="train | test; or train's two disjoint pieces: fit (90%) and calibration (10%), "
                          "normals held out from fitting for `anomaly --calibrate` and `score --calibration` "
                          "(without --anomaly-protocol: every image of the source split 90/10)")
    size: Optional[int] = Field(None, ge=4, le=512, description="the shorter side to SIZE, then the centre crop")
    channels: Optional[Literal[1, 3]] = Field(None, description="1 (grey, ITU-R 601-2 luminance) | 3 (RGB)")
    layout: Optional[Literal[LAYOUTS]] = Field(  # type: ignore[valid-type]
        None, description="array files: nhwc | nchw | nhw, where the shape fits two")
    value_range: Optional[Literal[tuple(VALUE_RANGES)]] = Field(  # type: ignore[valid-type]
        None, description="array files of floats (or ints): 0,1 | -1,1 | 0,255")
    skip_bad: bool = Field(False, description="folders: skip unreadable images (their number is reported)")
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
        if self.part in ("train", "test") and self.anomaly_protocol is None:
            raise ValueError(f"--part needs --anomaly-protocol K for --part {self.part} (--part fit|calibration "
                             "alone splits every image 90/10)")
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
        if self.dataset in FILE_SOURCES and self.download:
            raise ValueError(f"--download: --dataset {self.dataset} reads your own files; there is nothing to download")
        if self.dataset != "array" and (self.layout is not None or self.value_range is not None):
            raise ValueError("--layout/--value-range: they describe an array file (--dataset array)")
        if self.dataset != "folder" and self.skip_bad:
            raise ValueError("--skip-bad: it skips unreadable image files of a folder (--dataset folder)")
        return self

    def file_options(self) -> FileOptions:
        return FileOptions(size=self.size, channels=self.channels, layout=self.layout,
                           value_range=self.value_range, skip_bad=self.skip_bad)


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
    perm = train[torch.randperm(len(train), generator=torch.Generator(device="cpu").manual_seed(PROTOCOL_SEED + 1),
                                device="cpu")]
    n_cal = max(1, int(round(CALIBRATION_FRACTION * len(train))))
    return perm[n_cal:].sort().values, perm[:n_cal].sort().values


def load_split(dataset: str, root, split: str, download: bool, show: bool,
               opts: Optional[FileOptions] = None) -> Loaded:
    """A source's split; ``train+test`` is the training split followed by the test split (in that order, so an
    index below the training set's length is a training image), each source's loader called once per file set.
    ``opts``: what the file sources (folder, array) are asked (size, channels, layout, value range, skip-bad)."""
    return load_split_sized(dataset, root, split, download, show, opts)[0]


def _load(dataset: str, root, split: str, download: bool, show: bool, opts: Optional[FileOptions]) -> Loaded:
    kw = {"opts": opts or FileOptions()} if dataset in FILE_SOURCES else {}
    return Loaded(*SOURCES[dataset](root, split, download, show, **kw))


def load_split_sized(dataset: str, root, split: str, download: bool, show: bool,
                     opts: Optional[FileOptions] = None) -> tuple[Loaded, int]:
    """:func:`load_split`, and the number of its images that come from the training file."""
    if split != "train+test":
        loaded = _load(dataset, root, split, download, show, opts)
        return loaded, (len(loaded.labels) if split == "train" else 0)
    parts = [_load(dataset, root, s, download, show, opts) for s in ("train", "test")]
    keys = set(parts[0].extra) & set(parts[1].extra)
    if parts[0].images.shape[1:] != parts[1].images.shape[1:]:
        raise UserError(f"{dataset}: train images are {tuple(parts[0].images.shape[1:])} but test images "
                        f"{tuple(parts[1].images.shape[1:])}")
    return Loaded(torch.cat([parts[0].images, parts[1].images]), torch.cat([parts[0].labels, parts[1].labels]),
                  {k: torch.cat([parts[0].extra[k], parts[1].extra[k]]) for k in keys},
                  f"{parts[0].note} + {parts[1].note} (train first, then test)"), len(parts[0].labels)


def class_index(value: ClassRef, class_names: Optional[list[str]], where: str) -> int:
    """A class given by index or by name as its label: a name of ``class_names`` wins (a folder named "3" is the
    class named "3"), else a whole number is the index; anything else is one line listing the names."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    v = str(value).strip()
    if class_names and v in class_names:
        return class_names.index(v)
    try:
        return int(v)
    except ValueError:
        names = f"its classes are {', '.join(class_names)}" if class_names else "the data has no class names"
        raise UserError(f"{where} {v!r}: no class of that name ({names}); give a name or an index") from None


def prepare(cfg: DataConfig, quiet: bool = True) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The dataset's tensors and metadata; ``quiet=False``: download messages and a progress bar on stderr."""
    loaded, n_train_file = load_split_sized(cfg.dataset, cfg.root, cfg.split, cfg.download, not quiet,
                                            cfg.file_options())
    images, labels, extra, names = loaded.images, loaded.labels, loaded.extra, loaded.class_names
    classes_all = sorted(int(c) for c in labels.unique())
    idx = torch.arange(len(labels), device=labels.device)
    exclude, only, held_out = (None if v is None else class_index(v, names, opt) for v, opt in (
        (cfg.exclude_class, "--exclude-class"), (cfg.only_class, "--only-class"),
        (cfg.anomaly_protocol, "--anomaly-protocol")))
    if (exclude, only, held_out) != (None, None, None) and classes_all == [-1]:
        raise UserError(f"{cfg.dataset}: the images have no labels (a flat folder, or an array file without "
                        "'labels'), so no class can be held out: put the images in class folders, or give labels")
    for k in (exclude, only, held_out):
        if k is not None and k not in classes_all:
            named = f" ({', '.join(f'{c}: {names[c]}' for c in classes_all)})" if names else ""
            raise UserError(f"class {k} does not occur in {cfg.dataset} (classes {classes_all}{named})")
    if held_out is not None and len(classes_all) < 2:
        raise UserError(f"--anomaly-protocol {cfg.anomaly_protocol}: the split needs normals and anomalies, but "
                        f"{cfg.dataset} holds one class ({names[held_out] if names else held_out}); it needs at "
                        "least two")
    if exclude is not None:
        idx = idx[labels != exclude]
    if only is not None:
        idx = idx[labels == only]
    if held_out is not None:
        if cfg.anomaly_split == "standard":
            train, test = standard_split(labels, held_out, n_train_file)
        else:
            train, test = protocol_split(labels, held_out, cfg.test_permutation)
        fit, cal = calibration_split(train)
        idx = {"train": train, "test": test, "fit": fit, "calibration": cal}[cfg.part]
    elif cfg.part is not None:  # fit | calibration of every image: normals held out from fitting, for a threshold
        fit, cal = calibration_split(idx)
        idx = fit if cfg.part == "fit" else cal
    if cfg.limit is not None:
        idx = idx[: cfg.limit]
    if len(idx) == 0:
        raise UserError(f"{cfg.dataset}: no images left after filtering")
    images, labels = images[idx], labels[idx]
    extra = {k: v[idx] for k, v in extra.items()}
    if cfg.size is not None:
        images = resize_center(images, cfg.size)
    if cfg.channels is not None:
        images = to_channels(images, cfg.channels)
    tensors = {"images": images.contiguous(), "labels": labels.contiguous(), **extra}
    meta: dict[str, Any] = {
        "dataset": cfg.dataset,
        "split": cfg.split,
        "source": loaded.note,
        "n": len(labels),
        "image_shape": list(images.shape[1:]),
        "value_range": [0, 255],
        "classes": sorted(int(c) for c in labels.unique()),
        "content_sha256": artifacts.tensor_sha256(images, labels),
    }
    if names is not None:
        meta["class_names"] = names
    if loaded.paths is not None:
        meta["paths"] = [loaded.paths[i] for i in idx.tolist()]
    if loaded.skipped:
        meta["skipped"] = [{"path": p, "reason": r} for p, r in loaded.skipped]
    if held_out is None and cfg.part is not None:
        meta["holdout"] = {"part": cfg.part, "seed": PROTOCOL_SEED + 1, "calibration_fraction": CALIBRATION_FRACTION}
    if held_out is not None:
        meta["protocol"] = {"anomaly_class": held_out, "part": cfg.part, "seed": PROTOCOL_SEED,
                            **({"anomaly_class_name": names[held_out]} if names else {}),
                            **({"split": "standard", "n_train_file": n_train_file} if cfg.anomaly_split == "standard"
                               else {"train_fraction": PROTOCOL_TRAIN_FRACTION,
                                     "test_permutation": cfg.test_permutation}),
                            **({"calibration_fraction": CALIBRATION_FRACTION} if cfg.part in ("fit", "calibration")
                               else {})}
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
