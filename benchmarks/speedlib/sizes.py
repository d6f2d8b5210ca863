"""One size: ebmtool's path (the real ``step`` closures of the mle and adaptive-nce fit functions), the reference
on deep copies of the same networks, and the FLOP counts."""

from __future__ import annotations

import copy
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ebmtool.config import GeneratorSpec, Langevin
from ebmtool.methods import adaptive_nce as nce_mod
from ebmtool.methods import mle as mle_mod
from ebmtool.models import LatentModel
from ebmtool.priors import GaussianPrior, RatioProductPrior
from ebmtool.sampling import frozen
from ebmtool.training import RunContext, TrainData

from .common import BATCH, N_DATA, SAMPLE_STEPS, SIZES
from .reference import Reference, adam_like, listing_layers


# ------------------------------------------------------------------------------------------------
# ebmtool's path: the real ``step`` closures of the mle and adaptive-nce fit functions
# ------------------------------------------------------------------------------------------------
class _Captured(Exception):
    pass


def capture_step(module, cfg, data, init, init_art, ctx) -> tuple[Callable, dict[str, Any]]:
    """Run ``module.fit`` up to its train_loop call and return the per-batch ``step`` it builds (and the
    objects it closes over: model, optimizers, ...). Nothing is trained here."""
    box: dict[str, Any] = {}

    def fake_train_loop(*_a, step, **_k):
        box["step"] = step
        raise _Captured

    orig = module.train_loop
    module.train_loop = fake_train_loop
    try:
        module.fit(cfg, data, init, init_art, ctx)
    except _Captured:
        pass
    finally:
        module.train_loop = orig
    if "step" not in box:
        raise RuntimeError(f"{module.__name__}.fit did not reach train_loop: update benchmarks/speedlib/sizes.py")
    step = box["step"]
    cells = dict(zip(step.__code__.co_freevars, (c.cell_contents for c in step.__closure__ or ())))
    return step, cells


# ------------------------------------------------------------------------------------------------
# one size: build both paths and the FLOP counts
# ------------------------------------------------------------------------------------------------
def flops_of(fn: Callable[[], Any]) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return int(fc.get_total_flops())


def step_flops(log_pi: Callable, z0: torch.Tensor, modules: list[nn.Module]) -> int:
    """One Langevin step as counted here: forward of log_pi + .backward() to z, parameters frozen."""
    def go():
        z = z0.detach().clone().requires_grad_(True)
        log_pi(z).sum().backward()
    with frozen(modules), torch.enable_grad():
        return flops_of(go)


def zero_grads(*modules: nn.Module) -> None:
    for m in modules:
        for p in m.parameters():
            p.grad = None


