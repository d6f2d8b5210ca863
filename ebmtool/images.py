"""Image helpers every stage shares: [-1, 1] floats to uint8, and PNG grids upscaled to be judged by eye."""

from __future__ import annotations

import math
from typing import Optional

import torch

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


def save_grid(images_u8: torch.Tensor, path: str, nrow: Optional[int] = None, scale: Optional[int] = None,
              force: bool = True) -> None:
    """PNG grid of the first 256 images (written atomically; see :func:`grid_image`), large enough to judge by eye.
    ``force`` False: a file that reached ``path`` meanwhile (another run's) is kept and this write refused."""
    from PIL import Image

    if len(images_u8) == 0:
        raise UserError(f"{path}: there are no images to draw")
    g = grid_image(images_u8[:256], nrow, scale)
    with artifacts.atomic_write(path, overwrite=force) as tmp:
        Image.fromarray(g.permute(1, 2, 0).contiguous().numpy()).save(tmp, format="PNG")
