"""Speed benchmark (issue "Speed and scale", item 1 and the measurement of item 2). Not a test.

What it measures, at two sizes (``mnist32``: nz 16, ngf 32, 1 channel = ebmtool's ``cpu`` preset;
``svhn32``: nz 100, ngf 64, 3 channels = the LEBM paper's SVHN generator), batch 100:

* ``mle``           training iterations/s: 60 prior steps (s 0.4) + 20 posterior steps (s 0.1) + generator
                    and energy Adam steps (the ``step`` of ``ebmtool.methods.mle``, captured from ``fit``);
* ``adaptive-nce``  training iterations/s: 30 posterior steps + generator step + NCE step with memory
                    negatives (stage k = 1, the ``step`` of ``ebmtool.methods.adaptive_nce``, captured);
* ``sample``        images/s: prior Langevin 100 steps + decode (``LatentModel.sample`` of an LEBM model);
* ``reconstruct``   images/s: posterior Langevin 20 steps + decode (``LatentModel.reconstruct``).
* ``mle bf16``, ``adaptive-nce bf16``: the same training steps under bf16 autocast (what ``--precision bf16``
                    does), against the fp32 reference; only on devices with native bf16 (``--precision auto``'s rule).

Each against a *reference* that follows the PyTorch listing printed in the LEBM paper (Pang et al. 2020, appendix
D) literally: latents (n, nz, 1, 1), two ``autograd.grad`` calls per posterior step (generator term,
energy term), ``z.data = ...`` updates, parameters left requiring grad, the listing's losses
(``MSELoss(reduction='sum')``). The reference runs on deep copies of the same networks (same initial
weights), in the same process, interleaved with ebmtool's path (A B, B A, A B, ...), and each speed-up is
the median over adjacent pairs of t_reference / t_ebmtool (so a load change hits both halves of a pair).

Also: the dense matmul peak (fp32 and bf16, n = 2048) in the same run, the FLOPs of every workload
(``torch.utils.flop_counter.FlopCounterMode``; one posterior step = forward + ``.backward()`` to z with
the parameters frozen: matmul/conv FLOPs only), the achieved GFLOP/s and its share of the fp32 peak, and
variants of the posterior chain (the hot loop) against the listing's plain NCHW ``ConvTranspose2d`` layers:
ebmtool's generator (channels_last weights, GEMM forms of the first and image layers; also per ``mle``
iteration at mnist32), 2 threads vs 1 (the main tables run at ``--threads``, 1 by default), bf16 autocast
and bf16 + channels_last (with the gradient's error against fp32). See docs/performance.md.

    .venv/bin/python benchmarks/speed.py [--quick] [--sizes mnist32 svhn32] [--threads N]

Writes ``benchmarks/results/speed.json`` and prints rich tables. The machine may be shared: every cell
records wall and process CPU time (cpu/wall < threads means the process waited for a core), and the
load average is recorded at the start and the end.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ebmtool.config import GeneratorSpec  # noqa: E402
from ebmtool.methods import adaptive_nce as nce_mod  # noqa: E402
from ebmtool.methods import mle as mle_mod  # noqa: E402
from ebmtool.config import Langevin  # noqa: E402
from ebmtool.models import LatentModel  # noqa: E402
from ebmtool.training import RunContext, TrainData  # noqa: E402
from ebmtool.priors import GaussianPrior, RatioProductPrior  # noqa: E402
from ebmtool.sampling import frozen  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "speed.json"
SIZES = {  # arch: (nz, ngf, channels)
    "mnist32": (16, 32, 1),
    "svhn32": (100, 64, 3),
    "cifar32": (128, 128, 3),  # LEBM's CIFAR-10 generator (8x8 first layer); on a GPU (benchmarks/gpu_check.py)
}
DEFAULT_SIZES = ["mnist32", "svhn32"]
BATCH = 100
N_DATA = 500  # synthetic training set (only one batch is used; the NCE memory has one row per example)
SAMPLE_STEPS = 100


# ------------------------------------------------------------------------------------------------
# environment
# ------------------------------------------------------------------------------------------------
def cpu_info() -> dict[str, Any]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name") and model in ("", platform.machine(), platform.processor()):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags") and not flags:
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    wanted = ["avx2", "fma", "avx512f", "avx512_bf16", "avx512_fp16", "amx_tile", "amx_bf16", "amx_int8", "avx_vnni"]
    try:
        bf16_kernels = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        bf16_kernels = None
    return {
        "cpu": model, "logical_cpus": os.cpu_count(), "isa_flags": {f: f in flags for f in wanted},
        "torch": torch.__version__, "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "mkldnn_available": torch.backends.mkldnn.is_available(), "mkldnn_bf16_supported": bf16_kernels,
        "python": platform.python_version(), "hypervisor": "hypervisor" in flags,
    }


def load_snapshot() -> dict[str, Any]:
    la = os.getloadavg()
    try:
        running = int(open("/proc/loadavg").read().split()[3].split("/")[0])
    except (OSError, ValueError, IndexError):
        running = None
    return {"time": time.strftime("%Y-%m-%d %H:%M:%S"), "loadavg_1_5_15": [round(v, 2) for v in la],
            "running_tasks": running}


# ------------------------------------------------------------------------------------------------
# timing
# ------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one call of fn."""
        if self.cuda:
            torch.cuda.synchronize()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0


