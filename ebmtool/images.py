"""Image helpers every stage shares: [-1, 1] floats to uint8, and PNG grids (torchvision's save_image)."""

from __future__ import annotations

import math
from typing import Optional

import torch

from ebmtool import artifacts


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] (clipped) -> uint8 in [0, 255], rounded to nearest."""
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def save_grid(images_u8: torch.Tensor, path: str, nrow: Optional[int] = None) -> None:
    """PNG grid of up to 256 uint8 images (N, C, H, W) through torchvision's save_image, written atomically."""
    from torchvision.utils import save_image

    images_u8 = images_u8[:256]
    nrow = nrow or max(1, int(math.sqrt(len(images_u8))))
    with artifacts.atomic_write(path) as tmp:
        save_image(images_u8.float() / 255.0, tmp, nrow=nrow, padding=1, format="png")
