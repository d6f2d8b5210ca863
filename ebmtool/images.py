"""Image helpers every stage shares: [-1, 1] floats to uint8, PNG grids upscaled to be judged by eye, and the one
resize (shorter side, centre crop) and channel conversion that ``data prepare --size/--channels`` applies."""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F

from ebmtool import artifacts
from ebmtool.errors import UserError


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (clipped) -> uint8 in [0, 255], rounded to nearest."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


MIN_GRID_PX = 256  # short side of a saved grid when --scale is not given


def grid_scale(short_side: int, scale: Optional[int] = None) -> int:
    """Integer nearest-neighbour factor: ``scale`` if given (>= 1), else the least one that makes the short side
    at least MIN_GRID_PX."""
    if scale is not None:
        if scale < 1:
            raise UserError(f"--scale {scale}: must be a whole number >= 1")
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


def grid_image(images_u8: torch.Tensor, nrow: Optional[int] = None, scale: Optional[int] = None) -> torch.Tensor:
    """The grid as a uint8 (C, H, W) tensor: ``nrow`` images per row (default: a square grid, ceil(sqrt(n))),
    upscaled by nearest neighbour by ``scale`` (default: enough for MIN_GRID_PX on the short side)."""
    nrow = nrow or max(1, math.ceil(math.sqrt(len(images_u8))))
    g = tile(images_u8, nrow)  # uint8 (C, H, W); C is 3 for grey input
    k = grid_scale(min(g.shape[1], g.shape[2]), scale)
    return g.repeat_interleave(k, 1).repeat_interleave(k, 2) if k > 1 else g


def save_grid(images_u8: torch.Tensor, path: str, nrow: Optional[int] = None, scale: Optional[int] = None) -> None:
    """PNG grid of the first 256 images (written atomically; see :func:`grid_image`), large enough to judge by eye."""
    from PIL import Image

    if len(images_u8) == 0:
        raise UserError(f"{path}: there are no images to draw")
    g = grid_image(images_u8[:256], nrow, scale)
    with artifacts.atomic_write(path) as tmp:
        Image.fromarray(g.permute(1, 2, 0).contiguous().numpy()).save(tmp, format="PNG")


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
