"""Ground-truth benchmark of the latent priors on known 2-D targets (the larger version of
tests/test_ground_truth.py).

Targets: N(mu, I) with |mu| = 0.5, 1, 2 (mu along (0.6, 0.8)) and the synthetic dataset's 8-Gaussian ring
(radius 2, std 0.25). For each target and seed:

* adaptive multi-stage NCE (``fit_ratio_prior``) with 1, 2, 4, 8 stages at the SAME total number of NCE
  iterations (negatives of stage k > 0 by SIR from p0, the consistent sampler), plus a run with short-run
  Langevin negatives from N(0, I) (the image-scale method's ``--prior-sampler langevin``; --quick: 2 stages,
  30 steps of size 0.1; full: 4 stages, 60 steps; ring only) to show the sampler's share;
* LEBM's prior update alone (``fit_energy_prior``).

Columns: KL(target || prior) by grid quadrature (nats; the prior normalised on the grid); RMSE of the learned
log-ratio log p(z)/p0(z) against the true one over target samples ("rmse tgt") and over target + N(0, I)
samples ("rmse both") -- ratio priors as learned (NCE estimates the normalised ratio), LEBM's f centred (it
is unnormalised); "sample lp": mean target log-density of 2,000 prior samples (ratio priors: SIR from 1e5
proposals -- 32768 with --quick; LEBM: its own short-run Langevin), to set against the target's own value and
N(0, I)'s, printed with the target; "mode dist": their mean distance to the nearest mode (to mu for the
Gaussians); "ESS %": effective sample size of those N(0, I) proposals weighted by the prior, in % (how well
SIR can sample it); "fit s": wall seconds of one fit. Mean ± std over seeds.

    .venv/bin/python benchmarks/ground_truth.py [--quick] [--seeds N] [--threads T] [--out PATH]

Writes benchmarks/results/ground_truth.json (per-seed rows, summary, machine, config).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
import warnings
from pathlib import Path

import torch

from ebmtool import runtime
from ebmtool.data.sources import ring_means
from ebmtool.eval import ground_truth as G
from ebmtool.priors import GaussianPrior
from ebmtool.sampling import sir

ROOT = Path(__file__).resolve().parents[1]

RING = "ring (8 modes, r=2, std 0.25)"
CONFIGS = {
    "quick": dict(seeds=1, total_iters=400, stages=[1, 2, 4, 8], batch=256, lr=1e-3, sir_pool=32768,
                  langevin=dict(stages=2, steps=30, step_size=0.1, targets=[RING]),
                  lebm=dict(iters=150, batch=128, lr=3e-3, hidden=64, steps=40, step_size=0.4)),
    "full": dict(seeds=3, total_iters=1600, stages=[1, 2, 4, 8], batch=256, lr=1e-3, sir_pool=100_000,
                 langevin=dict(stages=4, steps=60, step_size=0.1, targets=[RING]),
                 lebm=dict(iters=600, batch=128, lr=1e-3, hidden=200, steps=60, step_size=0.4)),
}
GAPS = [0.5, 1.0, 2.0]
N_EVAL = 2000


def targets():
    out = {}
    for g in GAPS:
        mu = [0.6 * g, 0.8 * g]
        s, lp = G.gaussian_target(mu)
        out[f"N(mu,I) |mu|={g:g}"] = dict(sample=s, log_p=lp, true_log_r=G.gaussian_log_ratio(mu),
                                          modes=torch.tensor([mu]), lim=max(6.0, max(mu) + 5.0))
    s, lp = G.ring_target()
    out[RING] = dict(sample=s, log_p=lp, true_log_r=lambda z: lp(z) - G.gaussian_log_prob(z),
                                                 modes=ring_means(), lim=6.0)
    return out


def evaluate(prior, t, z_tgt, z_both, *, centre: bool, samples: torch.Tensor | None, seed: int, pool: int) -> dict:
    """Metrics of one fitted prior; ``samples=None``: draw them by SIR from the same ``pool`` proposals that
    give the ESS (ratio priors), else the given ones (LEBM's short-run samples)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        props = prior.base_sample(pool)
        with torch.no_grad():
            lw = prior.tilt(props)
        if samples is None:
            samples = sir(lambda _: lw, props, N_EVAL)
    w = torch.softmax(lw.double(), 0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        kl = G.kl_on_grid(t["log_p"], prior.log_prob, lim=t["lim"])
    return {
        "kl": kl,
        "kl_edge_warning": bool(caught),
        "rmse_tgt": G.log_ratio_error(prior.tilt, t["true_log_r"], z_tgt, center=centre),
        "rmse_both": G.log_ratio_error(prior.tilt, t["true_log_r"], z_both, center=centre),
        "sample_lp": float(t["log_p"](samples).mean()),
        "mode_dist": G.mode_distance(samples, t["modes"]),
        "ess_pct": float(100.0 / (w.pow(2).sum() * len(w))),
    }


def run(cfg: dict, seeds: list[int], log) -> list[dict]:
    rows = []
    for name, t in targets().items():
        with torch.random.fork_rng():
            torch.manual_seed(12345)
            z_tgt = t["sample"](N_EVAL)
            z_base = torch.randn(N_EVAL, 2)
        z_both = torch.cat([z_tgt, z_base])
        ref = {"kl_base": G.kl_on_grid(t["log_p"], GaussianPrior(2).log_prob, lim=t["lim"]),
               "lp_target": float(t["log_p"](z_tgt).mean()), "lp_base": float(t["log_p"](z_base).mean()),
               "dist_target": G.mode_distance(z_tgt, t["modes"]), "dist_base": G.mode_distance(z_base, t["modes"])}
        runs = [("adaptive-nce", k, "sir") for k in cfg["stages"]]
        if name in cfg["langevin"]["targets"]:
            runs.append(("adaptive-nce", cfg["langevin"]["stages"], "langevin"))
        runs.append(("lebm", None, "langevin"))
        for method, stages, sampler in runs:
            for seed in seeds:
                t0 = time.perf_counter()
                if method == "lebm":
                    L = cfg["lebm"]
                    prior = G.fit_energy_prior(t["sample"], iters=L["iters"], batch=L["batch"], lr=L["lr"], seed=seed,
                                               steps=L["steps"], step_size=L["step_size"], hidden=L["hidden"])
                    fit_s = time.perf_counter() - t0
                    samples = G.prior_samples(prior, N_EVAL, seed=seed + 1000, steps=L["steps"], step_size=L["step_size"])
                    iters = L["iters"]
                else:
                    Lg = cfg["langevin"]
                    iters = cfg["total_iters"]
                    prior = G.fit_ratio_prior(t["sample"], stages=stages, iters_per_stage=iters // stages,
                                              batch=cfg["batch"], lr=cfg["lr"], seed=seed, prior_sampler=sampler,
                                              langevin_steps=Lg["steps"], step_size=Lg["step_size"],
                                              sir_pool=cfg["sir_pool"])
                    fit_s = time.perf_counter() - t0
                    samples = None  # SIR, in evaluate
                m = evaluate(prior, t, z_tgt, z_both, centre=(method == "lebm"), samples=samples, seed=seed + 1000,
                             pool=cfg["sir_pool"])
                row = {"target": name, "method": method, "stages": stages, "sampler": sampler, "seed": seed,
                       "iters": iters, "fit_s": fit_s, "eval_s": time.perf_counter() - t0 - fit_s, **m, **ref}
                rows.append(row)
                log(f"  {name:30s} {method:12s} stages={stages!s:4s} {sampler:8s} seed={seed}  KL {m['kl']:.3f}  "
                    f"rmse {m['rmse_tgt']:.3f}/{m['rmse_both']:.3f}  lp {m['sample_lp']:.2f}  {fit_s:.1f}s")
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["method"], r["stages"], r["sampler"]), []).append(r)
    out = []
    for (target, method, stages, sampler), rs in groups.items():
        s = {"target": target, "method": method, "stages": stages, "sampler": sampler, "seeds": len(rs),
             "iters": rs[0]["iters"]}
        s["kl_edge_warning"] = any(r["kl_edge_warning"] for r in rs)
        for key in ("kl", "rmse_tgt", "rmse_both", "sample_lp", "mode_dist", "ess_pct", "fit_s", "eval_s"):
            v = [r[key] for r in rs]
            s[key] = statistics.fmean(v)
            s[key + "_std"] = statistics.stdev(v) if len(v) > 1 else 0.0
        for key in ("kl_base", "lp_target", "lp_base", "dist_target", "dist_base"):
            s[key] = rs[0][key]
        out.append(s)
    return out


