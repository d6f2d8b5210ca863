"""Image helpers every stage shares: [-1, 1] floats to uint8, PNG grids upscaled to be judged by eye, and the one
resize (shorter side, centre crop) and channel conversion that ``data prepare --size/--channels`` applies."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
import torch.nn.functional as F

from ebmtool import artifacts
from ebmtool.config import check_options
from ebmtool.errors import UserError


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (clipped) -> uint8 in [0, 255], rounded to nearest."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


MIN_GRID_PX = 256  # short side of a saved grid when --scale is not given
MAX_GRID_PX = 16384  # longest side of a saved grid (docs/usage.md, "Limits"): --scale beyond it is refused up front
GRID_MAX_IMAGES = 256  # a grid draws the first 256 images


def check_grid_path(path: str, option: str = "--grid") -> None:
    """An image grid is a PNG: refuse any other extension (``sample --grid``, ``--trajectory-png``, ``reconstruct
    --grid`` and ``plot`` of images share this check), before any work."""
    if not str(path).lower().endswith(".png"):
        raise UserError(f"{option} {path}: an image grid is written as .png")


def grid_scale(short_side: int, scale: Optional[int] = None) -> int:
    """Integer nearest-neighbour factor: ``scale`` if given (>= 1), else the least one that makes the short side
    at least MIN_GRID_PX."""
    if scale is not None:
        check_options("cli", scale=scale)  # the one check of --scale (whole, at least 1)
        return int(scale)
    return max(1, -(-MIN_GRID_PX // max(1, short_side)))


def tile(images: torch.Tensor, nrow: int, padding: int = 1, pad_value: int = 128) -> torch.Tensor:
    """Images (N >= 1, C, H, W) tiled ``nrow`` to a row, ``padding`` pixels of ``pad_value`` around each:
    (C', H', W'), C' = 3 for grey input (one image: itself, unpadded). The layout of ``torchvision.utils.make_grid``
    for 4-D input (tests/test_plots.py checks it equals make_grid's output), here because importing torchvision
    costs ~3 s of CPU per command (it loads torch._dynamo), longer than drawing a demo's samples."""
    if images.dim() != 4 or len(images) == 0:
        raise ValueError(f"tile: expected images (N >= 1, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    n, c, h, w = images.shape
    if n == 1:  # make_grid returns a single image unpadded
        return images[0].clone()
    cols = min(nrow, n)
    rows = -(-n // cols)
    hp, wp = h + padding, w + padding
    g = torch.full((c, rows * hp + padding, cols * wp + padding), pad_value, dtype=images.dtype, device=images.device)
    for i in range(n):
        r, k = divmod(i, cols)
        g[:, r * hp + padding: (r + 1) * hp, k * wp + padding: (k + 1) * wp] = images[i]
    return g


def grid_size(n: int, image_shape, nrow: Optional[int] = None, scale: Optional[int] = None) -> tuple[int, int]:
    """(height, width) in pixels of the grid :func:`grid_image` draws of ``n`` images (at most 256 are drawn) of
    ``image_shape`` (C, H, W); refuses, in one line and before anything is drawn or sampled, a ``scale`` that makes a
    side longer than MAX_GRID_PX."""
    n = max(1, min(int(n), GRID_MAX_IMAGES))
    _, h, w = (int(v) for v in image_shape)
    nrow = nrow or max(1, math.ceil(math.sqrt(n)))
    if n == 1:
        gh, gw = h, w
    else:
        cols = min(nrow, n)
        gh, gw = -(-n // cols) * (h + 1) + 1, cols * (w + 1) + 1
    k = grid_scale(min(gh, gw), scale)
    if max(gh, gw) * k > MAX_GRID_PX:
        raise UserError(f"--scale {k}: the grid would be {gw * k:,} x {gh * k:,} pixels; at most {MAX_GRID_PX:,} "
                        f"a side (use --scale {max(1, MAX_GRID_PX // max(gh, gw))} or less)")
    return gh * k, gw * k


def grid_image(images_u8: torch.Tensor, nrow: Optional[int] = None, scale: Optional[int] = None) -> torch.Tensor:
    """The grid as a uint8 (C, H, W) tensor: ``nrow`` images per row (default: a square grid, ceil(sqrt(n))),
    upscaled by nearest neighbour by ``scale`` (default: enough for MIN_GRID_PX on the short side)."""
    grid_size(len(images_u8), images_u8.shape[1:], nrow, scale)  # refuses a grid too large to hold
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images_u8))))
    g = tile(images_u8, nrow)  # uint8 (C, H, W); C is 3 for grey input
    k = grid_scale(min(g.shape[1], g.shape[2]), scale)
    return g.repeat_interleave(k, 1).repeat_interleave(k, 2) if k > 1 else g


def save_grid(images_u8: torch.Tensor, path: str, nrow: Optional[int] = None, scale: Optional[int] = None,
              header: Optional[Sequence[str]] = None, force: bool = True) -> None:
    """PNG grid of the first 256 images (written atomically; see :func:`grid_picture`), large enough to judge by
    eye. ``force`` False: a file that reached ``path`` meanwhile (another run's) is kept and this write refused."""
    if len(images_u8) == 0:
        raise UserError(f"{path}: there are no images to draw")
    write_png(grid_picture(images_u8, nrow, scale, header), path, force)


def grid_picture(images_u8: torch.Tensor, nrow: Optional[int] = None, scale: Optional[int] = None,
                 header: Optional[Sequence[str]] = None):
    """The grid of the first 256 images (:func:`grid_image`) as a PIL image. ``header``: labels of the columns,
    repeated across the row (``["real", "recon"]`` for reconstruct's pairs), written in a strip above the grid."""
    from PIL import Image

    images_u8 = images_u8[:GRID_MAX_IMAGES]
    im = Image.fromarray(grid_image(images_u8, nrow, scale).permute(1, 2, 0).contiguous().numpy())
    if header:
        nrow = nrow or max(1, math.ceil(math.sqrt(len(images_u8))))
        im = _with_header(im, [header[j % len(header)] for j in range(min(nrow, len(images_u8)))],
                          im.width / (min(nrow, len(images_u8)) * (images_u8.shape[-1] + 1) + 1),
                          images_u8.shape[-1])
    return im


def write_png(g, path: str, force: bool = True) -> None:
    """A uint8 (C, H, W) tensor (:func:`grid_image`) or a PIL image (:func:`grid_picture`) as a PNG file, written
    atomically (``force`` False: exclusively, a file that reached ``path`` meanwhile is kept and this write
    refused)."""
    from PIL import Image

    im = Image.fromarray(g.permute(1, 2, 0).contiguous().numpy()) if isinstance(g, torch.Tensor) else g
    with artifacts.atomic_write(path, overwrite=force) as tmp:
        im.save(tmp, format="PNG")


def _with_header(im, labels: list[str], k: float, w: int):
    """``im`` with a strip on top naming each column (``labels``, one per column; the grid's columns are w + 1
    pixels apart at scale ``k``, after a 1-pixel border), in the largest font up to 14 px that fits a column."""
    from PIL import Image, ImageDraw, ImageFont

    col = k * (w + 1)
    size = 14
    while True:
        font = ImageFont.load_default(size=size)
        widths = [font.getlength(t) for t in labels]
        if max(widths) <= col - 2 or size <= 6:
            break
        size -= 1
    if max(widths) > col - 2:  # too narrow for the words: their first letters
        labels = [t[:1] for t in labels]
    strip = size + 6
    out = Image.new("RGB", (im.width, im.height + strip), (255, 255, 255))
    out.paste(im, (0, strip))
    draw = ImageDraw.Draw(out)
    for j, t in enumerate(labels):
        x = k * (1 + j * (w + 1) + w / 2)
        draw.text((x, strip / 2), t, fill=(0, 0, 0), font=font, anchor="mm")
    return out


def resize_center(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 images (N, C, H, W) so that the shorter side is ``size`` (bilinear, antialiased, aspect kept),
    then crop the centre ``size`` x ``size``: torchvision's ``Resize(size)`` + ``CenterCrop(size)``.
    Returns (N, C, size, size) uint8. Images already ``size`` x ``size`` are returned as they are."""
    h, w = int(images.shape[-2]), int(images.shape[-1])
    if h == size and w == size:
        return images
    nh, nw = (size, int(size * w / h)) if h <= w else (int(size * h / w), size)  # torchvision's rounding
    if (nh, nw) != (h, w):
        x = F.interpolate(images.float(), size=(nh, nw), mode="bilinear", antialias=True, align_corners=False)
        images = x.round_().clamp_(0, 255).to(torch.uint8)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))  # as torchvision's center_crop
    return images[..., top: top + size, left: left + size].contiguous()


LUMA = (0.299, 0.587, 0.114)  # ITU-R 601-2, as PIL's convert("L")


def to_channels(images: torch.Tensor, channels: int) -> torch.Tensor:
    """uint8 images (N, C, H, W), C in 1, 3 or 4 (alpha dropped), as ``channels`` (1: luminance ITU-R 601-2, the
    weights of PIL's ``convert("L")``; 3: grey repeated). Returns (N, channels, H, W) uint8."""
    c = int(images.shape[1])
    if c == 4:
        images, c = images[:, :3], 3
    if c == channels:
        return images.contiguous()
    if channels == 3 and c == 1:
        return images.expand(-1, 3, -1, -1).contiguous()
    if channels == 1 and c == 3:
        w = torch.tensor(LUMA, dtype=torch.float32, device=images.device).view(1, 3, 1, 1)
        return (images.float() * w).sum(1, keepdim=True).round_().clamp_(0, 255).to(torch.uint8)
    raise UserError(f"cannot convert {c}-channel images to {channels} channels (expected 1, 3 or 4 channels)")
