"""Loaders. Each returns (images uint8 N x C x H x W, labels int64 N, extra tensors dict, source note), and
the file sources (``folder``, ``array``: :mod:`ebmtool.data.files`) also the class names, each image's path
relative to the root and the files skipped as unreadable (:class:`Loaded`).

Real datasets go through torchvision's dataset classes reading the standard files from ``--root``
(``--download`` is passed through for machines with internet). ``digits`` is scikit-learn's bundled 8x8 set
and ``synthetic`` a fixed random generator applied to a known latent mixture (8 Gaussians on a ring).
Security: torchvision's CIFAR-10 loader unpickles its batch files; it only reads a folder the user names.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import math
import sys
import zlib
from pathlib import Path
from typing import Callable, Iterator, NamedTuple, Optional

import numpy as np
import torch

from ebmtool import progress as bars
from ebmtool.data import files
from ebmtool.errors import UserError
from ebmtool.images import to_uint8


class Loaded(NamedTuple):
    """What a loader returns: images (N, C, H, W) uint8, labels (N,) int64 (-1: unlabelled), extra per-image
    tensors, a one-line note on the source; file sources also: class names (label k is ``class_names[k]``), each
    image's path relative to ``--root``, and [(path, reason)] of the unreadable files skipped."""

    images: torch.Tensor
    labels: torch.Tensor
    extra: dict[str, torch.Tensor]
    note: str
    class_names: Optional[list[str]] = None
    paths: Optional[list[str]] = None
    skipped: list[tuple[str, str]] = []
# every loader is called as load(root, split, download, show): show = progress on stderr (not --quiet); the file
# sources (FILE_SOURCES) take the file options as well: load(root, split, download, show, opts=FileOptions(...))


@contextlib.contextmanager
def _torchvision_output(show: bool) -> Iterator[None]:
    """torchvision's download and extraction messages: on stderr (stdout is kept for --json), or nowhere when
    ``show`` is False (--quiet)."""
    sink = sys.stderr if show else io.StringIO()
    with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
        yield


def _need_root(root: str | None, name: str) -> Path:
    if root is None:
        raise UserError(f"--root: dataset {name} needs the folder that holds its files")
    p = Path(root)
    if not p.is_dir():
        raise UserError(f"--root: folder {p} does not exist")
    return p


