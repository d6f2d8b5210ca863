"""``make demo``: the main job on an embedded default (scikit-learn digits; no network, no files).

prepare (hold-one-digit protocol, digit 1) -> pretrain-generator -> fit-prior adaptive-nce (4 stages)
-> sample grid PNG -> reconstruct -> anomaly, then one summary table. Every step is the library call
behind the CLI command of the same name, so the artifacts are the ones the CLI would write.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from ebmtool import stages
from ebmtool.config import resolve
from ebmtool.data import DataConfig
from ebmtool.errors import UserError
from ebmtool.methods import METHODS

ANOMALY_DIGIT = 1
# The demo budget: the cpu preset with fewer epochs (measured ~2 minutes on a 2-core CPU).
PRETRAIN = {"epochs": 30}
ADAPTIVE = {"stages": 4, "epochs_per_stage": 5}


def run(out: Path, seed: int = 0, quiet: bool = True) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    p = {k: str(out / f) for k, f in dict(train="digits-no1-train.safetensors", test="digits-no1-test.safetensors",
                                          gen="generator.safetensors", model="adaptive4.safetensors",
                                          grid="samples.png", recon="recon.safetensors", recon_png="recon.png",
                                          scores="scores.safetensors").items()}
    t0 = time.perf_counter()
    for part in ("train", "test"):
        stages.data_prepare(DataConfig(dataset="digits", anomaly_protocol=ANOMALY_DIGIT, part=part), p[part],
                            force=True)
    cfg = resolve(METHODS["pretrain"].config, method="pretrain", preset="cpu", toml=None,
                  flags={**PRETRAIN, "seed": seed})
    stages.train("pretrain", cfg, p["train"], p["gen"], force=True, quiet=quiet)
    cfg = resolve(METHODS["adaptive-nce"].config, method="adaptive-nce", preset="cpu", toml=None,
                  flags={**ADAPTIVE, "seed": seed})
    fit = stages.train("adaptive-nce", cfg, p["train"], p["model"], init_path=p["gen"], force=True, quiet=quiet)
    stages.sample(p["model"], 100, grid=p["grid"], seed=seed, force=True)
    rec = stages.reconstruct(p["model"], p["test"], out=p["recon"], grid=p["recon_png"], seed=seed, force=True)
    rec0 = stages.reconstruct(p["gen"], p["test"], seed=seed)
    an = stages.anomaly(p["model"], p["test"], positive=[ANOMALY_DIGIT], out=p["scores"], seed=seed, force=True)
    an0 = stages.anomaly(p["gen"], p["test"], positive=[ANOMALY_DIGIT], seed=seed)
    return {
        "held-out digit": ANOMALY_DIGIT,
        "stages": fit.get("stages_total"),
        "test MSE (pixels in [-1,1]), 4-stage prior": rec["mse"],
        "test MSE, 0-stage (N(0,I)) generator": rec0["mse"],
        "AUPRC (auc(recall, precision)), 4-stage": an["auprc"],
        "AUPRC, 0-stage": an0["auprc"],
        "AUROC, 4-stage": an["auroc"],
        "average precision, 4-stage": an["average_precision"],
        "samples PNG": p["grid"],
        "reconstructions PNG": p["recon_png"],
        "model artifact": p["model"],
        "scores artifact": p["scores"],
        "wall time (s)": round(time.perf_counter() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", default="auto", help="CPU threads: N or auto (the CPUs idle at the start, at most "
                    "the physical cores; as `ebmtool --threads`)")
    args = ap.parse_args()
    try:
        from ebmtool.runtime import set_threads

        n, why = set_threads(args.threads)
        print(f"ebmtool demo: {n} thread(s) ({why})", file=sys.stderr)
        res = run(Path(args.out), args.seed, quiet=False)
    except UserError as e:
        print(f"ebmtool demo: error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    t = Table(title="ebmtool demo: digits, hold-out digit 1, adaptive multi-stage NCE prior", show_header=False)
    t.add_column("what", style="bold")
    t.add_column("value")
    for k, v in res.items():
        t.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console().print(t)


if __name__ == "__main__":
    main()
