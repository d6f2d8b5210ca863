"""FID's images and feature extractors: uint8/[-1, 1] images -> [0, 1] RGB, pytorch-fid's InceptionV3 (pool3, weights
from a local file only) and the classifier of ``train-features``."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ebmtool import artifacts
from ebmtool.errors import UserError
from ebmtool.nets.classifier import ARCHS, build_classifier

WEAK_CLASSIFIER_ACCURACY = 0.9  # fid --features warns below this held-out accuracy

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"
INCEPTION_SHA256_PREFIX = "6726825d"
INCEPTION_URL = "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + INCEPTION_FILE


# ------------------------------------------------------------------------------------------- images


def images_to_float(images: Any) -> torch.Tensor:
    """N×C×H×W images -> float32 N×3×H×W in [0, 1].

    uint8 is read as 0..255; floating point as [-1, 1] (the generators' tanh range; a float array in [0, 1]
    would be read as [-1, 1] too, so convert such data to uint8 first). Grey (C = 1) is repeated to three
    channels, as pytorch-fid does for grey PNGs. Other channel counts, other dtypes, out-of-range or
    non-finite values are refused with :class:`UserError`.
    """
    x = torch.from_numpy(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.ndim != 4:
        raise UserError(f"images must be N×C×H×W, got shape {tuple(x.shape)}")
    c = x.shape[1]
    if c not in (1, 3):
        raise UserError(f"images have {c} channels; FID takes grey (1) or RGB (3)")
    if x.dtype == torch.uint8:
        x = x.to(torch.float32) / 255.0
    elif x.is_floating_point():
        x = x.to(torch.float32)
        if x.numel():
            if not bool(torch.isfinite(x).all()):
                raise UserError("images hold non-finite values")
            lo, hi = float(x.min()), float(x.max())
            if lo < -1.0 - 1e-4 or hi > 1.0 + 1e-4:
                raise UserError(f"float images must lie in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]")
        x = ((x + 1.0) * 0.5).clamp_(0.0, 1.0)
    else:
        raise UserError(f"images must be uint8 (0..255) or float ([-1, 1]), got {x.dtype}")
    if c == 1:
        x = x.repeat(1, 3, 1, 1)
    return x


def _artifact_images(art: artifacts.Artifact) -> torch.Tensor:
    art.require("images")
    x = art.tensors["images"]
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise UserError(f"{art.path}: tensor 'images' must be uint8 N×C×H×W, got {x.dtype} {tuple(x.shape)}")
    if x.shape[1] not in (1, 3):
        raise UserError(f"{art.path}: images have {x.shape[1]} channels; FID takes grey (1) or RGB (3)")
    return x


def _shape_str(shape: Sequence[int]) -> str:
    return "x".join(str(int(s)) for s in shape)


# -------------------------------------------------------------------------------------- extractors


class FeatureExtractor:
    """Maps float images N×3×H×W in [0, 1] (see :func:`images_to_float`) to float features N×D.

    Attributes used in the protocol line and the cache key: ``name``, ``weights`` (description),
    ``resize`` (what happens to the image size), ``feature_dim`` (None until known), ``id`` (short, file-name
    safe, changes whenever the features would change), ``warnings``.
    """

    name: str = "extractor"
    weights: str = ""
    resize: str = ""
    feature_dim: int | None = None
    device: torch.device = torch.device("cpu")

    def __init__(self) -> None:
        self.warnings: list[str] = []

    @property
    def id(self) -> str:  # pragma: no cover - interface
        raise NotImplementedError

    def check_image_shape(self, shape: Sequence[int], what: str) -> None:
        """Raise :class:`UserError` when images of shape C×H×W cannot go through this extractor."""

    def forward_features(self, x: torch.Tensor) -> Any:  # pragma: no cover - interface
        raise NotImplementedError

    @torch.no_grad()
    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return _flatten_features(self.forward_features(x.to(self.device)))


def _flatten_features(out: Any) -> torch.Tensor:
    """pytorch-fid convention: last of a list of outputs; spatial maps are average-pooled to 1×1."""
    if isinstance(out, (list, tuple)):
        out = out[-1]
    if out.ndim == 4 and out.shape[2:] != (1, 1):
        out = F.adaptive_avg_pool2d(out, (1, 1))
    out = out.reshape(out.shape[0], -1)
    return out.float()


def build_fid_inception_net() -> nn.Module:
    """The FID Inception architecture of ``pytorch_fid.inception.fid_inception_v3``, without loading weights.

    torchvision's inception_v3 (1008 classes, no aux logits, torchvision's default per-layer initialisation)
    with pytorch-fid's ``FIDInceptionA/C/E_1/E_2`` blocks patched in; its state-dict keys are those of
    :data:`INCEPTION_FILE`.
    """
    import torchvision
    from pytorch_fid import inception as pfi

    net = torchvision.models.inception_v3(num_classes=1008, aux_logits=False, weights=None, init_weights=False)
    net.Mixed_5b = pfi.FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = pfi.FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = pfi.FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = pfi.FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = pfi.FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = pfi.FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = pfi.FIDInceptionE_1(1280)
    net.Mixed_7c = pfi.FIDInceptionE_2(2048)
    return net


class FIDInceptionV3(nn.Module):
    """pytorch-fid's ``InceptionV3`` with its FID (TF-ported) architecture, built without any download.

    Same construction as ``pytorch_fid.inception.fid_inception_v3`` (torchvision's inception_v3 with 1008
    classes and the ``FIDInception*`` blocks patched in) and the same forward as
    ``pytorch_fid.inception.InceptionV3``: bilinear resize to ``resize_to`` (align_corners=False), scale
    [0, 1] -> [-1, 1], blocks up to ``output_block`` (3 = 2048-d pool3). ``state_dict`` None leaves the
    torchvision default (random) initialisation, for tests; ``resize_to`` None skips the resize.
    """

    FEATURE_DIMS = {0: 64, 1: 192, 2: 768, 3: 2048}

    def __init__(self, state_dict: dict[str, torch.Tensor] | None = None, output_block: int = 3,
                 resize_to: int | None = 299):
        super().__init__()
        if output_block not in self.FEATURE_DIMS:
            raise ValueError("output_block must be 0, 1, 2 or 3")
        net = build_fid_inception_net()
        if state_dict is not None:
            net.load_state_dict(state_dict)  # strict; the caller turns errors into UserError
        blocks = [
            [net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)],
            [net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a, net.Mixed_6b, net.Mixed_6c, net.Mixed_6d,
             net.Mixed_6e],
            [net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d(output_size=(1, 1))],
        ]
        self.blocks = nn.ModuleList(nn.Sequential(*b) for b in blocks[: output_block + 1])
        self.resize_to = resize_to
        self.output_block = output_block
        self.feature_dim = self.FEATURE_DIMS[output_block]
        self.resize_note = (
            f"bilinear to {resize_to}x{resize_to} inside the network (pytorch-fid, align_corners=False, no antialias)"
            if resize_to
            else "none (native size into the network)"
        )
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.resize_to:
            x = F.interpolate(x, size=(self.resize_to, self.resize_to), mode="bilinear", align_corners=False)
        x = 2.0 * x - 1.0
        for block in self.blocks:
            x = block(x)
        return [x]


def default_inception_weights_path() -> Path:
    """Where torch hub (and so pytorch-fid) keeps the FID Inception weights: ``<hub dir>/checkpoints/<file>``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / INCEPTION_FILE