def _to_nchw_uint8(x: np.ndarray | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(np.asarray(x))
    if t.ndim == 3:
        t = t.unsqueeze(1)
    return t.to(torch.uint8).contiguous()


def load_digits(root, split, download, show=False) -> Loaded:
    from sklearn.datasets import load_digits as sk_digits

    if split != "train":  # refused, not ignored: a "test" artifact identical to the training one would leak
        raise UserError(f"--split {split}: scikit-learn's digits have a single split (train); hold images out with "
                        "--anomaly-protocol K --part train|test, --exclude-class or --only-class")
    d = sk_digits()
    # values 0..16 -> 0..255
    images = torch.from_numpy(np.round(d.images * (255.0 / 16.0)).astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target.astype(np.int64))
    return Loaded(images, labels, {}, "scikit-learn load_digits (UCI optical digits, 1797 images, 8x8; one split)")


MNIST_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def mnist_file(root: Path, name: str) -> Path | None:
    """Where MNIST's file ``name`` is under ``root``: directly or in torchvision's layout (ROOT/MNIST/raw), each
    optionally .gz; None when it is in neither."""
    r = Path(root)
    cands = [r / name, r / (name + ".gz"), r / "MNIST" / "raw" / name, r / "MNIST" / "raw" / (name + ".gz")]
    return next((c for c in cands if c.exists()), None)


IDX_UBYTE = 0x08  # the IDX element type of MNIST's four files (unsigned byte)


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format; ``.gz`` read through gzip) as a uint8 array of its declared shape.

    Format: two zero bytes, the element type (0x08: unsigned byte), the number of dimensions d, then d big-endian
    uint32 sizes and the data. The same arrays as torchvision's ``read_image_file``/``read_label_file``
    (tests/test_data.py checks it on MNIST's own files), without importing torchvision: that import costs ~3 s of
    CPU (it loads torch._dynamo), more than reading the 10,000 test images. ``--download`` still uses torchvision.
    """
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:  # zlib.error: corrupt deflate data inside a .gz
        raise UserError(f"{path}: cannot read MNIST file ({e})") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != IDX_UBYTE or not 1 <= raw[3] <= 4:
        raise UserError(f"{path}: not a valid IDX file of unsigned bytes (magic {raw[:4].hex() or 'missing'})")
    ndim = raw[3]
    head = 4 + 4 * ndim
    if len(raw) < head:
        raise UserError(f"{path}: not a valid IDX file (truncated header)")
    shape = tuple(int(v) for v in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    if len(raw) - head != math.prod(shape):
        raise UserError(f"{path}: not a valid IDX file ({len(raw) - head} data bytes for shape {shape})")
    return np.frombuffer(raw, dtype=np.uint8, offset=head).reshape(shape).copy()


def load_mnist(root, split, download, show=False) -> Loaded:
    """MNIST's IDX files of the split, found in torchvision's layout (ROOT/MNIST/raw/...) or directly in ROOT, each
    optionally .gz, read by :func:`read_idx`. Only one split needs to be present (the shared test set);
    torchvision's MNIST class (which insists on all four files) is used only for ``--download``."""
    if download:
        from torchvision.datasets import MNIST

        with _torchvision_output(show):
            ds = MNIST(str(root or "."), train=split == "train", download=True)
        return Loaded(_to_nchw_uint8(ds.data), ds.targets.long(), {}, f"torchvision MNIST ({split}) from {root}")
    r = _need_root(root, "mnist")
    names = MNIST_FILES[split]
    found = []
    for n in names:
        hit = mnist_file(r, n)
        if hit is None:
            raise UserError(f"--root: no MNIST {split} file {n}[.gz] in {r} (nor in {r / 'MNIST' / 'raw'}); "
                            "pass --download on a machine with internet")
        found.append(hit)
    data, targets = (read_idx(p) for p in found)
    if data.ndim != 3 or targets.ndim != 1 or len(data) != len(targets):
        raise UserError(f"--root: MNIST files in {r} disagree ({tuple(data.shape)} images, {len(targets)} labels)")
    if len(data) == 0:
        raise UserError(f"--root: the MNIST {split} files in {r} hold no images")
    if targets.max() > 9:  # (uint8: never below 0) a damaged or foreign label file, not MNIST's digits
        bad = int(np.argmax(targets > 9))
        raise UserError(f"{found[1]}: label {int(targets[bad])} at image {bad}; MNIST labels are the digits 0..9")
    return Loaded(_to_nchw_uint8(torch.from_numpy(data)), torch.from_numpy(targets).long(), {},
                  f"MNIST IDX files ({split}) from {r}")


def load_svhn(root, split, download, show=False) -> Loaded:
    from torchvision.datasets import SVHN

    r = root if download else _need_root(root, "svhn")
    try:
        with _torchvision_output(show):
            ds = SVHN(str(r), split=split, download=download)
    except RuntimeError as e:
        raise UserError(f"--root: {e} (SVHN needs {split}_32x32.mat in {r}; pass --download online)") from None
    labels = torch.as_tensor(ds.labels).long()
    return Loaded(_to_nchw_uint8(ds.data), labels, {}, f"torchvision SVHN ({split}) from {r}")


def load_cifar10(root, split, download, show=False) -> Loaded:
    from torchvision.datasets import CIFAR10

    r = root if download else _need_root(root, "cifar10")
    try:
        with _torchvision_output(show):
            ds = CIFAR10(str(r), train=(split == "train"), download=download)
    except RuntimeError as e:
        raise UserError(f"--root: {e} (CIFAR-10 needs cifar-10-batches-py/ in {r}; pass --download online)") from None
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2)
    return Loaded(x.contiguous(), torch.as_tensor(ds.targets).long(), {}, f"torchvision CIFAR10 ({split}) from {r}")


def load_celeba(root, split, download, show=False) -> Loaded:
    """CelebA through torchvision (aligned images, 178x218); center-cropped to 140 then resized by --size
    (default 64) as in the latent-EBM papers."""
    from torchvision import transforms
    from torchvision.datasets import CelebA

    r = root if download else _need_root(root, "celeba")
    tf = transforms.Compose([transforms.CenterCrop(140), transforms.Resize(64), transforms.PILToTensor()])
    try:
        with _torchvision_output(show):
            ds = CelebA(str(r), split="valid" if split == "test" else "train", target_type=[], transform=tf,
                        download=download)
    except (RuntimeError, OSError) as e:
        raise UserError(f"--root: {e} (CelebA needs celeba/img_align_celeba and list files in {r})") from None
    imgs = torch.stack([ds[i][0] for i in bars.track(range(len(ds)), len(ds), "celeba (decode)", show)])
    return Loaded(imgs, torch.zeros(len(ds), dtype=torch.long, device="cpu"), {},
                  f"torchvision CelebA ({split}) from {r}")


