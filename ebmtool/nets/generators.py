"""Generators g(z): (B, nz) -> (B, C, H, W) in [-1, 1] (tanh output), one registry (``GENERATORS``).

Convolutional architectures follow LEBM Table 6 and adaptive-NCE Table 5: a first transposed conv from a 1x1
latent to a k x k map, then stride-2 4x4 transposed convs doubling the resolution, LeakyReLU between layers. Each
is a list of (channel multiple of ngf, kernel, stride, padding) for the hidden layers, followed by the output layer.
A fully connected architecture (``dense``) is a list of hidden widths as multiples of ngf. Every size is a config
field (nz, ngf, slope).

28x28 (the MNIST anomaly protocol of the papers, no resize): ``mnist28``, the fully connected generator of the
LEBM group's MNIST anomaly code (nz -> 512 -> 1024 -> 784 at ngf 64), is ``auto``'s choice because it is the
lineage's own MNIST generator, so results compare with the papers' at their network size. ``mnist28conv`` is the
alternative, a 7x7-start transposed-conv generator (7 -> 14 -> 28, the DCGAN MNIST layout). Their cost is close
here: one posterior Langevin step at batch 100 took 7.3 ms with ``mnist28`` (ngf 64) and 6.4 ms with
``mnist28conv`` (ngf 16) on an AMD EPYC, fp32, one thread (ebmtool's matrix-product transposed convolutions; a
plain PyTorch loop measured 0.29 s against 0.46 s per LEBM update).

Any other square size (issue 32): ``general`` serves every S = s0 * 2^k with s0 in 4..7 and S >= 16 (16, 20, 24,
28, 40, 48, 56, 80, 96, ...): a first transposed conv from 1x1 to s0 x s0 (kernel s0), then k stride-2 4x4
transposed convs, widths ngf * 2^(k-1) halving to ngf (capped at 8 ngf), as the papers' layouts. ``auto`` keeps the
papers' networks at 8, 28, 32 and 64 and picks ``general`` elsewhere; the model records which (its spec's
``generator.arch``, and ``generator.size`` for ``general``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ebmtool.errors import UserError
from ebmtool.nets.mlp import check_parameters, xavier_init
from ebmtool.registry import GENERATORS  # the one registry of architectures (the config checks --arch in it)


@dataclass(frozen=True)
class Arch:
    size: int  # output H = W
    hidden: tuple[tuple[int, int, int, int], ...]  # (mult, kernel, stride, pad); conv only
    out: tuple[int, int, int]  # (kernel, stride, pad) of the output layer; conv only
    note: str
    dense: tuple[int, ...] = ()  # fully connected: hidden widths as multiples of ngf (hidden/out unused)
    auto: str = ""  # which images ``auto`` picks it for at its size: "any" | "grey" (C = 1) | "colour" (C != 1)
    general: bool = False  # size 0: built for the data's size by :func:`general_arch`


for _name, _arch in {
    # 1x1 -> 2 -> 4 -> 8
    "digits8": Arch(8, ((2, 2, 1, 0), (1, 4, 2, 1)), (4, 2, 1), "CPU: 8x8 (scikit-learn digits)", auto="any"),
    # 1x1 -> 4 -> 8 -> 16 -> 32
    "mnist32": Arch(32, ((4, 4, 1, 0), (2, 4, 2, 1), (1, 4, 2, 1)), (4, 2, 1), "CPU: 32x32 grey (MNIST resized)",
                      auto="grey"),
    # LEBM Table 6 / adaptive-NCE Table 5 SVHN: 4x4 ngf*8, 8x8 ngf*4, 16x16 ngf*2, 32x32 C
    "svhn32": Arch(32, ((8, 4, 1, 0), (4, 4, 2, 1), (2, 4, 2, 1)), (4, 2, 1), "SVHN 32x32 (nz 100, ngf 64)",
                     auto="colour"),
    # CIFAR-10: 8x8 first layer, then 16, 32, and a 3x3 stride-1 output layer
    "cifar32": Arch(32, ((8, 8, 1, 0), (4, 4, 2, 1), (2, 4, 2, 1)), (3, 1, 1), "CIFAR-10 32x32 (nz 128, ngf 128)"),
    # CelebA 64: 4, 8, 16, 32, 64
    "celeba64": Arch(64, ((8, 4, 1, 0), (4, 4, 2, 1), (2, 4, 2, 1), (1, 4, 2, 1)), (4, 2, 1),
                     "CelebA 64x64 (nz 100, ngf 64)", auto="any"),
    # 28x28, no resize: the LEBM group's fully connected MNIST generator, nz -> 8 ngf -> 16 ngf -> C*28*28
    "mnist28": Arch(28, (), (0, 0, 0), "MNIST 28x28, fully connected (nz 20, ngf 64: 512, 1024)", dense=(8, 16),
                    auto="any"),
    # 28x28 convolutional: 1x1 -> 7 -> 14 -> 28
    "mnist28conv": Arch(28, ((2, 7, 1, 0), (1, 4, 2, 1)), (4, 2, 1), "MNIST 28x28, 7x7-start transposed conv"),
    # any S = s0 * 2^k >= 16, s0 in 4..7: 1x1 -> s0 -> 2 s0 -> ... -> S (general_arch)
    "general": Arch(0, (), (0, 0, 0), "any square size s0*2^k >= 16 (s0 4..7): s0 x s0 start, stride-2 doublings",
                    general=True),
}.items():
    GENERATORS.add(_name, _arch)


MIN_GENERAL = 16  # the smallest size ``general`` serves (8x8 has digits8)


def size_levels(size: int) -> Optional[tuple[int, int]]:
    """S = s0 * 2^k with s0 in 4..7 -> (s0, k) (8 -> (4, 1), 48 -> (6, 3)); None for any other size (9, 18, 36)."""
    s, k = int(size), 0
    while s >= 8 and s % 2 == 0:
        s, k = s // 2, k + 1
    return (s, k) if 4 <= s <= 7 else None


def general_arch(size: int) -> Arch:
    """The ``general`` layout for S x S images (S = s0 * 2^k >= 16, s0 in 4..7): 1x1 -> s0 x s0 (kernel s0, width
    ngf * min(2^(k-1), 8)), k - 1 stride-2 4x4 transposed convs halving the width, and a stride-2 output layer.
    ValueError for a size it does not serve."""
    sl = size_levels(size)
    if sl is None or size < MIN_GENERAL:
        raise ValueError(f"the general generator serves sizes {GENERAL_SIZES}, not {size}")
    s0, k = sl
    hidden = ((min(2 ** (k - 1), 8), s0, 1, 0),) + tuple((min(2 ** (k - 1 - i), 8), 4, 2, 1) for i in range(1, k))
    return Arch(size, hidden, (4, 2, 1), GENERATORS["general"].note, general=True)


GENERAL_SIZES = "every s0*2^k >= 16 with s0 in 4..7: 16, 20, 24, 28, 32, 40, 48, 56, 64, 80, 96, 112, 128, ..."


def served(size: int) -> bool:
    """Whether some generator makes S x S images (a paper's network, or ``general``); BiDVL's networks
    (:mod:`ebmtool.nets.image_ebm`) are built for the same sizes."""
    return (any(a.size == size for a in GENERATORS.values() if not a.general)
            or (size >= MIN_GENERAL and size_levels(size) is not None))


def nearest_served(size: int) -> list[int]:
    """The served sizes nearest to ``size``, below and above (one if it is served, or nothing is below)."""
    if served(size):
        return [size]
    below = next((s for s in range(size - 1, 0, -1) if served(s)), None)
    above = next(s for s in range(size + 1, 8 * size + 16) if served(s))
    return [s for s in (below, above) if s is not None]


def size_hint(sizes: list[int]) -> str:
    """The ``data prepare --size`` a refused size can follow: "data prepare --size 16 or --size 20"."""
    return "data prepare --size " + " or --size ".join(str(s) for s in sizes)


def resolve_arch(arch: str, image_shape: tuple[int, int, int]) -> str:
    """Pick the architecture for ``auto`` from the data's image shape (a paper's network where one exists, the
    ``general`` one elsewhere); check an explicit one fits. One line naming a ``data prepare --size`` that does."""
    c, h, w = image_shape
    if h != w:
        raise UserError(f"images are {h}x{w} (height x width): generators need square images (resize and "
                        f"centre-crop them with {size_hint(nearest_served(min(h, w)))})")
    if arch == "auto":
        for name, a in GENERATORS.items():
            if a.size == h and (a.auto == "any" or a.auto == ("grey" if c == 1 else "colour")):
                return name
        if served(h):
            return "general"
        fixed = sorted({a.size for a in GENERATORS.values() if not a.general and a.size < MIN_GENERAL})
        raise UserError(f"no generator for {h}x{w} images (sizes {', '.join(map(str, fixed))} and {GENERAL_SIZES}); "
                        f"use {size_hint(nearest_served(h))}")
    if arch not in GENERATORS:
        raise UserError(f"unknown generator architecture {arch!r} (choose from {', '.join(GENERATORS)})")
    if GENERATORS[arch].general:
        if h < MIN_GENERAL or size_levels(h) is None:
            raise UserError(f"generator general makes {GENERAL_SIZES} (not {h}x{w}); use --arch auto or "
                            f"{size_hint([s for s in nearest_served(h) if s >= MIN_GENERAL] or [MIN_GENERAL])}")
        return arch
    if GENERATORS[arch].size != h:
        raise UserError(f"generator {arch} makes {GENERATORS[arch].size}x{GENERATORS[arch].size} images "
                        f"but the data is {h}x{w}")
    return arch


def _autocast_cpu() -> bool:
    return torch.is_autocast_enabled("cpu")


class GemmConvTranspose2d(nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` (same parameters, same state_dict) that, on a CPU, computes the two layer shapes
    oneDNN's transposed convolution handles badly as matrix products (docs/performance.md, per-layer timings):

    * a 1x1 input with stride 1 and no padding (every generator's first layer) is a linear map
      z (B, Cin) -> (B, k*k*Cout): one ``addmm``; 3-6x faster forward + backward-to-input, and exact;
    * in fp32, a layer with at most 4 output channels (the image layer) is ``x @ W`` followed by ``F.fold``
      (col2im, the adjoint of the im2col that defines a convolution): 1.2-1.8x faster, equal up to fp32 rounding
      (under bf16 autocast the native kernel was faster).

    Every other layer, and every layer on other devices (cuDNN), runs the native kernel."""

    def forward(self, x: torch.Tensor, output_size=None) -> torch.Tensor:
        plain = (x.device.type == "cpu" and x.dim() == 4 and output_size is None and self.groups == 1
                 and self.dilation == (1, 1) and self.output_padding == (0, 0) and self.padding_mode == "zeros")
        if plain and x.shape[2:] == (1, 1) and self.stride == (1, 1) and self.padding == (0, 0):
            return self._linear(x)
        if plain and self.out_channels <= 4 and self.kernel_size[0] == self.kernel_size[1] and not _autocast_cpu():
            return self._fold(x)
        return super().forward(x, output_size)

    def _linear(self, x: torch.Tensor) -> torch.Tensor:
        cin, cout, kh, kw = self.weight.shape
        w = self.weight.permute(0, 2, 3, 1).reshape(cin, kh * kw * cout)  # free for channels_last weights
        z = x.reshape(x.shape[0], cin)
        y = z @ w if self.bias is None else torch.addmm(self.bias.repeat(kh * kw).to(z.dtype), z, w)
        return y.view(x.shape[0], kh, kw, cout).permute(0, 3, 1, 2)  # (B, Cout, kh, kw), channels_last strides

    def _fold(self, x: torch.Tensor) -> torch.Tensor:
        b, cin, h, w_ = x.shape
        cout, (k, _), (sh, sw), (ph, pw) = self.out_channels, self.kernel_size, self.stride, self.padding
        ho, wo = (h - 1) * sh - 2 * ph + k, (w_ - 1) * sw - 2 * pw + k
        cols = x.permute(0, 2, 3, 1).reshape(b * h * w_, cin) @ self.weight.reshape(cin, cout * k * k)
        y = F.fold(cols.view(b, h * w_, cout * k * k).transpose(1, 2), (ho, wo), k, stride=(sh, sw), padding=(ph, pw))
        return y if self.bias is None else y + self.bias.view(1, -1, 1, 1).to(y.dtype)


