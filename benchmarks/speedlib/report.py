"""The environment (CPU, ISA flags, load), the pairs and budgets per cell, and docs/performance.md's markdown tables."""

from __future__ import annotations

import os
import platform
import time
from typing import Any

import torch

from .common import BATCH, WORKLOADS
from .variants import hot_loop


def cpu_info() -> dict[str, Any]:
    from ebmtool import runtime  # the one CPU name (model + widest ISA) every row and figure carries

    model, flags = runtime.cpu_name(), runtime.cpu_flags()
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