class SizeBench:
    def __init__(self, arch: str, device: torch.device, seed: int):
        nz, ngf, ch = SIZES[arch]
        self.arch, self.nz, self.ngf, self.ch, self.device = arch, nz, ngf, ch, device
        torch.manual_seed(seed)
        x = torch.rand(N_DATA, ch, 32, 32, device=device) * 2 - 1
        data = TrainData(x=x, labels=torch.zeros(N_DATA, dtype=torch.long), content_sha256="speed-bench", parent={})
        ctx = RunContext(device=device, quiet=True, seed=seed)
        self.x = x[:BATCH].contiguous()
        self.idx = torch.arange(BATCH)
        gspec = GeneratorSpec(arch=arch, nz=nz, ngf=ngf)

        # --- mle (LEBM) -------------------------------------------------------------------------
        self.mle_cfg = mle_mod.MLEConfig(generator=gspec, batch_size=BATCH)
        self.mle_step, cells = capture_step(mle_mod, self.mle_cfg, data, None, None, ctx)
        self.mle_model: LatentModel = cells["model"]
        m = self.mle_model
        # the reference owns deep copies made before any step: same initial weights, own optimizers
        self.ref_mle_model: LatentModel = copy.deepcopy(m)
        listing_layers(self.ref_mle_model.generator)  # the listing's layers and NCHW layout
        G, f = self.ref_mle_model.generator, self.ref_mle_model.prior.f
        self.ref_mle = Reference(G.net, lambda z: -f(z.squeeze()), m.sigma, nz)
        self.ref_optG = adam_like(G.parameters(), cells["opt_g"])
        self.ref_optE = adam_like(f.parameters(), cells["opt_e"])

        # --- adaptive-nce, stage k = 1 with memory negatives --------------------------------------
        self.nce_cfg = nce_mod.AdaptiveNCEConfig(generator=gspec, batch_size=BATCH, stages=1)
        init_prior = RatioProductPrior(nz, self.nce_cfg.energy.hidden, self.nce_cfg.energy.layers,
                                       self.nce_cfg.energy.slope, stages=1)
        init_prior.stages[0].requires_grad_(False)
        init = LatentModel(copy.deepcopy(m.generator), init_prior, self.nce_cfg.sigma, (ch, 32, 32),
                           inference=Langevin(steps=30, step_size=0.1), sampling=Langevin(steps=100, step_size=0.1), method="adaptive-nce")
        init_art = SimpleNamespace(path="speed-bench", tensors={"memory": torch.randn(N_DATA, nz)},
                                   meta={"data_content_sha256": data.content_sha256})
        self.nce_step, cells = capture_step(nce_mod, self.nce_cfg, data, init, init_art, ctx)
        self.nce_model: LatentModel = cells["model"]
        self.nce_r: nn.Module = cells["r"]
        nm = copy.deepcopy({"model": self.nce_model, "r": self.nce_r})
        self.ref_nce_model, self.ref_nce_r = nm["model"], nm["r"]
        listing_layers(self.ref_nce_model.generator)
        rp = self.ref_nce_model.prior
        self.ref_nce = Reference(self.ref_nce_model.generator.net, lambda z: -rp.tilt(z.squeeze()),
                                 self.nce_model.sigma, nz)
        self.ref_nce_optG = adam_like(self.ref_nce_model.generator.parameters(), cells["opt_g"])
        self.ref_nce_optR = adam_like(self.ref_nce_r.parameters(), cells["opt_r"])
        self.ref_memory = torch.randn(N_DATA, nz, device=device)  # read memory (previous stage's z+)
        self.ref_write = torch.zeros(N_DATA, nz, device=device)
        self.ref_mem_gen = torch.Generator(device="cpu").manual_seed(seed)
        self.flops = self.count_flops()

    # --- the workloads, ebmtool ---------------------------------------------------------------
    def ebm_mle(self):
        return self.mle_step(self.idx, self.x, 0)

    def ebm_nce(self):
        return self.nce_step(self.idx, self.x, 0)

    def ebm_mle_bf16(self):  # what --precision bf16 does: the whole training step under autocast
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.mle_step(self.idx, self.x, 0)

    def ebm_nce_bf16(self):
        with torch.autocast(self.device.type, dtype=torch.bfloat16):
            return self.nce_step(self.idx, self.x, 0)

    def ebm_sample(self):
        return self.mle_model.sample(BATCH, steps=SAMPLE_STEPS).images

    def ebm_reconstruct(self):
        return self.mle_model.reconstruct(self.x)[0]

    # --- the workloads, reference (the listing) --------------------------------------------------
    def ref_mle_iter(self):
        R, cfg, x, dev = self.ref_mle, self.mle_cfg, self.x, self.device
        z_e_0, z_g_0 = R.sample_p_0(BATCH, dev), R.sample_p_0(BATCH, dev)
        z_e_k = R.prior(z_e_0, cfg.prior.steps, cfg.prior.step_size)
        z_g_k = R.posterior(z_g_0, x, cfg.posterior.steps, cfg.posterior.step_size)
        self.ref_optG.zero_grad()
        x_hat = R.G(z_g_k.detach())
        loss_g = R.mse(x_hat, x) / BATCH
        loss_g.backward()
        self.ref_optG.step()
        self.ref_optE.zero_grad()
        en_pos, en_neg = R.E(z_g_k.detach()).mean(), R.E(z_e_k.detach()).mean()
        loss_e = en_pos - en_neg
        loss_e.backward()
        self.ref_optE.step()
        return loss_g, loss_e

    def ref_nce_iter(self):
        R, cfg, x, dev = self.ref_nce, self.nce_cfg, self.x, self.device
        z_pos = R.posterior(R.sample_p_0(BATCH, dev), x, cfg.posterior.steps, cfg.posterior.step_size)
        self.ref_nce_optG.zero_grad()
        loss_g = R.mse(R.G(z_pos), x) / BATCH
        loss_g.backward()
        self.ref_nce_optG.step()
        rows = torch.randint(0, N_DATA, (BATCH,), generator=self.ref_mem_gen).to(dev)
        z_neg = self.ref_memory[rows]
        z_pos = z_pos.squeeze()
        loss_r = -F.logsigmoid(self.ref_nce_r(z_pos)).mean() - F.logsigmoid(-self.ref_nce_r(z_neg)).mean()
        self.ref_nce_optR.zero_grad()
        loss_r.backward()
        self.ref_nce_optR.step()
        self.ref_write[self.idx.to(dev)] = z_pos
        return loss_g, loss_r

    def ref_sample(self):
        R = self.ref_mle
        z = R.prior(R.sample_p_0(BATCH, self.device), SAMPLE_STEPS, self.mle_model.sampling.step_size)
        with torch.no_grad():
            return R.G(z)

    def ref_reconstruct(self):
        R, ch = self.ref_mle, self.mle_model.inference
        z = R.posterior(R.sample_p_0(BATCH, self.device), self.x, ch.steps, ch.step_size)
        with torch.no_grad():
            return R.G(z)

    # --- FLOPs ----------------------------------------------------------------------------------
    def count_flops(self) -> dict[str, int]:
        m, p, x, dev = self.mle_model, self.mle_model.prior, self.x, self.device
        z = torch.randn(BATCH, self.nz, device=dev)
        post = step_flops(lambda z: m.log_joint(x, z), z, [m])
        prior = step_flops(p.log_prob, z, [p])
        nm = self.nce_model
        post_nce = step_flops(lambda z: nm.log_joint(x, z), z, [nm])

        def gen_update(model):
            (-model.log_lik(x, z).mean()).backward()

        def energy_update():
            (p.tilt(z).mean() - p.tilt(z + 1).mean()).backward()

        def nce_update():
            nce_mod.nce_loss(self.nce_r(z), self.nce_r(z + 1)).backward()

        g_up, e_up, r_up = flops_of(lambda: gen_update(m)), flops_of(energy_update), flops_of(nce_update)
        with torch.no_grad():
            decode = flops_of(lambda: m.generator(z))
        zero_grads(m, self.nce_r)
        c = self.mle_cfg
        return {
            "posterior_step": post, "prior_step": prior, "posterior_step_nce": post_nce, "generator_update": g_up,
            "energy_update": e_up, "nce_update": r_up, "decode": decode,
            "mle": c.prior.steps * prior + c.posterior.steps * post + g_up + e_up,
            "adaptive-nce": self.nce_cfg.posterior.steps * post_nce + g_up + r_up,
            "sample": SAMPLE_STEPS * prior + decode,
            "reconstruct": m.inference.steps * post + decode,
        }

    def warm_up(self):
        """First calls build oneDNN primitives and allocator pools; one short run of each path."""
        m, R = self.mle_model, self.ref_mle
        m.infer(self.x, Langevin(steps=2, step_size=0.1))
        R.posterior(R.sample_p_0(BATCH, self.device), self.x, 2, 0.1)
        m.prior.sample(BATCH, steps=2, step_size=0.4, device=self.device)
        R.prior(R.sample_p_0(BATCH, self.device), 2, 0.4)