DEADLINE = [math.inf]  # perf_counter time after which cells stop at their minimum number of pairs


def ab(clock: Clock, fa: Callable, fb: Callable, *, pairs: int, budget_s: float, min_pairs: int = 1) -> dict[str, Any]:
    """Interleave A and B (A B, B A, A B, ...) until ``pairs`` pairs, the cell's time budget or the run's
    deadline (at least ``min_pairs``). Returns every run and the medians over adjacent pairs of t_B / t_A,
    by wall time and by process CPU time (with one thread the latter is the compute time, insensitive
    to time slices lost to other processes)."""
    ra: list[tuple[float, float]] = []
    rb: list[tuple[float, float]] = []
    start = time.perf_counter()
    for i in range(pairs):
        now = time.perf_counter()
        if i >= min_pairs and (now - start > budget_s or now > DEADLINE[0]):
            break
        if i % 2 == 0:
            ra.append(clock(fa))
            rb.append(clock(fb))
        else:
            rb.append(clock(fb))
            ra.append(clock(fa))
    return {"a": summary(ra), "b": summary(rb), "pairs": len(ra),
            "ratio_b_over_a": med_range([b[0] / a[0] for a, b in zip(ra, rb)]),
            "ratio_b_over_a_cpu": med_range([b[1] / a[1] for a, b in zip(ra, rb)])}


def summary(runs: list[tuple[float, float]]) -> dict[str, Any]:
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    return {"wall_s": [round(w, 4) for w in walls], "cpu_s": [round(c, 4) for c in cpus],
            "median_s": statistics.median(walls), "median_cpu_s": statistics.median(cpus), "min_s": min(walls),
            "cpu_per_wall": round(sum(cpus) / sum(walls), 3)}


def med_range(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


def matmul_peak(n: int, dtype: torch.dtype, reps: int, device: torch.device, clock: Clock) -> dict[str, Any]:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    runs = [clock(lambda: a @ b) for _ in range(reps)]
    gf = [2 * n**3 / w / 1e9 for w, _ in runs]
    gf_cpu = [2 * n**3 / max(c, 1e-9) / 1e9 for _, c in runs]
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "best_gflops": max(gf), "median_gflops": statistics.median(gf), "runs": [round(g, 1) for g in gf],
            "best_gflops_per_cpu_s": max(gf_cpu), "median_gflops_per_cpu_s": statistics.median(gf_cpu)}


@contextlib.contextmanager
def threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


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
        raise RuntimeError(f"{module.__name__}.fit did not reach train_loop: update benchmarks/speed.py")
    step = box["step"]
    cells = dict(zip(step.__code__.co_freevars, (c.cell_contents for c in step.__closure__ or ())))
    return step, cells


