"""The reference: the LEBM paper's listing (Pang et al. 2020, appendix D), literally, on copies of ebmtool's networks."""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Reference:
    """The listing's sample_langevin_prior / sample_langevin_posterior and training iteration on copies of
    ebmtool's networks. ``G`` takes (n, nz, 1, 1); ``E(z)`` is the energy -f(z) (the listing's E).
    The listing prints ``(z_grad + 1.0 / z.data)``: a transcription loss of the authors'
    ``1.0 / (e_prior_sig * e_prior_sig) * z.data`` with e_prior_sig = 1, the gradient of ||z||^2 / 2;
    implemented as ``+ z.data``."""

    def __init__(self, G: nn.Module, E: Callable, sigma: float, nz: int):
        self.G, self.E, self.sigma, self.nz = G, E, sigma, nz
        self.mse = nn.MSELoss(reduction="sum")

    def sample_p_0(self, n: int, device) -> torch.Tensor:
        return torch.randn(n, self.nz, 1, 1, device=device)

    def prior(self, z: torch.Tensor, K: int, a: float) -> torch.Tensor:
        z = z.clone().detach().requires_grad_(True)
        for _ in range(K):
            en = self.E(z)
            z_grad = torch.autograd.grad(en.sum(), z)[0]
            z.data = z.data - 0.5 * a * a * (z_grad + z.data) + a * torch.randn_like(z).data
        return z.detach()

    def posterior(self, z: torch.Tensor, x: torch.Tensor, K: int, a: float) -> torch.Tensor:
        z = z.clone().detach().requires_grad_(True)
        for _ in range(K):
            x_hat = self.G(z)
            g_log_lkhd = 1.0 / (2.0 * self.sigma * self.sigma) * self.mse(x_hat, x)
            grad_g = torch.autograd.grad(g_log_lkhd, z)[0]
            en = self.E(z)
            grad_e = torch.autograd.grad(en.sum(), z)[0]
            z.data = z.data - 0.5 * a * a * (grad_g + grad_e + z.data) + a * torch.randn_like(z).data
        return z.detach()


def adam_like(params, opt: torch.optim.Optimizer) -> torch.optim.Optimizer:
    g = opt.param_groups[0]
    return torch.optim.Adam(params, lr=g["lr"], betas=g["betas"])


def listing_layers(module: nn.Module) -> None:
    """The listing's generator: plain ``nn.ConvTranspose2d`` for every layer and the NCHW layout (ebmtool's
    generators use channels_last weights and GEMM forms of the first and image layers on a CPU)."""
    from ebmtool.nets.generators import GemmConvTranspose2d

    for m in module.modules():
        if isinstance(m, GemmConvTranspose2d):
            m.__class__ = nn.ConvTranspose2d  # same parameters; the subclass only changes forward
    module.to(memory_format=torch.contiguous_format)