def resolve_inception_weights(weights_path: str | os.PathLike | None = None) -> Path:
    """The explicit path if given (must exist), else the torch hub cache file; never downloads."""
    if weights_path is not None:
        p = Path(weights_path).expanduser()
        if not p.exists():
            raise UserError(f"{p}: Inception weights file (--inception-weights) not found")
        if p.is_dir():
            raise UserError(f"{p}: Inception weights path is a folder, expected {INCEPTION_FILE}")
        return p
    p = default_inception_weights_path()
    if p.is_file():
        return p
    raise UserError(
        f"FID Inception weights not found: put {INCEPTION_FILE} (from {INCEPTION_URL}) at {p} "
        "or pass --inception-weights PATH (ebmtool never downloads weights)"
    )


def load_inception_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    p = Path(path)
    try:
        sd = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / zip / weights_only errors come in several types
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{p}: not a readable PyTorch state dict ({msg[:200]})") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{p}: does not hold a state dict (a mapping of names to tensors)")
    return sd


class InceptionExtractor(FeatureExtractor):
    """pytorch-fid's FID InceptionV3, 2048-d pool3 features (images resized to 299 inside the network).

    Weights: ``weights_path`` (``--inception-weights``), else ``<torch hub dir>/checkpoints/`` +
    :data:`INCEPTION_FILE`; a missing file is a one-line :class:`UserError` saying where to put it.
    ``model`` injects any module mapping [0, 1] images N×3×H×W to N×D features (a tensor or a list whose last
    entry is used; spatial maps are average-pooled), e.g. a randomly initialised :class:`FIDInceptionV3` in
    tests; then no weights file is read.
    """

    def __init__(
        self,
        weights_path: str | os.PathLike | None = None,
        model: nn.Module | Callable[[torch.Tensor], Any] | None = None,
        device: str | torch.device = "cpu",
        name: str | None = None,
    ):
        super().__init__()
        self.device = torch.device(device)
        if model is not None:
            self.model = model
            digest = _module_digest(model)
            self.name = name or f"injected {type(model).__name__}"
            self.weights = f"in-memory model (parameters sha256 {digest[:12]})"
            self.resize = str(getattr(model, "resize_note", "as the injected model does"))
            self.feature_dim = getattr(model, "feature_dim", None)
            self._id = f"model-{digest[:16]}"
        else:
            path = resolve_inception_weights(weights_path)
            sha = artifacts.file_sha256(path)
            sd = load_inception_state_dict(path)
            try:
                self.model = FIDInceptionV3(sd, output_block=3, resize_to=299)
            except RuntimeError as e:
                first = str(e).splitlines()[0] if str(e) else "state dict mismatch"
                raise UserError(
                    f"{path}: does not hold pytorch-fid's FID InceptionV3 weights ({first[:200]})"
                ) from None
            self.name = "pytorch-fid InceptionV3 pool3"
            self.weights = f"{path.name} (sha256 {sha[:12]})"
            if not sha.startswith(INCEPTION_SHA256_PREFIX):
                self.weights += " NOT the pytorch-fid release file"
                self.warnings.append(
                    f"{path}: sha256 {sha[:12]}... differs from pytorch-fid's release ({INCEPTION_SHA256_PREFIX}...); "
                    "scores are not comparable with published FIDs"
                )
            self.resize = self.model.resize_note + ", grey repeated to RGB"
            self.feature_dim = 2048
            self._id = f"inception-pool3-{sha[:12]}-r299"
        if isinstance(self.model, nn.Module):
            self.model.eval().to(self.device)

    @property
    def id(self) -> str:
        return self._id

    def forward_features(self, x: torch.Tensor) -> Any:
        return self.model(x)