# ------------------------------------------------------------------------------------------------
# the reference: the LEBM paper's listing (Pang et al. 2020, appendix D), literally
# ------------------------------------------------------------------------------------------------
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


# ------------------------------------------------------------------------------------------------
# variants: channels_last, threads, bf16 autocast (posterior chain = the hot loop), channels_last (mle iteration)
# ------------------------------------------------------------------------------------------------
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


def variants(sb: SizeBench, clock: Clock, p: dict[str, Any], alt_threads: int) -> list[dict]:
    x, steps = sb.x, p["variant_steps"]
    m_cl = sb.mle_model  # ebmtool's generator: channels_last weights, GEMM first and image layers on a CPU
    m = copy.deepcopy(m_cl)  # same weights, the listing's layers in NCHW: the baseline of every variant
    listing_layers(m.generator)
    chain = Langevin(steps=steps, step_size=0.1)
    base = lambda: m.infer(x, chain)  # noqa: E731
    cl = lambda: m_cl.infer(x, chain)  # noqa: E731
    z_fixed = torch.randn(BATCH, sb.nz, device=sb.device)
    g_ref = grad_z(m, x, z_fixed)
    autocast_bf16 = lambda: torch.autocast(sb.device.type, dtype=torch.bfloat16)  # noqa: E731

    def bf16(fn):
        def run():
            with autocast_bf16():
                return fn()
        return run

    def other_threads():
        with threads(alt_threads):
            base()

    def err(model, autocast: bool = False) -> dict[str, float]:
        """Relative error of grad_z log p(x, z) against fp32 contiguous, and the error it puts into one
        Langevin step (s^2/2 * dgrad, s = 0.1) relative to that step's noise (s * eps, expected norm s*sqrt(n))."""
        with autocast_bf16() if autocast else contextlib.nullcontext():
            g = grad_z(model, x, z_fixed)
        d = (g.float() - g_ref).norm()
        s = 0.1
        return {"grad": float(d / g_ref.norm()), "step_error_over_noise": float(0.5 * s * s * d / (s * math.sqrt(g.numel())))}

    post = sb.flops["posterior_step"] * steps
    specs = [  # scope, name, variant fn, gradient error vs fp32 contiguous, FLOPs per call
        ("posterior chain", "ebmtool generator (channels_last + GEMM layers)", cl, err(m_cl), post),
        ("posterior chain", f"threads {alt_threads} (vs {torch.get_num_threads()})", other_threads, err(m), post),
        ("posterior chain", "bf16 autocast", bf16(base), err(m, True), post),
        ("posterior chain", "bf16 autocast + ebmtool generator", bf16(cl), err(m_cl, True), post),
    ]
    out = []
    for scope, name, fn, rel_err, fl in specs:
        base(), fn()  # warm-up both (new oneDNN primitives for a new layout / dtype)
        r = ab(clock, base, fn, pairs=p["variant_pairs"], budget_s=p["variant_budget_s"])
        out.append(variant_row(sb.arch, scope, name, f"{steps} steps", steps, "steps/s", r, fl, rel_err))
    if p.get("iteration_variant_pairs"):
        fa, fb = mle_step_contiguous(sb), (lambda: sb.mle_step(sb.idx, sb.x, 0))
        fa()  # warm-up (fresh Adam state, new primitives)
        r = ab(clock, fa, fb, pairs=p["iteration_variant_pairs"], budget_s=p["variant_budget_s"])
        out.append(variant_row(sb.arch, "mle iteration", "ebmtool generator (channels_last + GEMM layers)", "1 iteration", 1, "it/s", r,
                               sb.flops["mle"], None))
    return out


