"""DCGAN-like generators g(z): (B, nz) -> (B, C, H, W) in [-1, 1] (tanh output).

Architectures follow LEBM Table 6 and adaptive-NCE Table 5: a first transposed conv from a 1x1 latent to a
k x k map, then stride-2 4x4 transposed convs doubling the resolution, LeakyReLU between layers.
Each architecture is a list of (channel multiple of ngf, kernel, stride, padding) for the hidden layers,
followed by the output layer. Every size is a config field (nz, ngf, slope).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ebmtool.errors import UserError
from ebmtool.nets.mlp import xavier_init


@dataclass(frozen=True)
class Arch:
    size: int  # output H = W
    hidden: tuple[tuple[int, int, int, int], ...]  # (mult, kernel, stride, pad)
    out: tuple[int, int, int]  # (kernel, stride, pad) of the output layer
    note: str


GENERATORS: dict[str, Arch] = {
    # 1x1 -> 2 -> 4 -> 8
    "digits8": Arch(8, ((2, 2, 1, 0), (1, 4, 2, 1)), (4, 2, 1), "CPU: 8x8 (scikit-learn digits)"),
    # 1x1 -> 4 -> 8 -> 16 -> 32
    "mnist32": Arch(32, ((4, 4, 1, 0), (2, 4, 2, 1), (1, 4, 2, 1)), (4, 2, 1), "CPU: 32x32 grey (MNIST resized)"),
    # LEBM Table 6 / adaptive-NCE Table 5 SVHN: 4x4 ngf*8, 8x8 ngf*4, 16x16 ngf*2, 32x32 C
    "svhn32": Arch(32, ((8, 4, 1, 0), (4, 4, 2, 1), (2, 4, 2, 1)), (4, 2, 1), "SVHN 32x32 (nz 100, ngf 64)"),
    # CIFAR-10: 8x8 first layer, then 16, 32, and a 3x3 stride-1 output layer
    "cifar32": Arch(32, ((8, 8, 1, 0), (4, 4, 2, 1), (2, 4, 2, 1)), (3, 1, 1), "CIFAR-10 32x32 (nz 128, ngf 128)"),
    # CelebA 64: 4, 8, 16, 32, 64
    "celeba64": Arch(64, ((8, 4, 1, 0), (4, 4, 2, 1), (2, 4, 2, 1), (1, 4, 2, 1)), (4, 2, 1), "CelebA 64x64 (nz 100, ngf 64)"),
}


def resolve_arch(arch: str, image_shape: tuple[int, int, int]) -> str:
    """Pick the architecture for ``auto`` from the data's image shape; check an explicit one fits."""
    c, h, w = image_shape
    if h != w:
        raise UserError(f"images are {h}x{w}: generators need square images (use data prepare --size)")
    if arch == "auto":
        by_size = {8: "digits8", 64: "celeba64"}
        if h == 32:
            return "mnist32" if c == 1 else "svhn32"
        if h not in by_size:
            raise UserError(f"no generator for {h}x{w} images (sizes 8, 32, 64; use data prepare --size)")
        return by_size[h]
    if arch not in GENERATORS:
        raise UserError(f"unknown generator architecture {arch!r} (choose from {', '.join(GENERATORS)})")
    if GENERATORS[arch].size != h:
        raise UserError(f"generator {arch} makes {GENERATORS[arch].size}x{GENERATORS[arch].size} images but the data is {h}x{w}")
    return arch


class Generator(nn.Module):
    def __init__(self, arch: str, nz: int, ngf: int, channels: int, slope: float = 0.2):
        super().__init__()
        spec = GENERATORS[arch]
        layers: list[nn.Module] = []
        cin = nz
        for mult, k, s, p in spec.hidden:
            layers += [nn.ConvTranspose2d(cin, ngf * mult, k, s, p), nn.LeakyReLU(slope)]
            cin = ngf * mult
        k, s, p = spec.out
        layers += [nn.ConvTranspose2d(cin, channels, k, s, p), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.arch, self.nz, self.ngf, self.channels, self.size, self.slope = arch, nz, ngf, channels, spec.size, slope
        xavier_init(self)
        # channels_last weights: 1.15-1.25x per LEBM iteration at mnist32 on a CPU (docs/performance.md);
        # exact up to fp32 rounding. Images are returned as ordinary contiguous NCHW tensors.
        self.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, nz) -> (B, C, H, W)
        return self.net(z.reshape(z.shape[0], self.nz, 1, 1)).contiguous()


def build_generator(arch: str, nz: int, ngf: int, channels: int, slope: float = 0.2) -> Generator:
    return Generator(arch, nz, ngf, channels, slope)
