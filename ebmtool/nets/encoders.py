"""Inference networks (encoders) q(z|x). Each answers ``sample(x) -> latents`` and ``spec()``;
the registry rebuilds one from its saved spec."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ebmtool.nets.mlp import mlp_blocks, xavier_init
from ebmtool.registry import Registry

ENCODERS: Registry[type[nn.Module]] = Registry("encoder", nn.Module)
register_encoder = ENCODERS.register
encoder_from_spec = ENCODERS.from_spec


# ------------------------------------------------------------------------------------------------
# Gaussian heads and the bottom-up inference model of multi-layer latents (Cui, Wu & Han 2023, eq. 4)
# ------------------------------------------------------------------------------------------------
SIGMA_FLOOR = 0.01  # sigma = exp(log sigma) + floor; 0.01 in the joint-EBM authors' code
# log sigma is capped at 5 (sigma <= e^5 + floor, about 148): the bound of the Gaussian in the authors' two-stage
# code (NVAE's Normal, which soft-clamps log sigma to [-5, 5]). Without it a conditional p(z_i|z_{i+1}) learned
# sigma ~ 1e5 on MNIST at the prior chains' z_{i+1}, and the prior Langevin chain of z_i ran away to non-finite
# values (docs/results/mnist_anomaly_v3.md, joint-mle).
# A hard cap is the identity below 5, so every run that never reaches it is unchanged bit for bit.
LOG_SIGMA_MAX = 5.0


def gaussian_log_prob(z: torch.Tensor, mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Normalised log N(z; mu, diag(sigma^2)) summed over dimensions: (B, d) -> (B,).

    log N = sum_j [ -(z_j - mu_j)^2 / (2 sigma_j^2) - log sigma_j - log(2 pi) / 2 ]
    """
    return (-0.5 * ((z - mu) / sigma).pow(2) - sigma.log() - 0.5 * math.log(2 * math.pi)).sum(1)


class GaussianMLP(nn.Module):
    """A conditional Gaussian N(mu(h), sigma(h)^2): MLP d_in -> hidden (x layers) -> 2 d_out, LeakyReLU,
    split into mu and log sigma; sigma = exp(min(log sigma, LOG_SIGMA_MAX)) + floor (0.01 in the authors' code).
    Used for p(z_i|z_{i+1}) and q(z_{i+1}|z_i)."""

    def __init__(self, d_in: int, d_out: int, hidden: int = 200, layers: int = 4, slope: float = 0.2,
                 floor: float = SIGMA_FLOOR):
        super().__init__()
        self.net = mlp_blocks([d_in] + [hidden] * layers, 2 * d_out, slope,
                              f"a Gaussian MLP {d_in} -> {hidden} x {layers} -> {2 * d_out}")
        self.d_in, self.d_out, self.floor = d_in, d_out, float(floor)
        xavier_init(self)

    def forward(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # (B, d_in) -> 2 x (B, d_out)
        mu, log_sigma = self.net(h).chunk(2, dim=1)
        return mu, log_sigma.clamp(max=LOG_SIGMA_MAX).exp() + self.floor

    def rsample(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparametrised z = mu + sigma * eps and its log-density log N(z; mu, sigma^2), shapes (B, d_out), (B,)."""
        mu, sigma = self(h)
        z = mu + sigma * torch.randn_like(mu)
        return z, gaussian_log_prob(z, mu, sigma)


def conv_trunk(channels: int, size: int, nef: int, slope: float) -> tuple[nn.Sequential, int]:
    """x (B, C, S, S) -> features (B, F): a 3x3 conv to nef channels, then 4x4 stride-2 convs doubling the
    channels until the map is 4x4 (or smaller), flattened. Returns the module and F."""
    layers: list[nn.Module] = [nn.Conv2d(channels, nef, 3, 1, 1), nn.LeakyReLU(slope)]
    c, s = nef, size
    while s > 4:
        layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), nn.LeakyReLU(slope)]
        c, s = 2 * c, s // 2
    layers.append(nn.Flatten())
    return nn.Sequential(*layers), c * s * s


@register_encoder("bottom_up_gaussian")
class BottomUpGaussianEncoder(nn.Module):
    """Bottom-up inference model q(z|x) = q(z_1|x) prod_{i<L} q(z_{i+1}|z_i) (Cui, Wu & Han 2023, eq. 4), all Gaussian.

    q(z_1|x): conv trunk + linear head giving mu and log sigma; q(z_{i+1}|z_i): :class:`GaussianMLP`.
    Latents are the tuple (z_1 bottom, ..., z_L top), as the joint prior's.
    """

    def __init__(self, image_shape, dims, nef: int = 64, hidden: int = 200, layers: int = 2, slope: float = 0.2):
        super().__init__()
        c, h, w = (int(v) for v in image_shape)
        if h != w:
            raise ValueError(f"encoder needs square images, got {h}x{w}")
        self.image_shape, self.dims = (c, h, w), tuple(int(d) for d in dims)
        self.arch = {"nef": nef, "hidden": hidden, "layers": layers, "slope": slope}
        self.trunk, feat = conv_trunk(c, h, nef, slope)
        self.head = nn.Linear(feat, 2 * self.dims[0])
        self.up = nn.ModuleList(GaussianMLP(a, b, hidden, layers, slope) for a, b in zip(self.dims[:-1], self.dims[1:]))
        xavier_init(self)

    def rsample(self, x: torch.Tensor) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Reparametrised z ~ q(z|x) and log q(z|x) = log q(z_1|x) + sum_i log q(z_{i+1}|z_i), shape (B,)."""
        mu, log_sigma = self.head(self.trunk(x)).chunk(2, dim=1)  # 2 x (B, d_1)
        sigma = log_sigma.exp() + SIGMA_FLOOR
        z = mu + sigma * torch.randn_like(mu)
        zs, log_q = [z], gaussian_log_prob(z, mu, sigma)
        for q in self.up:
            z, lq = q.rsample(z)
            zs.append(z)
            log_q = log_q + lq
        return tuple(zs), log_q

    def sample(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return self.rsample(x)[0]

    def spec(self) -> dict[str, Any]:
        return {"type": self.type_name, "image_shape": list(self.image_shape), "dims": list(self.dims), **self.arch}

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "BottomUpGaussianEncoder":
        return cls(spec["image_shape"], spec["dims"], spec["nef"], spec["hidden"], spec["layers"], spec["slope"])