def variant_row(arch, scope, name, what, items, unit, r, flops, rel_err) -> dict[str, Any]:
    rel_err = rel_err or {}
    return {
        "size": arch, "scope": scope, "variant": name, "per_call": what, "unit": unit, "pairs": r["pairs"],
        "baseline_rate": items / r["a"]["median_s"], "variant_rate": items / r["b"]["median_s"],
        "speedup": 1 / r["ratio_b_over_a"]["median"],
        "speedup_range": [1 / r["ratio_b_over_a"]["max"], 1 / r["ratio_b_over_a"]["min"]],
        "speedup_cpu_time": 1 / r["ratio_b_over_a_cpu"]["median"],
        "baseline_gflops": flops / r["a"]["median_s"] / 1e9, "variant_gflops": flops / r["b"]["median_s"] / 1e9,
        "baseline_gflops_per_cpu_s": flops / r["a"]["median_cpu_s"] / 1e9,
        "grad_rel_err_vs_fp32": rel_err.get("grad"), "step_error_over_noise": rel_err.get("step_error_over_noise"),
        "baseline_cpu_per_wall": r["a"]["cpu_per_wall"],
        "variant_cpu_per_wall": r["b"]["cpu_per_wall"], "runs": r,
    }


# ------------------------------------------------------------------------------------------------
# main
# ------------------------------------------------------------------------------------------------
WORKLOADS = [  # name, unit, items per call, ebmtool fn, reference fn (always fp32: the listing)
    ("mle", "it/s", 1, "ebm_mle", "ref_mle_iter"),
    ("adaptive-nce", "it/s", 1, "ebm_nce", "ref_nce_iter"),
    ("mle bf16", "it/s", 1, "ebm_mle_bf16", "ref_mle_iter"),  # only where bf16 is native (--precision auto's rule)
    ("adaptive-nce bf16", "it/s", 1, "ebm_nce_bf16", "ref_nce_iter"),
    ("sample", "img/s", BATCH, "ebm_sample", "ref_sample"),
    ("reconstruct", "img/s", BATCH, "ebm_reconstruct", "ref_reconstruct"),
]


def plan(quick: bool, arch: str, native_bf16: bool = False) -> dict[str, Any]:
    """Pairs and time budgets per cell. An svhn32 iteration takes ~20-40 s on a shared 2-core CPU, so svhn32
    cells run few pairs (quick: only sample and reconstruct; the mle-iteration channels_last variant only at
    mnist32); the JSON records how many pairs each cell ran."""
    big = arch in ("svhn32", "cifar32")
    all_w = [w[0] for w in WORKLOADS if native_bf16 or not w[0].endswith("bf16")]
    if quick:
        return {"pairs": 1 if big else 2, "budget_s": 0.0 if big else 10.0,
                "workloads": ["sample", "reconstruct"] if big else all_w,
                "variant_steps": 2 if big else 3, "variant_pairs": 1 if big else 2,
                "variant_budget_s": 0.0 if big else 4.0, "iteration_variant_pairs": 0 if big else 1}
    return {"pairs": 3 if big else 6, "budget_s": 90.0 if big else 40.0, "workloads": all_w,
            "variant_steps": 3 if big else 5, "variant_pairs": 3 if big else 6,
            "variant_budget_s": 15.0 if big else 20.0, "iteration_variant_pairs": 0 if big else 4}


def listing_layers(module: nn.Module) -> None:
    """The listing's generator: plain ``nn.ConvTranspose2d`` for every layer and the NCHW layout (ebmtool's
    generators use channels_last weights and GEMM forms of the first and image layers on a CPU)."""
    from ebmtool.nets.generators import GemmConvTranspose2d

    for m in module.modules():
        if isinstance(m, GemmConvTranspose2d):
            m.__class__ = nn.ConvTranspose2d  # same parameters; the subclass only changes forward
    module.to(memory_format=torch.contiguous_format)