def grad_z(model: LatentModel, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    z = z.detach().clone().requires_grad_(True)
    with frozen([model]), torch.enable_grad():
        return torch.autograd.grad(model.log_joint(x, z).sum(), z)[0]


def mle_step_contiguous(sb: SizeBench) -> Callable:
    """ebmtool's mle step on a copy of the generator with the listing's layers in NCHW, i.e. without the channels_last
    weights and GEMM layers of ebmtool's generators (captured from mle.fit with that generator as --init; the energy MLP is a
    fresh one: its cost is the same)."""
    gen = copy.deepcopy(sb.mle_model.generator)
    listing_layers(gen)
    nz, ch = sb.nz, sb.ch
    init = LatentModel(gen, GaussianPrior(nz), sb.mle_model.sigma, (ch, 32, 32), inference=Langevin(steps=20, step_size=0.1),
                       sampling=Langevin(steps=60, step_size=0.4), method="pretrain")
    data = TrainData(x=sb.x, labels=torch.zeros(BATCH, dtype=torch.long), content_sha256="speed-bench", parent={})
    step, _cells = capture_step(mle_mod, sb.mle_cfg, data, init, SimpleNamespace(path="speed-bench"),
                                RunContext(device=sb.device, quiet=True, seed=1))
    return lambda: step(sb.idx, sb.x, 0)
