"""Variants of the posterior chain (the hot loop): channels_last + GEMM generator, the other thread count, bf16
autocast; channels_last per mle iteration; and the hot loop's share of the matmul peak."""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
from typing import Any

import torch

from ebmtool.config import Langevin

from .clock import Clock, ab, threads
from .common import BATCH
from .reference import listing_layers
from .sizes import SizeBench, grad_z, mle_step_contiguous


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