def fmt(s: dict, key: str, digits: int = 3) -> str:
    return f"{s[key]:.{digits}f}" + (f" ± {s[key + '_std']:.{digits}f}" if s["seeds"] > 1 else "")


def print_table(summary: list[dict], machine: dict, cfg_name: str) -> None:
    title = (f"ground truth on 2-D latents ({cfg_name}; {summary[0]['seeds']} seed(s); "
             f"{machine['cpu']}, {machine['cores']} cores, {machine['threads']} torch thread(s), "
             f"load {machine['loadavg'][0]:.1f})")
    header = ["target", "method", "stages", "neg. sampler", "iters", "KL(tgt||prior)", "rmse tgt", "rmse both",
              "sample lp", "mode dist", "ESS %", "fit s"]
    body = []
    last = None
    for s in summary:
        if s["target"] != last:
            body.append([s["target"], "N(0,I) / target", "", "", "", f"{s['kl_base']:.3f} / 0",
                         "", "", f"{s['lp_base']:.2f} / {s['lp_target']:.2f}",
                         f"{s['dist_base']:.3f} / {s['dist_target']:.3f}", "", ""])
            last = s["target"]
        neg = "p0 exact" if s["method"] == "adaptive-nce" and s["stages"] == 1 else s["sampler"]
        if s["method"] == "lebm":
            neg = "short-run"
        body.append(["", s["method"], "" if s["stages"] is None else str(s["stages"]), neg, str(s["iters"]),
                     fmt(s, "kl") + ("*" if s["kl_edge_warning"] else ""), fmt(s, "rmse_tgt"), fmt(s, "rmse_both"), fmt(s, "sample_lp", 2),
                     fmt(s, "mode_dist"), f"{s['ess_pct']:.1f}", f"{s['fit_s']:.1f}"])
    try:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=title)
        for h in header:
            table.add_column(h, justify="left" if h in ("target", "method", "neg. sampler") else "right")
        for row in body:
            table.add_row(*row)
        Console(width=200).print(table)
    except ImportError:  # plain text
        print(title)
        widths = [max(len(h), *(len(r[i]) for r in body)) for i, h in enumerate(header)]
        print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
        for row in body:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths)))
    print("KL: nats, grid quadrature; rmse: learned vs true log p/p0 (ratio priors as learned, LEBM centred); "
          "sample lp / mode dist: mean target log-density / distance to nearest mode of prior samples "
          "(the first row of each target: N(0, I) / target samples); * = the prior puts > 1e-3 of its grid mass "
          "near the box edge (its KL is a lower bound).")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="1 seed, 400 NCE iterations (about 2-3 minutes)")
    ap.add_argument("--seeds", type=int, default=None, help="number of seeds (default: 1 quick, 3 full)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1; the nets are small)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ground_truth.json")
    a = ap.parse_args(argv)
    name = "quick" if a.quick else "full"
    cfg = dict(CONFIGS[name])
    if a.seeds is not None:
        cfg["seeds"] = a.seeds
    torch.set_num_threads(a.threads)
    machine = {"cpu": runtime.cpu_name(), "cores": os.cpu_count(), "threads": torch.get_num_threads(),
               "platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
               "loadavg": list(os.getloadavg()) if hasattr(os, "getloadavg") else [math.nan] * 3}
    print(f"{name}: {machine['cpu']} ({machine['cores']} cores, load {machine['loadavg'][0]:.1f}), "
          f"torch {machine['torch']}, {machine['threads']} thread(s)", flush=True)
    t0 = time.perf_counter()
    rows = run(cfg, list(range(cfg["seeds"])), lambda m: print(m, flush=True))
    total = time.perf_counter() - t0
    summary = summarise(rows)
    print_table(summary, machine, name)
    print(f"total wall time {total:.0f} s")
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps({"mode": name, "config": cfg, "machine": machine, "total_wall_s": total,
                                 "summary": summary, "rows": rows}, indent=1))
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
