"""BiDVL's three networks (Kan et al. 2022, Sec. 4.3 and 5; layer lists of the authors' ``ConvE`` and ``VAE``).

* :class:`ImageEnergy` E_psi(v): (B, C, S, S) -> (B,), an *energy* (low on data), softplus output so E >= 0;
  every conv is spectrally normalised (``torch.nn.utils.parametrizations.spectral_norm``), LeakyReLU 0.1.
* :class:`GaussianEncoder` q_w1(h|v) = N(mu(v), diag exp(logvar(v))): (B, C, S, S) -> mu, logvar (B, nz);
  conv + batch norm + LeakyReLU 0.2.
* :class:`ImageGenerator` G_w2(h): (B, nz) -> (B, C, S, S) in [-1, 1]; DCGAN-like transposed convs + batch norm
  + ReLU, tanh output.

Image sizes S = 8 and every S = s0 * 2^L >= 16 with s0 in 4..7 (16, 20, 24, 28, 32, 40, 48, 64, 96, ...): one
stride-2 level per halving from S down to s0, and an s0 x s0 valid conv (or transposed conv) between that map and
1x1, so the authors' 32 and 64 layouts (s0 = 4) come out exactly and 8x8 (scikit-learn digits) has one level.
Channels 1 or 3.
Widths are multiples of a base width (``ndf`` / ``nef`` / ``ngf``) doubling per level. Weights start as in the
authors' code: conv weights N(0, 0.02), batch-norm scale 1 and shift 0. No training logic here.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.utils.parametrizations import spectral_norm

from ebmtool.nets.generators import GENERAL_SIZES, MIN_GENERAL, GemmConvTranspose2d, size_levels


def layout(size: int) -> tuple[int, int]:
    """(s0, L): the smallest map s0 x s0 (4..7) and the number of stride-2 levels from ``size`` down to it
    (8 -> (4, 1), 32 -> (4, 3), 48 -> (6, 3)). ValueError for a size the networks are not built for."""
    sl = size_levels(size)
    if sl is None or (size < MIN_GENERAL and size != 8):
        raise ValueError(f"image size {size} is not supported (8, and {GENERAL_SIZES})")
    return sl


def levels(size: int) -> int:
    """Number of stride-2 levels from ``size`` down to the s0 x s0 map (8 -> 1, 32 -> 3, 64 -> 4, 48 -> 3)."""
    return layout(size)[1]


def dcgan_init(module: nn.Module) -> nn.Module:
    """Conv / transposed-conv weights ~ N(0, 0.02); batch norm scale 1, shift 0 (biases keep torch's init)."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    return module


class ImageEnergy(nn.Module):
    """E_psi(v) = softplus(f(v)).

    f: conv3x3 (C -> d), then per level l = 0..L-1: conv4x4/2 (w_l -> w_l) and conv3x3 (w_l -> 2 w_l), w_l = d 2^l
    (the last conv3x3 of the chain ends at d 2^L); conv s0 x s0 valid (s0 x s0 -> 1x1; 4x4 at 8, 32, 64), then a
    1x1 conv + LeakyReLU and a 1x1 conv to one number. All convs spectrally normalised. (The authors' code has no
    activation between the valid 4x4 conv and the first 1x1 conv, i.e. two linear maps in a row; here they are
    separated by LeakyReLU.)
    """

    def __init__(self, channels: int, size: int, ndf: int = 64, slope: float = 0.1):
        super().__init__()
        s0, L = layout(size)
        act = lambda: nn.LeakyReLU(slope)  # noqa: E731
        layers: list[nn.Module] = [nn.Conv2d(channels, ndf, 3, 1, 1), act()]
        w = ndf
        for _ in range(L):
            layers += [nn.Conv2d(w, w, 4, 2, 1), act(), nn.Conv2d(w, 2 * w, 3, 1, 1), act()]
            w *= 2
        layers += [nn.Conv2d(w, w, s0, 1, 0), act(), nn.Conv2d(w, w, 1), act(), nn.Conv2d(w, 1, 1)]
        dcgan_init(nn.Sequential(*layers))
        self.net = nn.Sequential(*[spectral_norm(m) if isinstance(m, nn.Conv2d) else m for m in layers])
        self.channels, self.size, self.ndf, self.slope = channels, size, ndf, slope

    def forward(self, v: torch.Tensor) -> torch.Tensor:  # (B, C, S, S) -> (B,) energy >= 0
        return nn.functional.softplus(self.net(v).flatten(1).squeeze(1))

    def spec(self) -> dict[str, Any]:
        return {"channels": self.channels, "size": self.size, "ndf": self.ndf, "slope": self.slope}


class GaussianEncoder(nn.Module):
    """q_w1(h|v) = N(mu(v), diag exp(logvar(v))).

    conv3x3 (C -> e) + BN + LeakyReLU, then per level conv4x4/2 doubling the width + BN + LeakyReLU, then two
    s0 x s0 valid convs (s0 x s0 -> 1x1; 4x4 at 8, 32, 64) for mu and logvar.
    """

    def __init__(self, channels: int, size: int, nz: int = 100, nef: int = 48, slope: float = 0.2):
        super().__init__()
        s0, L = layout(size)
        layers: list[nn.Module] = [nn.Conv2d(channels, nef, 3, 1, 1, bias=False), nn.BatchNorm2d(nef),
                                   nn.LeakyReLU(slope)]
        w = nef
        for _ in range(L):
            layers += [nn.Conv2d(w, 2 * w, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * w), nn.LeakyReLU(slope)]
            w *= 2
        self.net = nn.Sequential(*layers)
        self.mu = nn.Conv2d(w, nz, s0, 1, 0)
        self.logvar = nn.Conv2d(w, nz, s0, 1, 0)
        dcgan_init(self)
        self.channels, self.size, self.nz, self.nef, self.slope = channels, size, nz, nef, slope

    def forward(self, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, C, S, S) -> 2 x (B, nz)
        a = self.net(v)  # (B, w, s0, s0)
        return self.mu(a).flatten(1), self.logvar(a).flatten(1)

    def spec(self) -> dict[str, Any]:
        return {"channels": self.channels, "size": self.size, "nz": self.nz, "nef": self.nef, "slope": self.slope}


class ImageGenerator(nn.Module):
    """G_w2(h): convT s0 x s0 (1x1 -> s0 x s0, nz -> g 2^L; 4x4 at 8, 32, 64) + BN + ReLU, then per level l
    convT4x4/2 (width g 2^L for l = 0, halving after) + BN + ReLU, then convT3x3/1 (2g -> C) and tanh."""

    def __init__(self, channels: int, size: int, nz: int = 100, ngf: int = 48):
        super().__init__()
        s0, L = layout(size)
        w = ngf * 2**L
        # GemmConvTranspose2d: the 1x1 first layer and the image layer as matrix products on a CPU (same parameters)
        layers: list[nn.Module] = [GemmConvTranspose2d(nz, w, s0, 1, 0, bias=False), nn.BatchNorm2d(w), nn.ReLU()]
        for i in range(L):
            out = w if i == 0 else w // 2
            layers += [nn.ConvTranspose2d(w, out, 4, 2, 1, bias=False), nn.BatchNorm2d(out), nn.ReLU()]
            w = out
        layers += [GemmConvTranspose2d(w, channels, 3, 1, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)
        self.channels, self.size, self.nz, self.ngf = channels, size, nz, ngf

    def forward(self, h: torch.Tensor) -> torch.Tensor:  # (B, nz) -> (B, C, S, S) in [-1, 1]
        return self.net(h.reshape(h.shape[0], self.nz, 1, 1))

    def spec(self) -> dict[str, Any]:
        return {"channels": self.channels, "size": self.size, "nz": self.nz, "ngf": self.ngf}
