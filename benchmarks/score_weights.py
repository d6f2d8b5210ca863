"""What the anomaly score's weighting is worth (issue 35 §3), from the committed per-image score terms.

The score is -log p(x, z) = w * ||x - g(z)||^2 - f(z) + ||z||^2 / 2. Implementations in the lineage differ in w:

- ``model``: 1 / (2 sigma^2), as the model defines it (ebmtool's ``joint``);
- ``one``: 1, as the lineage's later code weights it;
- ``pixel-mean``: 1 / (2 sigma^2 D), the per-pixel mean that ``mse_loss(reduction='mean')`` gives (D = 784);
- ``zero``: 0, the prior terms alone (ebmtool's ``prior``).

A weight picked by reading this table is chosen with test labels: the table says what each weight is worth, it
does not pick one.

    python -m benchmarks.score_weights collect --protocol standard  # runs/ -> benchmarks/results/*.npz (float16)
    python -m benchmarks.score_weights table --protocol standard [--write]  # the table, from the committed file

``collect`` packs the final models' test-part terms (saved by the anomaly benchmark beside each model as
``.terms.npz``) into one compact file, so that no later analysis needs the models or a retraining.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WEIGHTS = ("model", "one", "pixel-mean", "zero")
PAGE = ROOT / "docs" / "results" / "mnist_anomaly_splits.md"
BLOCK = ("<!-- score-weights:begin (python -m benchmarks.score_weights table --write) -->",
         "<!-- score-weights:end -->")
# the final model of each core row, as the benchmark names it: METHOD-dDIGIT-sSEED-PREC[-k4].safetensors
FINAL = re.compile(r"^(pretrain|pretrain-matched|mle|adaptive-nce|joint-mle|joint-vi|vae)-d(\d)-s(\d+)-(\w+?)(-k4)?$")


def terms_file(protocol: str) -> Path:
    return RESULTS / f"score_terms_{protocol}.npz"


def collect(work: Path, out: Path) -> list[str]:
    """Pack every final model's test terms in ``work`` into ``out``: per row ``KEY/recon|tilt|base`` (float16),
    ``KEY/sigma`` and ``KEY/pixels``, and per digit ``dDIGIT/y`` (uint8). KEY = method|digit|seed|precision.
    Adaptive NCE keeps only its last stage (``-k4``); earlier stages are curve points, not rows."""
    from ebmtool.artifacts import load

    packed: dict[str, np.ndarray] = {}
    keys = []
    for f in sorted(work.glob("*.terms.npz")):
        m = FINAL.match(f.name[: -len(".terms.npz")])
        if m is None or (m.group(1) == "adaptive-nce" and not m.group(5)):
            continue
        method, digit, seed, prec = m.group(1), m.group(2), m.group(3), m.group(4)
        model = f.with_name(f.name[: -len(".terms.npz")] + ".safetensors")
        spec = load(model, "model").meta["model"]
        t = np.load(f)
        key = f"{method}|{digit}|{seed}|{prec}"
        for name in ("recon", "tilt", "base"):
            packed[f"{key}/{name}"] = t[name].astype(np.float16)
        packed[f"{key}/sigma"] = np.float64(spec["sigma"])
        packed[f"{key}/pixels"] = np.int64(np.prod(spec["image_shape"]))
        y = t["y"].astype(np.uint8)
        if f"d{digit}/y" in packed and not np.array_equal(packed[f"d{digit}/y"], y):
            raise SystemExit(f"score_weights: {f} has other test labels than digit {digit}'s other rows")
        packed[f"d{digit}/y"] = y
        keys.append(key)
    tmp = out.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, **packed)
    tmp.replace(out)
    return keys


def weighted(recon: np.ndarray, prior: np.ndarray, sigma: float, pixels: int, weight: str) -> np.ndarray:
    """The score at one weighting. recon: the model's ||x - g(z)||^2 / (2 sigma^2), (N,); prior: -f(z) +
    ||z||^2 / 2, (N,)."""
    sq = recon * 2 * sigma ** 2  # ||x - g(z)||^2
    w = {"model": 1 / (2 * sigma ** 2), "one": 1.0, "pixel-mean": 1 / (2 * sigma ** 2 * pixels), "zero": 0.0}[weight]
    return w * sq + prior


def table(path: Path) -> str:
    """One markdown row per (method, digit, seed, precision): the AUPRC of each weighting."""
    from ebmtool.eval.anomaly import metrics

    if not path.exists():
        return "(no final model's terms committed yet)\n"
    z = np.load(path)
    keys = sorted({k.rsplit("/", 1)[0] for k in z.files if "|" in k},
                  key=lambda k: (int(k.split("|")[1]), k.split("|")[0], int(k.split("|")[2])))
    lines = ["| method | digit | seed | random | " + " | ".join(f"w = {w}" for w in WEIGHTS) + " |",
             "| --- | --- | --- | --- |" + " --- |" * len(WEIGHTS)]
    for key in keys:
        method, digit, seed, _ = key.split("|")
        y = z[f"d{digit}/y"]
        recon = z[f"{key}/recon"].astype(np.float64)
        prior = z[f"{key}/tilt"].astype(np.float64) + z[f"{key}/base"].astype(np.float64)
        sigma, pixels = float(z[f"{key}/sigma"]), int(z[f"{key}/pixels"])
        cells = [f"{metrics(y, weighted(recon, prior, sigma, pixels, w)).auprc:.3f}" for w in WEIGHTS]
        lines.append(f"| {method} | {digit} | {seed} | {y.mean():.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["collect", "table"])
    ap.add_argument("--protocol", default="standard", help="standard | v3 (the benchmark's runs/ folder and CSVs)")
    ap.add_argument("--write", action="store_true", help=f"table: rewrite its block of {PAGE.relative_to(ROOT)}")
    args = ap.parse_args()
    out = terms_file(args.protocol)
    if args.what == "collect":
        keys = collect(ROOT / "runs" / f"anomaly_mnist_{args.protocol}", out)
        print(f"{len(keys)} rows -> {out} ({out.stat().st_size / 1e6:.2f} MB)")
    elif args.write:
        from benchmarks.bench_csv import replace_block

        replace_block(PAGE, *BLOCK, table(out).rstrip("\n"))
    else:
        print(table(out), end="")


if __name__ == "__main__":
    main()
