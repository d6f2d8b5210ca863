"""Data-parallel scaling under torchrun on this machine's CPU (issue "Speed and scale", item 5). Not a test.

Times the same ``fit-prior --method mle`` command (cpu preset, generator mnist32 at ``--ngf`` (16), global batch 100,
``--epochs`` over the first ``--n`` images of the shared MNIST test set at 32x32, or of the bundled digits
upscaled to 32x32 when MNIST is absent) with 1 process and with torchrun at 2 (and more) gloo ranks, each
process at 1 thread, and records wall time, iterations/s and the final generator loss per run in
``benchmarks/results/ddp_scaling.json`` (one entry appended per invocation). The 1-process and N-rank runs share the global batch, so their losses
should agree up to the chains' Monte Carlo noise.

    .venv/bin/python benchmarks/ddp_scaling.py [--ranks 1 2] [--epochs 2] [--n 2000] [--ngf 16]

On a machine shared with other work the ranks compete for cores: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from ebmtool import runtime

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results" / "ddp_scaling.json"
WORK = ROOT / "runs" / "ddp_scaling"
MNIST = Path(os.environ.get("MNIST_ROOT") or ROOT.parent / "shared" / "data" / "mnist")  # $MNIST_ROOT overrides


def cpu_name() -> str:
    return runtime.cpu_name()


def run(cmd: list[str]) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    p = subprocess.run(cmd, cwd=WORK, env=env, capture_output=True, text=True)
    if p.returncode != 0:
        sys.exit(f"ddp_scaling: command failed ({p.returncode}): {' '.join(cmd)}\n{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ranks", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--ngf", type=int, default=16, help="generator width (compute per example grows ~ngf^2)")
    args = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    ebm = [sys.executable, "-m", "ebmtool"]
    data, gen = WORK / "data.safetensors", WORK / f"gen-ngf{args.ngf}.safetensors"
    if not data.exists():
        src = ["--dataset", "mnist", "--root", str(MNIST), "--split", "test"] if MNIST.exists() else ["--dataset", "digits"]
        run(ebm + ["data", "prepare", *src, "--size", "32", "--limit", str(args.n), "-o", str(data)])
    if not gen.exists():
        run(ebm + ["pretrain-generator", "--data", str(data), "-o", str(gen), "--preset", "cpu", "--epochs", "1",
                   "--set", f"generator.ngf={args.ngf}", "--quiet"])
    from safetensors import safe_open

    rows = []
    for r in args.ranks:
        out = WORK / f"mle-ngf{args.ngf}-{r}.safetensors"
        launcher = ebm if r == 1 else [sys.executable, "-m", "torch.distributed.run", "--standalone",
                                       "--nproc_per_node", str(r), "-m", "ebmtool"]
        load0 = os.getloadavg()[0]
        wall = run(launcher + ["fit-prior", "--method", "mle", "--data", str(data), "--init", str(gen), "--preset",
                               "cpu", "--epochs", str(args.epochs), "--batch-size", "100", "-o", str(out), "--force",
                               "--quiet"])
        with safe_open(str(out), "pt") as f:
            meta = json.loads(f.metadata()["ebmtool.meta"])
        iters = args.epochs * -(-args.n // 100)
        rows.append({"ranks": r, "threads_per_rank": 1, "wall_s": round(wall, 1), "train_s": meta["wall_time_s"],
                     "it_per_s": round(iters / meta["wall_time_s"], 3), "loss_g": round(meta["final"]["loss_g"], 3),
                     "loadavg_before": load0})
        print(rows[-1], flush=True)
    base = rows[0]["train_s"] if rows and rows[0]["ranks"] == 1 else None
    for row in rows:
        row["speedup_vs_1"] = round(base / row["train_s"], 2) if base else None
    result = {"cpu": cpu_name(), "logical_cpus": os.cpu_count(), "budget": f"mle, cpu preset, mnist32 ngf {args.ngf}, "
              f"{args.epochs} epochs x {args.n} images, global batch 100", "data": "MNIST test" if MNIST.exists()
              else "digits 32x32", "runs": rows, "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else []
    old = old if isinstance(old, list) else [old]
    RESULTS.write_text(json.dumps(old + [result], indent=1))  # one entry per invocation
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