# ----------------------------------------------------------------------------------------------------------
# synthetic: known latent mixture, known generator
# ----------------------------------------------------------------------------------------------------------
SYNTH_MODES = 8
SYNTH_RADIUS = 2.0
SYNTH_STD = 0.25
SYNTH_N = {"train": 2000, "test": 500}


def ring_means(modes: int = SYNTH_MODES, radius: float = SYNTH_RADIUS) -> torch.Tensor:
    ang = torch.arange(modes, dtype=torch.float64, device="cpu") * (2 * math.pi / modes)
    return torch.stack([radius * torch.cos(ang), radius * torch.sin(ang)], 1).float()


def ring_log_density(z: torch.Tensor, modes: int = SYNTH_MODES, radius: float = SYNTH_RADIUS,
                     std: float = SYNTH_STD) -> torch.Tensor:
    """Exact normalised log-density of the 8-Gaussian ring mixture at z (B, 2)."""
    mu = ring_means(modes, radius).to(z)
    d2 = (z[:, None, :] - mu[None]).pow(2).sum(-1)
    comp = -d2 / (2 * std**2) - math.log(2 * math.pi * std**2)
    return torch.logsumexp(comp, 1) - math.log(modes)


def synthetic_generator() -> Callable[[torch.Tensor], torch.Tensor]:
    """The fixed 'true' generator z (B, 2) -> x (B, 1, 8, 8) in [-1, 1]: a seeded random 2-layer MLP."""
    g = torch.Generator(device="cpu").manual_seed(1234)
    w1 = torch.randn(2, 32, generator=g, device="cpu")
    b1 = 0.5 * torch.randn(32, generator=g, device="cpu")
    w2 = torch.randn(32, 64, generator=g, device="cpu") / math.sqrt(32)

    def gen(z: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(z @ w1.to(z) + b1.to(z))
        return torch.tanh(1.5 * h @ w2.to(z)).reshape(-1, 1, 8, 8)

    return gen


def load_synthetic(root, split, download, show=False) -> Loaded:
    g = torch.Generator(device="cpu").manual_seed(0 if split == "train" else 1)
    n = SYNTH_N[split]
    labels = torch.randint(0, SYNTH_MODES, (n,), generator=g, device="cpu")
    z = ring_means()[labels] + SYNTH_STD * torch.randn(n, 2, generator=g, device="cpu")
    x = synthetic_generator()(z) + 0.05 * torch.randn(n, 1, 8, 8, generator=g, device="cpu")
    images = to_uint8(x)
    note = (f"synthetic: z ~ {SYNTH_MODES} Gaussians on a ring (radius {SYNTH_RADIUS}, std {SYNTH_STD}) in 2-D, "
            "x = fixed random MLP g*(z) + N(0, 0.05^2), 1x8x8")
    return Loaded(images, labels.long(), {"latents": z}, note)


def load_folder(root, split, download, show=False, opts: files.FileOptions = files.FileOptions()) -> Loaded:
    """A folder of images, class folders or flat (:func:`ebmtool.data.files.load_folder`)."""
    if root is None:
        raise UserError("--root: --dataset folder needs the folder that holds the images")
    f = files.load_folder(root, split, download, show, opts)
    return Loaded(f.images, f.labels, {}, f.note, f.class_names, f.paths, f.skipped)


def load_array(root, split, download, show=False, opts: files.FileOptions = files.FileOptions()) -> Loaded:
    """An .npz/.npy array file (:func:`ebmtool.data.files.load_array`)."""
    f = files.load_array(root, split, download, show, opts)
    return Loaded(f.images, f.labels, {}, f.note, f.class_names, f.paths, f.skipped)


FILE_SOURCES = ("folder", "array")  # the user's own files: they take FileOptions, no --download
SOURCES: dict[str, Callable[..., Loaded]] = {
    "digits": load_digits,
    "mnist": load_mnist,
    "svhn": load_svhn,
    "cifar10": load_cifar10,
    "celeba": load_celeba,
    "synthetic": load_synthetic,
    "folder": load_folder,
    "array": load_array,
}