class Generator(nn.Module):
    """g(z): (B, nz) -> (B, channels, S, S) by the registered architecture ``arch``; ``size`` S is needed by
    ``general`` (any S it serves) and, if given, must match a fixed architecture's own size."""

    def __init__(self, arch: str, nz: int, ngf: int, channels: int, slope: float = 0.2, size: Optional[int] = None):
        super().__init__()
        spec = GENERATORS[arch]
        if spec.general:
            if size is None:
                raise ValueError("the general generator needs the image size")
            spec = general_arch(int(size))
        elif size is not None and int(size) != spec.size:
            raise ValueError(f"generator {arch} makes {spec.size}x{spec.size} images, not {size}x{size}")
        widths = [nz] + [ngf * m for m in (spec.dense or [h[0] for h in spec.hidden])]
        outs = widths[1:] + [channels * spec.size * spec.size if spec.dense else channels]
        kk = [1] * len(outs) if spec.dense else [h[1] ** 2 for h in spec.hidden] + [spec.out[0] ** 2]
        check_parameters(sum(a * b * k + b for a, b, k in zip(widths, outs, kk)),
                         f"the {arch} generator (nz {nz}, ngf {ngf})")
        layers: list[nn.Module] = []
        cin = nz
        if spec.dense:
            for mult in spec.dense:
                layers += [nn.Linear(cin, ngf * mult), nn.LeakyReLU(slope)]
                cin = ngf * mult
            layers += [nn.Linear(cin, channels * spec.size * spec.size), nn.Tanh()]
        else:
            for mult, k, s, p in spec.hidden:
                layers += [GemmConvTranspose2d(cin, ngf * mult, k, s, p), nn.LeakyReLU(slope)]
                cin = ngf * mult
            k, s, p = spec.out
            layers += [GemmConvTranspose2d(cin, channels, k, s, p), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        self.dense, self.general = bool(spec.dense), spec.general
        self.arch, self.nz, self.ngf, self.channels, self.size, self.slope = arch, nz, ngf, channels, spec.size, slope
        xavier_init(self)
        # channels_last weights: 1.15-1.25x per LEBM iteration at mnist32 on a CPU (docs/performance.md);
        # exact up to fp32 rounding. Images are returned as ordinary contiguous NCHW tensors.
        self.to(memory_format=torch.channels_last)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (B, nz) -> (B, C, H, W)
        if self.dense:
            return self.net(z.reshape(z.shape[0], self.nz)).view(z.shape[0], self.channels, self.size, self.size)
        return self.net(z.reshape(z.shape[0], self.nz, 1, 1)).contiguous()


    def spec(self) -> dict:
        """The keyword arguments that rebuild it (``size`` only for ``general``: a fixed architecture knows its own)."""
        return {"arch": self.arch, "nz": self.nz, "ngf": self.ngf, "channels": self.channels, "slope": self.slope,
                **({"size": self.size} if self.general else {})}


def build_generator(arch: str, nz: int, ngf: int, channels: int, slope: float = 0.2,
                    size: Optional[int] = None) -> Generator:
    return Generator(arch, nz, ngf, channels, slope, size)
