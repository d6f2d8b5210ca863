"""Throughput of ``ebmtool data prepare --dataset folder`` on real images written out as files.

Writes the first N MNIST images (train then test, from ``$MNIST_ROOT``, default ../shared/data/mnist beside the
repository) as 28x28 grey PNGs in class folders (``ROOT/<digit>/<index>.png``, the ImageFolder layout), and the
same images as 40x32 RGB JPEGs (quality 90, a colour tint per class), then times, each in a fresh process:

- ``png``: ``data prepare --dataset folder --root PNGS`` (no resize);
- ``jpeg-size``: ``data prepare --dataset folder --root JPEGS --size 32`` (decode, shorter side to 32, centre crop).

    .venv/bin/python benchmarks/data_prepare_speed.py [--n 10000] [--threads auto] [--repeat 3]

Reports images/s over the command's wall time (process start and the artifact write included; the median of
``--repeat`` runs), then the decoding alone (``load_folder`` in this process), and writes benchmarks/results/data_prepare_speed.json with the CPU. Writing the files is not
timed. docs/performance.md quotes the numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ebmtool import runtime  # noqa: E402
from ebmtool.data.sources import MNIST_FILES, mnist_file, read_idx  # noqa: E402

OUT = ROOT / "benchmarks" / "results" / "data_prepare_speed.json"
MNIST = Path(os.environ.get("MNIST_ROOT") or ROOT.parent / "shared" / "data" / "mnist")


def mnist_images(n: int):
    """The first ``n`` MNIST images (train, then test) and labels, uint8 (n, 28, 28) and (n,)."""
    import numpy as np

    xs, ys = [], []
    for split in ("train", "test"):
        img, lab = (mnist_file(MNIST, f) for f in MNIST_FILES[split])
        if img is None or lab is None:
            continue
        xs.append(read_idx(img))
        ys.append(read_idx(lab))
    if not xs:
        sys.exit(f"no MNIST files in {MNIST} (set MNIST_ROOT)")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if n > len(x):
        sys.exit(f"--n {n}: only {len(x)} MNIST images in {MNIST}")
    return x[:n], y[:n]


def write_files(x, y, png: Path, jpeg: Path) -> None:
    import numpy as np
    from PIL import Image

    tint = np.array([[255, 200, 150], [150, 255, 200], [200, 150, 255], [255, 255, 150], [150, 255, 255],
                     [255, 150, 255], [220, 220, 220], [255, 180, 180], [180, 255, 180], [180, 180, 255]]) / 255
    for i, (im, c) in enumerate(zip(x, y)):
        for d in (png / str(c), jpeg / str(c)):
            d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(png / str(c) / f"{i:05d}.png")
        rgb = (im[..., None] * tint[c]).astype(np.uint8)
        Image.fromarray(rgb).resize((40, 32)).save(jpeg / str(c) / f"{i:05d}.jpg", quality=90)


def timed(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, cwd=ROOT)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=10_000)
    ap.add_argument("--threads", default="auto")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ebm-prepare-speed-"))
    x, y = mnist_images(args.n)
    t0 = time.perf_counter()
    write_files(x, y, work / "png", work / "jpeg")
    print(f"wrote {args.n} PNGs and {args.n} JPEGs in {time.perf_counter() - t0:.1f} s ({work})")
    ebm = [sys.executable, "-m", "ebmtool", "--threads", args.threads, "data", "prepare", "--dataset", "folder",
           "--quiet", "--force"]
    cases = {"png": ["--root", str(work / "png")], "jpeg-size": ["--root", str(work / "jpeg"), "--size", "32"]}
    rows = []
    for name, extra in cases.items():
        out = work / f"{name}.safetensors"
        walls = [timed(ebm + extra + ["-o", str(out)]) for _ in range(args.repeat)]
        wall = statistics.median(walls)
        rows.append({"case": name, "n": args.n, "wall_s": round(wall, 3), "images_per_s": round(args.n / wall),
                     "walls_s": [round(w, 3) for w in walls], "threads": args.threads})
        print(f"{name}: {args.n} images in {wall:.2f} s = {args.n / wall:,.0f} images/s (runs {walls})")
    # the decoding alone, in this process (no interpreter start, no torch import, no artifact write)
    import torch

    from ebmtool.data.files import FileOptions, load_folder
    from ebmtool.runtime import set_threads

    set_threads(args.threads)
    for name, root, size in (("png", work / "png", None), ("jpeg-size", work / "jpeg", 32)):
        walls = []
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            load_folder(root, "train", False, False, FileOptions(size=size))
            walls.append(time.perf_counter() - t0)
        wall = statistics.median(walls)
        rows.append({"case": f"{name} (decode only, in process)", "n": args.n, "wall_s": round(wall, 3),
                     "images_per_s": round(args.n / wall), "walls_s": [round(w, 3) for w in walls],
                     "threads": torch.get_num_threads()})
        print(f"{name} decode only: {args.n / wall:,.0f} images/s ({torch.get_num_threads()} threads)")
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps({"cpu": runtime.cpu_name(), "cpus": os.cpu_count(), "date": time.strftime("%Y-%m-%d"),
                               "rows": rows}, indent=1) + "\n")
    print(f"{OUT} ({runtime.cpu_name()})")


if __name__ == "__main__":
    main()
