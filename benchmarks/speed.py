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

The measurements live in ``benchmarks/speedlib/`` (one module each: clock, peak, reference, sizes, variants,
report); this file is the entry point: the command line, the run and the tables.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from speedlib.clock import DEADLINE, Clock, ab, threads  # noqa: E402
from speedlib.common import BATCH, DEFAULT_SIZES, SIZES, WORKLOADS  # noqa: E402
from speedlib.peak import matmul_peak  # noqa: E402
from speedlib.report import cpu_info, load_snapshot, markdown, plan  # noqa: E402
# capture_step is not used here: benchmarks/gpu_check.py imports it from this module
from speedlib.sizes import SizeBench, capture_step  # noqa: E402,F401
from speedlib.variants import hot_loop, variants  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "speed.json"


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
