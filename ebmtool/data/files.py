"""The user's own images: a folder of image files or an array file, read into uint8 images N x C x H x W.

* ``folder``: ``ROOT/<class>/**/*.png`` (torchvision's ``ImageFolder`` layout: labels are the indices of the sorted
  class-folder names) or a flat folder of images (unlabelled: every label is -1). PNG, JPEG, BMP and WebP, decoded
  by PIL in grey (L, 1, LA, 16-bit I;16: one channel) or colour (RGB, RGBA, palette P/PA, CMYK: three channels;
  alpha is dropped, as ``ImageFolder``'s ``convert("RGB")`` drops it). A folder of grey images gives 1 channel, any
  colour image makes it 3 (``--channels`` fixes it). Files are decoded by a pool of threads (PIL releases the GIL
  while it decodes) straight into the preallocated output, in file order, with a progress bar.
* ``array``: a ``.npy`` (images) or ``.npz`` (keys ``images`` and optionally ``labels``, ``class_names``) holding
  N x H x W, N x H x W x C or N x C x H x W images: uint8, or any other number type with a stated ``--value-range``.

Every image is brought to one size by :func:`ebmtool.images.resize_center` (``--size``: the shorter side to S,
then the centre crop) and to one channel count by :func:`ebmtool.images.to_channels`, the functions ``data
prepare`` applies to every source.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from ebmtool import progress as bars
from ebmtool.errors import UserError
from ebmtool.images import resize_center, to_channels

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
GREY_MODES = ("1", "L", "LA", "I;16", "I;16B", "I;16L", "I;16N")
ARRAY_KEYS = ("images", "labels", "class_names")
LAYOUTS = ("nhwc", "nchw", "nhw")
VALUE_RANGES = {"0,1": (0.0, 1.0), "-1,1": (-1.0, 1.0), "0,255": (0.0, 255.0)}
MAX_SIDE = 8192  # a larger image is refused rather than decoded (PIL's own bomb limit is ~89 Mpx)


@dataclass(frozen=True)
class FileOptions:
    """What ``data prepare`` asks of a file source: ``size`` (the side after :func:`resize_center`), ``channels``
    (1 or 3), ``layout`` and ``value_range`` (array files), ``skip_bad`` (folders: skip unreadable images),
    ``workers`` (decoding threads; 0: torch's thread count, i.e. ``--threads``)."""

    size: Optional[int] = None
    channels: Optional[int] = None
    layout: Optional[str] = None
    value_range: Optional[str] = None
    skip_bad: bool = False
    workers: int = 0


@dataclass
class FileImages:
    """What a file source read: images (N, C, H, W) uint8, labels (N,) int64 (-1: unlabelled), the class names
    (label k is ``class_names[k]``; None without names), each image's path relative to the root (None for arrays),
    the files skipped as unreadable [(path, reason)], and a one-line description of the source."""

    images: torch.Tensor
    labels: torch.Tensor
    class_names: Optional[list[str]]
    paths: Optional[list[str]]
    skipped: list[tuple[str, str]]
    note: str


def _only_train(split: str, what: str) -> None:
    if split != "train":
        raise UserError(f"--split {split}: {what} is one set of images (--split train); hold images out with "
                        "--anomaly-protocol K --part fit|calibration|test, --exclude-class or --only-class")


# ----------------------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------------------
def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_SUFFIXES) and not name.startswith(".")


def _images_under(d: str, others: list[str]) -> list[str]:
    """The image files below folder ``d`` (any depth, hidden files and folders left out), sorted, as paths; the
    other files found are appended to ``others``."""
    out = []
    for top, dirs, names in os.walk(d, followlinks=True):
        dirs[:] = [x for x in dirs if not x.startswith(".")]
        out += [os.path.join(top, n) for n in names if _is_image(n)]
        others += [os.path.join(top, n) for n in names if not _is_image(n) and not n.startswith(".")]
    return sorted(out)