def hot_loop(var_rows: list[dict], flops: dict, peak: float, peak_cpu: float) -> dict[str, Any]:
    """The fp32 posterior chain as ebmtool runs it (channels_last generator): steps/s, GFLOP/s, % of the peak."""
    hot = {}
    for arch in flops:
        runs = [(w, c) for v in var_rows if v["size"] == arch and v["scope"] == "posterior chain"
                and v["variant"].startswith("ebmtool generator")
                for w, c in zip(v["runs"]["b"]["wall_s"], v["runs"]["b"]["cpu_s"])]
        if not runs:
            continue
        k = int(next(v["per_call"] for v in var_rows if v["size"] == arch).split()[0])
        w, c = statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs)
        fl = flops[arch]["posterior_step"]
        hot[arch] = {"posterior_step_gflop": fl / 1e9, "steps_per_s": k / w, "gflops": k * fl / w / 1e9,
                     "pct_of_peak": 100 * k * fl / w / 1e9 / peak, "gflops_per_cpu_s": k * fl / c / 1e9,
                     "pct_of_peak_cpu_time": 100 * k * fl / c / 1e9 / peak_cpu, "runs": len(runs)}
    return hot


def markdown(r: dict[str, Any]) -> str:
    """docs/performance.md's tables from a results JSON (``--report FILE``)."""
    e = r["env"]
    peak, peak_cpu = r["peak_fp32_gflops"], r["peak_fp32_gflops_per_cpu_s"]
    hot = hot_loop(r["variants"], r["flops"], peak, peak_cpu)
    mm = r["matmul"]
    out = [f"Run of {e['load_start']['time']}: **{e['cpu']}**, {e['logical_cpus']} logical CPUs, torch {e['torch']}, "
           f"{e['threads']} thread(s), batch {BATCH}, {e['mode']} mode, {e['elapsed_s']:.0f} s; load average "
           f"{e['load_start']['loadavg_1_5_15'][0]} → {e['load_end']['loadavg_1_5_15'][0]}. Matmul 2048 fp32: best "
           f"{peak:.0f} GFLOP/s ({peak_cpu:.0f} per CPU second; samples "
           + ", ".join(f"{x['best_gflops']:.0f}" for x in mm["fp32"]) + f"), bf16 {mm['bf16'][0]['best_gflops']:.0f}.",
           "", "| size | workload | ebmtool | reference (listing, fp32) | speed-up wall, median (range) | speed-up CPU time | "
           "pairs | GFLOP / call | GFLOP/s | % peak (CPU s) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for w in r["workloads"]:
        lo, hi = w["speedup_range"]
        out.append(f"| {w['size']} | {w['workload']} | {w['ebmtool_rate']:.3g} {w['unit']} | {w['reference_rate']:.3g} "
                   f"{w['unit']} | **{w['speedup']:.2f}** ({lo:.2f}–{hi:.2f}) | {w['speedup_cpu_time']:.2f} | {w['pairs']} | "
                   f"{w['gflop_per_call']:.1f} | {w['ebmtool_gflops']:.1f} | {w['ebmtool_pct_of_peak_cpu_time']:.0f} |")
    out += ["", "| size | scope | variant (vs fp32, NCHW generator) | baseline | variant | speed-up wall, median (range) | "
            "speed-up CPU time | pairs | grad rel. err | step err / noise |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for v in r["variants"]:
        lo, hi = v["speedup_range"]
        ge = "–" if v["grad_rel_err_vs_fp32"] is None else f"{v['grad_rel_err_vs_fp32']:.1e}"
        se = "–" if v["step_error_over_noise"] is None else f"{v['step_error_over_noise']:.1e}"
        cpu = "n/a" if v["variant"].startswith("threads") else f"{v['speedup_cpu_time']:.2f}"
        out.append(f"| {v['size']} | {v['scope']} ({v['per_call']}) | {v['variant']} | {v['baseline_rate']:.3g} {v['unit']} | "
                   f"{v['variant_rate']:.3g} {v['unit']} | **{v['speedup']:.2f}** ({lo:.2f}–{hi:.2f}) | {cpu} | {v['pairs']} | "
                   f"{ge} | {se} |")
    out.append("")
    for arch, h in hot.items():
        out.append(f"Hot loop at {arch} (fp32 posterior step as ebmtool runs it, {h['posterior_step_gflop']:.2f} GFLOP): "
                   f"{h['steps_per_s']:.2f} steps/s = {h['gflops']:.1f} GFLOP/s = **{h['pct_of_peak']:.0f} %** of the "
                   f"fp32 matmul peak ({h['pct_of_peak_cpu_time']:.0f} % per CPU second; {h['runs']} runs).  ")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="few repeats, svhn32 only sample/reconstruct (< ~3 min)")
    ap.add_argument("--sizes", nargs="+", default=DEFAULT_SIZES, choices=list(SIZES))
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads of the main tables (0: torch's default). 1 by default: on a shared machine "
                         "2 OpenMP threads wait for each other at every op (the threads variant measures the other count)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deadline-s", type=float, default=None,
                    help="after this many seconds cells stop at one A/B pair (default: 120 quick, 360 full)")
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--report", metavar="JSON", help="print the markdown tables of a results file and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(markdown(json.loads(Path(args.report).read_text())))
        return {}
    from rich.console import Console
    from rich.table import Table

    con = Console(width=None if sys.stdout.isatty() else 260)
    t_start = time.perf_counter()
    DEADLINE[0] = t_start + (args.deadline_s or (120.0 if args.quick else 360.0))
    if args.threads:
        torch.set_num_threads(args.threads)
    main_threads = torch.get_num_threads()
    alt_threads = 2 if main_threads == 1 else 1
    device = torch.device(args.device)
    clock = Clock(device)
    env = {**cpu_info(), "threads": main_threads, "interop_threads": torch.get_num_interop_threads(),
           "device": str(device), "precision": "fp32 (bf16 only where a variant says so)",
           "mode": "quick" if args.quick else "full", "load_start": load_snapshot()}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    con.print(f"[bold]{env['cpu']}[/], {env['logical_cpus']} logical CPUs, torch {env['torch']}, "
              f"{main_threads} thread(s), {env['precision']}; load {env['load_start']['loadavg_1_5_15']}")
    con.print("ISA: " + " ".join(f"{k}={'yes' if v else 'no'}" for k, v in env["isa_flags"].items())
              + f"; oneDNN bf16 supported: {env['mkldnn_bf16_supported']}")

    reps = 3 if args.quick else 5
    alt_key = f"fp32_{alt_threads}threads"
    peaks = {"fp32": [matmul_peak(2048, torch.float32, reps, device, clock)],
             "bf16": [matmul_peak(2048, torch.bfloat16, reps, device, clock)]}
    with threads(alt_threads):
        peaks[alt_key] = [matmul_peak(2048, torch.float32, reps, device, clock)]
    con.print(f"matmul 2048: fp32 {peaks['fp32'][0]['best_gflops']:.1f} GFLOP/s at {main_threads} thread(s), "
              f"{peaks[alt_key][0]['best_gflops']:.1f} at {alt_threads}; bf16 {peaks['bf16'][0]['best_gflops']:.1f}")

    from ebmtool.runtime import resolve as resolve_precision

    native_bf16 = resolve_precision("auto", device, warn=False).name == "bf16"  # the rule of --precision auto
    rows, var_rows, flops = [], [], {}
    for arch in args.sizes:
        p = plan(args.quick, arch, native_bf16)
        t0 = time.perf_counter()
        sb = SizeBench(arch, device, args.seed)
        sb.warm_up()
        flops[arch] = sb.flops
        con.print(f"[bold]{arch}[/] (nz {sb.nz}, ngf {sb.ngf}, {sb.ch} ch, batch {BATCH}): built + warmed "
                  f"in {time.perf_counter() - t0:.1f}s; posterior step {sb.flops['posterior_step'] / 1e9:.2f} GFLOP")
        for name, unit, items, ebm_fn, ref_fn in WORKLOADS:
            if name not in p["workloads"]:
                continue
            t0 = time.perf_counter()
            r = ab(clock, getattr(sb, ebm_fn), getattr(sb, ref_fn), pairs=p["pairs"], budget_s=p["budget_s"])
            fl = sb.flops[name.split()[0]]
            row = {"size": arch, "workload": name, "unit": unit, "pairs": r["pairs"],
                   "ebmtool_rate": items / r["a"]["median_s"], "reference_rate": items / r["b"]["median_s"],
                   "speedup": r["ratio_b_over_a"]["median"],
                   "speedup_range": [r["ratio_b_over_a"]["min"], r["ratio_b_over_a"]["max"]],
                   "speedup_cpu_time": r["ratio_b_over_a_cpu"]["median"],
                   "gflop_per_call": fl / 1e9, "ebmtool_gflops": fl / r["a"]["median_s"] / 1e9,
                   "ebmtool_gflops_per_cpu_s": fl / r["a"]["median_cpu_s"] / 1e9,
                   "ebmtool_rate_per_cpu_s": items / r["a"]["median_cpu_s"],
                   "reference_rate_per_cpu_s": items / r["b"]["median_cpu_s"],
                   "cpu_per_wall": r["a"]["cpu_per_wall"], "runs": r}
            rows.append(row)
            con.print(f"  {name:13s} ebmtool {row['ebmtool_rate']:8.3f} {unit:5s} reference {row['reference_rate']:8.3f} "
                      f"{unit:5s} speed-up {row['speedup']:.3f} (CPU time {row['speedup_cpu_time']:.3f}; "
                      f"{r['pairs']} pairs, {time.perf_counter() - t0:.0f}s)")
        t0 = time.perf_counter()
        vr = variants(sb, clock, p, alt_threads)
        var_rows += vr
        for v in vr:
            con.print(f"  {v['scope']:15s} {v['variant']:30s} {v['speedup']:.3f}x (CPU time {v['speedup_cpu_time']:.3f}; "
                      f"{v['pairs']} pairs)")
        con.print(f"  variants: {time.perf_counter() - t0:.0f}s")
        del sb
        peaks["fp32"].append(matmul_peak(2048, torch.float32, reps, device, clock))

    peak = max(pk["best_gflops"] for pk in peaks["fp32"])
    peak_cpu = max(pk["best_gflops_per_cpu_s"] for pk in peaks["fp32"])
    peak_alt = peaks[alt_key][0]["best_gflops"]
    for row in rows:
        row["ebmtool_pct_of_peak"] = 100 * row["ebmtool_gflops"] / peak
        row["ebmtool_pct_of_peak_cpu_time"] = 100 * row["ebmtool_gflops_per_cpu_s"] / peak_cpu
    for v in var_rows:
        v["baseline_pct_of_peak"] = 100 * v["baseline_gflops"] / peak
        v["baseline_pct_of_peak_cpu_time"] = 100 * v["baseline_gflops_per_cpu_s"] / peak_cpu
        v["variant_pct_of_peak"] = 100 * v["variant_gflops"] / (peak_alt if v["variant"].startswith("threads") else peak)
    hot = hot_loop(var_rows, flops, peak, peak_cpu)
    env["load_end"] = load_snapshot()
    env["elapsed_s"] = round(time.perf_counter() - t_start, 1)
    result = {"env": env, "peak_fp32_gflops": peak, "peak_fp32_gflops_per_cpu_s": peak_cpu, "matmul": peaks,
              "flops": flops, "hot_loop": hot, "workloads": rows, "variants": var_rows,
              "notes": {
                  "speedup": "median over adjacent A/B pairs of t_reference / t_ebmtool (> 1: ebmtool faster); "
                             "speedup_cpu_time: the same with process CPU time",
                  "reference": "LEBM paper listing (Pang et al. 2020, appendix D): two autograd.grad per posterior step, "
                               ".data updates, parameters requiring grad; decode under no_grad",
                  "flops": "FlopCounterMode (matmul/conv only); a Langevin step = forward + backward to z, params frozen",
                  "pct_of_peak": "achieved GFLOP/s / best fp32 2048x2048 matmul GFLOP/s measured in this run "
                                 "(pct_of_peak_cpu_time: both per process-CPU second)",
                  "cpu_per_wall": "process CPU seconds / wall seconds; below the thread count = waiting for a core",
                  "rate_per_cpu_s": "items per process-CPU second: with 1 thread, about the rate on an idle core",
                  "step_error_over_noise": "norm of (s^2/2) * (grad_variant - grad_fp32) over the expected norm of the "
                                           "step's noise s * eps, s = 0.1, at a random z on the untrained networks",
                  "variants": "speedup = t_baseline / t_variant (> 1: the variant is faster); baseline = fp32, "
                              "contiguous, the main thread count",
              }}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))

    la0, la1 = env["load_start"]["loadavg_1_5_15"][0], env["load_end"]["loadavg_1_5_15"][0]
    t = Table(title=f"ebmtool vs the LEBM listing — {env['cpu']}, {env['logical_cpus']} CPUs, torch {env['torch']}, "
                    f"fp32, {main_threads} thread(s), batch {BATCH}; load {la0}→{la1}")
    for c in ["size", "workload", "ebmtool", "reference", "ebmtool per CPU s", "speed-up wall (range)", "speed-up CPU",
              "pairs", "GFLOP/call", "GFLOP/s", "% peak", "% peak (CPU s)", "cpu/wall"]:
        t.add_column(c, justify="left" if c in ("size", "workload") else "right")
    for r in rows:
        t.add_row(r["size"], r["workload"], f"{r['ebmtool_rate']:.3g} {r['unit']}", f"{r['reference_rate']:.3g} {r['unit']}",
                  f"{r['ebmtool_rate_per_cpu_s']:.3g} {r['unit']}", f"{r['speedup']:.2f} ({r['speedup_range'][0]:.2f}–{r['speedup_range'][1]:.2f})",
                  f"{r['speedup_cpu_time']:.2f}", str(r["pairs"]), f"{r['gflop_per_call']:.2f}",
                  f"{r['ebmtool_gflops']:.1f}", f"{r['ebmtool_pct_of_peak']:.0f}",
                  f"{r['ebmtool_pct_of_peak_cpu_time']:.0f}", f"{r['cpu_per_wall']:.2f}")
    con.print(t)
    t = Table(title=f"variants vs fp32 contiguous at {main_threads} thread(s) — matmul peak fp32 {peak:.0f} "
                    f"({peak_cpu:.0f} per CPU s), fp32 {alt_threads} threads {peak_alt:.0f}, "
                    f"bf16 {peaks['bf16'][0]['best_gflops']:.0f} GFLOP/s")
    for c in ["size", "scope", "variant", "baseline", "variant rate", "speed-up wall (range)", "speed-up CPU", "pairs",
              "baseline GFLOP/s (% peak)", "variant GFLOP/s", "grad rel. err", "step err / noise"]:
        t.add_column(c, justify="left" if c in ("size", "scope", "variant") else "right")
    for v in var_rows:
        t.add_row(v["size"], f"{v['scope']} ({v['per_call']})", v["variant"], f"{v['baseline_rate']:.3g} {v['unit']}",
                  f"{v['variant_rate']:.3g} {v['unit']}",
                  f"{v['speedup']:.2f} ({v['speedup_range'][0]:.2f}–{v['speedup_range'][1]:.2f})",
                  "n/a" if v["variant"].startswith("threads") else f"{v['speedup_cpu_time']:.2f}", str(v["pairs"]),
                  f"{v['baseline_gflops']:.1f} ({v['baseline_pct_of_peak']:.0f}%)", f"{v['variant_gflops']:.1f}",
                  "-" if v["grad_rel_err_vs_fp32"] is None else f"{v['grad_rel_err_vs_fp32']:.1e}",
                  "-" if v["step_error_over_noise"] is None else f"{v['step_error_over_noise']:.1e}")
    con.print(t)
    for arch, h in hot.items():
        con.print(f"hot loop {arch}: posterior step {h['posterior_step_gflop']:.2f} GFLOP, {h['steps_per_s']:.2f} steps/s, "
                  f"{h['gflops']:.1f} GFLOP/s = {h['pct_of_peak']:.0f}% of the fp32 matmul peak "
                  f"({h['pct_of_peak_cpu_time']:.0f}% per CPU second)")
    con.print(f"wrote {out} ({env['elapsed_s']:.0f}s; load at end {env['load_end']['loadavg_1_5_15']})")
    return result


if __name__ == "__main__":
    main()