def _module_digest(model: Any) -> str:
    """sha256 of a module's state dict (names, shapes, dtypes, values); of its repr for plain callables."""
    if isinstance(model, nn.Module):
        sd = model.state_dict()
        names = json.dumps([[k, list(v.shape), str(v.dtype)] for k, v in sd.items()]).encode()
        values = artifacts.tensor_sha256(*(v.reshape(-1) for v in sd.values()))  # reshape: 0-d buffers
        return hashlib.sha256(names + values.encode()).hexdigest()
    return hashlib.sha256(repr(model).encode()).hexdigest()


class ClassifierExtractor(FeatureExtractor):
    """Pooled last-conv features of a classifier trained by :func:`train_features` (a "features" artifact).

    A cheap, domain-specific feature space for CPU-scale comparisons (e.g. 8×8 digits, MNIST); no resizing,
    so images must have the classifier's training shape C×H×W. Scores are not comparable with Inception FID.
    """

    def __init__(self, features_artifact_path: str | os.PathLike, device: str | torch.device = "cpu"):
        super().__init__()
        self.device = torch.device(device)
        art = artifacts.load(features_artifact_path, kind="features", what="features")
        p = art.path
        meta = art.meta
        try:
            feature_dim = int(meta["feature_dim"])
            image_shape = tuple(int(s) for s in meta["image_shape"])
            classes = list(meta["classes"])
            arch = str(meta.get("arch", "convpool"))  # artifacts written before the LeNet default have no arch
            widths = [int(w) for w in meta.get("widths", ARCHS.get(arch, ARCHS["convpool"]))]
            accuracy = float(meta.get("accuracy", float("nan")))
        except (KeyError, TypeError, ValueError) as e:
            raise UserError(f"{p}: features artifact metadata is incomplete or malformed "
                            f"({type(e).__name__}: {e})") from None
        if len(image_shape) != 3 or len(classes) < 2 or not widths or widths[-1] != feature_dim:
            raise UserError(f"{p}: features artifact metadata is inconsistent (image_shape, classes, feature_dim)")
        sd = art.group("classifier")
        if not sd:
            raise UserError(f"{p}: features artifact lacks classifier.* tensors")
        try:
            net = build_classifier(arch, len(classes), widths, image_shape)
        except ValueError as e:
            raise UserError(f"{p}: features artifact metadata is inconsistent ({e})") from None
        try:
            net.load_state_dict(sd)
        except RuntimeError as e:
            first = str(e).splitlines()[0] if str(e) else "state dict mismatch"
            raise UserError(f"{p}: classifier tensors do not match its metadata ({first[:200]})") from None
        self.model = net.eval().to(self.device)
        self.path = p
        self.image_shape = image_shape
        self.accuracy = accuracy
        sha = art.sha256
        self.name = f"classifier features ({feature_dim}-d pooled last conv)"
        self.weights = f"{p.name} (sha256 {sha[:12]}, held-out accuracy {accuracy:.3f})"
        if not accuracy >= WEAK_CLASSIFIER_ACCURACY:  # NaN (not recorded) warns too
            self.warnings.append(f"the feature classifier {p.name} has held-out accuracy {accuracy:.3f} < "
                                 f"{WEAK_CLASSIFIER_ACCURACY}: a weak feature space, FIDs in it say little "
                                 "(retrain it with `ebmtool train-features`)")
        self.resize = f"none (native {_shape_str(image_shape[1:])}, the classifier's training size)"
        self.feature_dim = feature_dim
        self._id = f"classifier{feature_dim}-{sha[:16]}"

    @property
    def id(self) -> str:
        return self._id

    def check_image_shape(self, shape: Sequence[int], what: str) -> None:
        if tuple(int(s) for s in shape) != self.image_shape:
            raise UserError(
                f"{what}: images are {_shape_str(shape)} but the feature classifier {self.path.name} was trained on "
                f"{_shape_str(self.image_shape)} (the classifier feature space does not resize)"
            )

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.features(x)