def list_folder(root: Path, others: Optional[list[str]] = None) -> tuple[list[str], list[int], Optional[list[str]]]:
    """The image files of a folder in the order they are read, their labels and the class names; the paths of
    the files that are not images (hidden ones aside) are appended to ``others``.

    Class layout (``ROOT/<class>/...``, any depth below the class folder): labels index the sorted class names.
    Flat layout (images directly in ROOT, no class folder holds any): labels -1, class names None."""
    others = [] if others is None else others
    if not root.is_dir():
        raise UserError(f"--root: folder {root} does not exist" if not root.exists() else
                        f"--root: {root} is a file; --dataset folder reads a folder (an .npz/.npy: --dataset array)")
    with os.scandir(root) as it:
        entries = sorted(it, key=lambda e: e.name)
    top = [e.path for e in entries if _is_image(e.name) and e.is_file()]
    others += [e.path for e in entries if not _is_image(e.name) and not e.name.startswith(".") and e.is_file()]
    dirs = [e for e in entries if e.is_dir() and not e.name.startswith(".")]
    per_class = {e.name: _images_under(e.path, others) for e in dirs}
    per_class = {k: v for k, v in per_class.items() if v} if top else per_class
    if top and per_class:
        raise UserError(f"--root: {root} holds images ({os.path.basename(top[0])}, ...) beside class folders "
                        f"({', '.join(sorted(per_class)[:3])}/): put every image in a class folder, or use a flat "
                        "folder")
    if top:
        return top, [-1] * len(top), None
    if not any(per_class.values()):
        raise UserError(f"--root: {root} holds no images ({', '.join(IMAGE_SUFFIXES)}), neither directly nor in "
                        "class folders")
    empty = [k for k, v in per_class.items() if not v]
    if empty:
        raise UserError(f"--root: class folder {root / empty[0]} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                        "remove it or add its images")
    names = sorted(per_class)
    files = [p for k in names for p in per_class[k]]
    labels = [i for i, k in enumerate(names) for _ in per_class[k]]
    return files, labels, names


class _BadImage(Exception):
    """An image file that cannot be decoded (named in the one-line error, or skipped under --skip-bad)."""


def decode(path: str, channels: Optional[int]) -> np.ndarray:
    """One image file as uint8 (C, H, W): C = ``channels`` if given, else 1 for grey modes and 3 for colour ones.
    Raises _BadImage with the decoder's reason."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if max(im.size) > MAX_SIDE:
                raise _BadImage(f"{im.size[0]}x{im.size[1]} pixels, more than {MAX_SIDE} on a side")
            mode = im.mode
            c = channels or (1 if mode in GREY_MODES else 3)
            if mode.startswith("I;16"):  # 16-bit grey: the top 8 bits
                a = (np.asarray(im).astype(np.uint16) >> 8).astype(np.uint8)[None]
                arr = np.repeat(a, c, 0) if c == 3 else a
            elif mode in ("I", "F"):
                raise _BadImage(f"32-bit image mode {mode} (save it with 8 or 16 bits per channel)")
            else:
                a = np.asarray(im.convert("L" if c == 1 else "RGB"))
                arr = a[None] if c == 1 else a.transpose(2, 0, 1)
    except _BadImage:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, DecompressionBombError...
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise _BadImage(msg) from None
    return arr


def _resized(arrs: dict[int, np.ndarray], size: Optional[int]) -> dict[int, np.ndarray]:
    """Images {index: (C, H, W)} brought to ``size`` by :func:`resize_center`, one batch per shape (None: as
    they are)."""
    if size is None:
        return arrs
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, a in arrs.items():
        groups.setdefault(a.shape, []).append(i)
    out: dict[int, np.ndarray] = {}
    for ids in groups.values():
        x = resize_center(torch.from_numpy(np.stack([arrs[i] for i in ids])), size).numpy()
        out.update(zip(ids, x))
    return out


def load_folder(root, split, download, show=False, opts: FileOptions = FileOptions()) -> FileImages:
    """Decode a folder (see the module docstring) in parallel, in file order, into one preallocated tensor."""
    _only_train(split, "a folder")
    r = Path(root)
    others: list[str] = []
    files, labels, names = list_folder(r, others)
    n = len(files)
    cut = len(os.path.join(str(r), ""))  # every listed path is ROOT/...: its path relative to the root
    rel = [p[cut:].replace(os.sep, "/") for p in files]
    bad: dict[int, str] = {}
    # the first readable image fixes the size (without --size) and, without --channels, the channels to start from
    first = 0
    while True:
        try:
            arr0 = _resized({0: decode(files[first], opts.channels)}, opts.size)[0]
            break
        except _BadImage as e:
            if not opts.skip_bad:
                raise UserError(f"{files[first]}: cannot read image ({e}); pass --skip-bad to skip unreadable "
                                "files") from None
            bad[first] = str(e)
            first += 1
            if first == n:
                raise UserError(f"--root: none of the {n} images in {r} can be read (first: {rel[0]}: "
                                f"{bad[0]})") from None
    c0, h0, w0 = arr0.shape
    out = np.empty((n, c0, h0, w0), dtype=np.uint8)  # the output, preallocated: workers write their rows into it
    out[first] = arr0
    colour: dict[int, np.ndarray] = {}  # colour images met while the output is grey (channels not fixed)
    wrong_size: dict[int, tuple[int, int]] = {}
    stop = threading.Event()

    def work(lo: int, hi: int) -> int:
        got = {}
        for i in range(lo, hi):
            if stop.is_set():
                return hi - lo
            try:
                got[i] = decode(files[i], opts.channels)
            except _BadImage as e:
                bad[i] = str(e)
                if not opts.skip_bad:
                    stop.set()
        for i, a in _resized(got, opts.size).items():
            if a.shape[1:] != (h0, w0):
                wrong_size[i] = (a.shape[2], a.shape[1])
                stop.set()
            elif a.shape[0] == c0:
                out[i] = a
            elif a.shape[0] == 3:  # colour in a grey output: kept aside, the output becomes RGB at the end
                colour[i] = a
            else:  # a grey image in a colour output
                out[i] = np.repeat(a, 3, 0)
        return hi - lo

    workers = opts.workers or max(1, torch.get_num_threads())
    step = max(16, min(256, n // (8 * workers) or 16))
    spans = [(lo, min(n, lo + step)) for lo in range(first + 1, n, step)]
    with bars.bar(f"decode {r.name or r}", n, show) as b, ThreadPoolExecutor(workers) as pool:
        b.advance(first + 1)
        for fut in as_completed([pool.submit(work, lo, hi) for lo, hi in spans]):
            b.advance(fut.result())
    if wrong_size:
        i = min(wrong_size)
        raise UserError(f"--root: images differ in size ({rel[first]} is {w0}x{h0}, {rel[i]} is "
                        f"{wrong_size[i][0]}x{wrong_size[i][1]}); pass --size S to bring each to S x S (the shorter "
                        "side to S, then the centre crop)")
    if bad and not opts.skip_bad:
        i = min(bad)
        raise UserError(f"{files[i]}: cannot read image ({bad[i]}); pass --skip-bad to skip unreadable files")
    images = torch.from_numpy(out)
    if colour:
        images = to_channels(images, 3)
        for i, a in colour.items():
            images[i] = torch.tensor(a, device="cpu")
    keep = [i for i in range(n) if i not in bad]
    if len(keep) < n:
        if not keep:
            raise UserError(f"--root: none of the {n} images in {r} can be read (first: {rel[0]}: {bad[0]})")
        images = images[torch.tensor(keep, device="cpu")]
    label_t = torch.tensor([labels[i] for i in keep], dtype=torch.long, device="cpu")
    layout = f"{len(names)} class folders" if names else "flat, unlabelled"
    note = (f"folder {r} ({layout}; {len(keep)} images"
            + (f", {len(bad)} unreadable skipped" if bad else "")
            + (f"; {len(others)} file(s) that are not {'/'.join(IMAGE_SUFFIXES)} left out, e.g. "
               f"{others[0][cut:]}" if others else "") + ")")
    return FileImages(images.contiguous(), label_t, names, [rel[i] for i in keep],
                      [(rel[i], bad[i]) for i in sorted(bad)], note)


# ----------------------------------------------------------------------------------------------------------
# array files
# ----------------------------------------------------------------------------------------------------------
def array_layout(shape: tuple[int, ...], layout: Optional[str], where: str) -> str:
    """The layout of an image array of ``shape``: ``layout`` if given (checked against the number of dimensions),
    else read from the shape; a shape that two layouts fit is refused, naming ``--layout``."""
    dims = "x".join(map(str, shape))
    if layout is not None:
        if layout not in LAYOUTS:
            raise UserError(f"--layout {layout}: choose nhwc, nchw or nhw")
        if (layout == "nhw") != (len(shape) == 3):
            raise UserError(f"--layout {layout}: {where} holds {len(shape)}-D images ({dims}); "
                            f"{layout} needs {'3' if layout == 'nhw' else '4'} dimensions")
        return layout
    if len(shape) == 3:
        if shape[2] in (3, 4) and shape[1] != shape[2]:
            raise UserError(f"{where}: shape {dims} is N x H x W, or one H x W x C image: pass --layout nhw (N "
                            "images), or save a batch as N x H x W x C")
        return "nhw"
    if len(shape) != 4:
        raise UserError(f"{where}: images of shape {dims}; expected N x H x W, N x H x W x C or N x C x H x W")
    last, second = shape[3] in (1, 3, 4), shape[1] in (1, 3, 4)
    if last != second:
        return "nhwc" if last else "nchw"
    raise UserError(f"{where}: shape {dims} could be N x H x W x C or N x C x H x W: pass --layout nhwc or "
                    "--layout nchw" if last else f"{where}: shape {dims} has no channel axis of size 1, 3 or 4 "
                    "(grey, RGB or RGBA); expected N x H x W, N x H x W x C or N x C x H x W")


def _to_uint8(x: np.ndarray, value_range: Optional[str], where: str) -> np.ndarray:
    """Images of any number type as uint8: uint8 as they are, others mapped linearly from ``value_range``."""
    if x.dtype == np.uint8:
        if value_range not in (None, "0,255"):
            raise UserError(f"--value-range {value_range}: {where} holds uint8 images (0..255); drop --value-range")
        return x
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise UserError(f"{where}: images of type {x.dtype}; expected uint8, or numbers with --value-range")
    lo_x, hi_x = (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)
    if not (np.isfinite(lo_x) and np.isfinite(hi_x)):
        raise UserError(f"{where}: images hold NaN or infinite values")
    if value_range is None:
        raise UserError(f"{where}: images are {x.dtype} in [{lo_x:.4g}, {hi_x:.4g}]; say which range they use: "
                        "--value-range 0,1 | -1,1 | 0,255 (or save them as uint8)")
    if value_range not in VALUE_RANGES:
        raise UserError(f"--value-range {value_range}: choose 0,1 or -1,1 or 0,255")
    lo, hi = VALUE_RANGES[value_range]
    tol = 1e-4 * (hi - lo)
    if lo_x < lo - tol or hi_x > hi + tol:
        raise UserError(f"{where}: images lie in [{lo_x:.4g}, {hi_x:.4g}], outside --value-range {value_range}")
    out = np.empty(x.shape, dtype=np.uint8)
    for i in range(0, len(x), 4096):  # in slices: float64 temporaries stay small
        v = (np.asarray(x[i: i + 4096], dtype=np.float64) - lo) * (255.0 / (hi - lo))
        out[i: i + 4096] = np.clip(np.rint(v), 0, 255)
    return out


def _read_array_file(p: Path) -> dict[str, np.ndarray]:
    try:
        if p.suffix.lower() == ".npy":
            return {"images": np.load(p, mmap_mode="r", allow_pickle=False)}
        with np.load(p, allow_pickle=False) as z:
            keys = list(z.files)
            if "images" not in keys or set(keys) - set(ARRAY_KEYS):
                raise UserError(f"{p}: holds the keys {', '.join(keys) or '(none)'}; expected 'images' (N x H x W, "
                                "N x H x W x C or N x C x H x W) and optionally 'labels' (N integers) and "
                                "'class_names' (one string per class)")
            return {k: z[k] for k in keys}
    except UserError:
        raise
    except ValueError as e:
        if "allow_pickle" in str(e):
            raise UserError(f"{p}: holds Python objects (pickled); save numeric arrays with numpy.savez") from None
        raise UserError(f"{p}: not a readable NumPy file ({str(e).splitlines()[0]})") from None
    except Exception as e:  # noqa: BLE001 - zipfile, OSError, EOFError on a damaged file
        raise UserError(f"{p}: not a readable NumPy file ({str(e).splitlines()[0] or type(e).__name__})") from None


def load_array(root, split, download, show=False, opts: FileOptions = FileOptions()) -> FileImages:
    """Read an .npy/.npz array file (see the module docstring): images as uint8 (N, C, H, W), labels, names."""
    _only_train(split, "an array file")
    if root is None:
        raise UserError("--root: --dataset array needs the .npz or .npy file")
    p = Path(root)
    if p.is_dir():
        raise UserError(f"--root: {p} is a folder; --dataset array reads an .npz or .npy file (a folder of "
                        "images: --dataset folder)")
    if not p.is_file():
        raise UserError(f"--root: file {p} does not exist")
    if p.suffix.lower() not in (".npz", ".npy"):
        raise UserError(f"--root: {p} is not an .npz or .npy file")
    d = _read_array_file(p)
    x = d["images"]
    layout = array_layout(tuple(x.shape), opts.layout, str(p))
    if len(x) == 0:
        raise UserError(f"{p}: holds no images")
    x = _to_uint8(x, opts.value_range, str(p))
    if not x.flags.writeable or not x.flags.c_contiguous:  # a memory-mapped .npy: read it in once
        x = np.array(x, order="C")
    t = torch.from_numpy(x)
    t = {"nhw": lambda v: v[:, None], "nhwc": lambda v: v.permute(0, 3, 1, 2), "nchw": lambda v: v}[layout](t)
    if t.shape[1] not in (1, 3, 4):
        raise UserError(f"{p}: images have {t.shape[1]} channels (layout {layout}); expected 1, 3 or 4")
    t = to_channels(t, opts.channels or (1 if t.shape[1] == 1 else 3))
    if opts.size is not None:
        t = torch.cat([resize_center(t[i: i + 4096], opts.size) for i in range(0, len(t), 4096)])
    labels, names = _array_labels(d, len(t), p)
    note = f"array file {p} ({layout}, {x.dtype}" + (f", range {opts.value_range}" if opts.value_range else "") + ")"
    return FileImages(t.contiguous(), labels, names, None, [], note)


def _array_labels(d: dict[str, Any], n: int, p: Path) -> tuple[torch.Tensor, Optional[list[str]]]:
    names = None
    if "class_names" in d:
        cn = d["class_names"]
        if cn.ndim != 1 or not np.issubdtype(cn.dtype, np.str_):
            raise UserError(f"{p}: 'class_names' must be a 1-D array of strings (numpy.array(['cat', 'dog']))")
        names = [str(s) for s in cn]
    if "labels" not in d:
        if names is not None:
            raise UserError(f"{p}: 'class_names' without 'labels'; give each image's class index in 'labels'")
        return torch.full((n,), -1, dtype=torch.long, device="cpu"), None
    y = d["labels"]
    if y.ndim != 1 or len(y) != n or not np.issubdtype(y.dtype, np.integer):
        raise UserError(f"{p}: 'labels' must be {n} integers (one per image), got {y.dtype} of shape "
                        f"{'x'.join(map(str, y.shape))}")
    lab = torch.from_numpy(y.astype(np.int64))
    if len(lab) and int(lab.min()) < 0 and not bool((lab == -1).all()):
        raise UserError(f"{p}: 'labels' are class indices >= 0 (or all -1: unlabelled)")
    if names is not None and len(lab) and int(lab.max()) >= len(names):
        raise UserError(f"{p}: label {int(lab.max())} has no name ('class_names' holds {len(names)})")
    return lab, names

