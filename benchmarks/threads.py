"""Threads on a busy machine: ``--threads auto`` against a fixed thread count, idle and with cores held busy.

Each case runs a real command in a fresh process while ``busy`` other processes spin on a core each (pure Python
loops, the way a browser tab, a build or a second run holds a core), and records its wall time:

- ``demo``: ``python -m ebmtool.demo`` (what ``make demo`` runs after the install);
- ``pretrain-smoke``: ``ebmtool pretrain-generator --preset smoke --epochs 1`` on 192 digits (the command a user
  timed at 84 s with 2 threads and one core busy, against 1.8 s with 1 thread).

    .venv/bin/python benchmarks/threads.py [--quick] [--busy 0 1] [--threads auto 2]

``--quick`` runs only ``pretrain-smoke``. Results go to benchmarks/results/threads.json (one entry per case, with
the CPU); docs/performance.md quotes them. Run it on an otherwise idle machine: other load is a busy core the
script does not know about (it prints the busy CPUs it measured before each case).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ebmtool import runtime

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "benchmarks" / "results" / "threads.json"
PY = sys.executable
EBM = [PY, "-m", "ebmtool"]


def spin(n: int) -> list[subprocess.Popen]:
    return [subprocess.Popen([PY, "-c", "while True: pass"]) for _ in range(n)]


def timed(cmd: list[str], env: dict) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1])
    ap.add_argument("--threads", nargs="+", default=["auto", "2"])
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ebm-threads-"))
    data = work / "digits.safetensors"
    subprocess.run(EBM + ["data", "prepare", "--dataset", "digits", "--limit", "192", "-o", str(data)], check=True,
                   stdout=subprocess.DEVNULL, cwd=ROOT)
    cases = {"pretrain-smoke": lambda th, i: EBM + ["--threads", th, "pretrain-generator", "--data", str(data),
                                                    "--preset", "smoke", "--epochs", "1", "-q", "-o",
                                                    str(work / f"g{i}.safetensors")]}
    if not args.quick:
        cases["demo"] = lambda th, i: [PY, "-m", "ebmtool.demo", "--threads", th, "--out", str(work / f"demo{i}")]
    results = json.loads(OUT.read_text()) if OUT.exists() else {}
    results.setdefault("cases", [])
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("EBMTOOL_THREADS", None)
    i = 0
    for name, make in cases.items():
        for busy in args.busy:
            for th in args.threads:
                before = runtime.busy_cpus(0.5)
                procs = spin(busy)
                try:
                    time.sleep(0.5)
                    i += 1
                    wall = timed(make(th, i), env)
                finally:
                    for p in procs:
                        p.kill()
                row = {"case": name, "threads": th, "busy_cores": busy, "other_load_before": round(before, 2),
                       "wall_s": round(wall, 1), "cpu": runtime.cpu_name(), "usable_cpus": runtime.usable_cpus(),
                       "date": time.strftime("%Y-%m-%d")}
                print(row, flush=True)
                results["cases"] = [r for r in results["cases"] if (r["case"], r["threads"], r["busy_cores"], r["cpu"])
                                    != (name, th, busy, row["cpu"])] + [row]
                OUT.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
