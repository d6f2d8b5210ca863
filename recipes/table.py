"""Helpers of the table recipes (recipes/*.mk): run one CLI stage and keep its JSON, two small baselines, and
the markdown tables (the papers' numbers beside ebmtool's).

    table.py run OUT.json -- ebmtool STAGE ... --json      run a stage, keep its JSON + command, inputs, wall time
    table.py noise --like DATA -o OUT                       uniform-noise images shaped like DATA (OOD "Random")
    table.py pca --train A --test B --anomaly-class K       PCA reconstruction-error baseline on the same split
    table.py render TABLE -o OUT.md --scale S --runs R ... -- INPUTS   one results/<table>.md from the JSON under R
                                                                       and its figure OUT.png beside it

Rendering reads JSON and safetensors headers only (no torch import); the figure is drawn with matplotlib
(ebmtool.eval.plots: paper | ebmtool panels, or AUPRC per digit with error bars and the random baseline). Every number in a table
comes from a JSON file written by ``run``; the paper's numbers come from recipes/papers.py.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import papers  # noqa: E402

NICE = {"svhn": "SVHN", "cifar10": "CIFAR-10", "celeba": "CelebA-64", "random": "Random (uniform)", "mnist": "MNIST"}
SHAPE = {"svhn": "3×32×32", "cifar10": "3×32×32", "celeba": "3×64×64"}
SCALE_NOTE = {
    "smoke": ("`--preset smoke` (tiny nets: nz 8, ngf 16, 2 epochs, 10-15 step chains) on a few hundred images. "
              "It checks that the whole chain runs; its numbers say nothing about the methods and are not "
              "comparable with the paper's."),
    "cpu": ("`--preset cpu` (small nets: nz 16, ngf 32, 10x the papers' learning rates) on subsets, sized for a "
            "2-core CPU; a trend check, not a reproduction of the paper's numbers."),
    "paper": "`--preset paper` (the papers' networks, epochs and chain lengths; GPU) on the full datasets.",
}


# ------------------------------------------------------------------------------------------------ files
def atomic_write(path: Path, text: str) -> None:
    """``text`` to ``path`` through ebmtool's one atomic write (torch-free), creating its folder."""
    from ebmtool.files import write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, text)


def load_json(path: Path) -> dict | None:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def st_header(path: Path) -> dict:
    """The ebmtool metadata of a safetensors artifact, read from its header (ebmtool.files: no torch); the JSON
    fields parsed. ``{}`` for a file that is not one."""
    from ebmtool.files import safetensors_metadata

    try:
        md = safetensors_metadata(path)
    except (OSError, ValueError):
        return {}
    out = dict(md)
    for k in ("ebmtool.meta", "ebmtool.config", "ebmtool.parents"):
        if k in md:
            try:
                out[k] = json.loads(md[k])
            except ValueError:
                pass
    return out


def cpu_name() -> str:
    from ebmtool.runtime import cpu_name as name  # the one CPU name (model + widest ISA); torch only when a run ends

    return name()


# ------------------------------------------------------------------------------------------------ run
def cmd_run(argv: list[str]) -> int:
    if len(argv) < 3 or argv[1] != "--":
        print("usage: table.py run OUT.json -- COMMAND ...", file=sys.stderr)
        return 2
    out, cmd = Path(argv[0]), argv[2:]
    output = next((cmd[i + 1] for i, a in enumerate(cmd[:-1]) if a in ("-o", "--output")), None)
    inputs = [a for a in cmd if a != output and a.endswith((".safetensors", ".npz")) and Path(a).is_file()]
    t0 = time.perf_counter()
    p = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stdout.write(p.stdout)
        return p.returncode
    result = None
    for line in reversed(p.stdout.strip().splitlines()):
        try:
            result = json.loads(line)
            break
        except ValueError:
            continue
    if not isinstance(result, dict):
        print(f"table.py run: {' '.join(cmd[:3])}... printed no JSON object on stdout", file=sys.stderr)
        return 1
    result["_recipe"] = {
        "argv": cmd, "inputs": inputs, "output": output, "wall_s": round(wall, 3),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"), "cpu": cpu_name(),
        "cpu_count": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
    }
    atomic_write(out, json.dumps(result, indent=1, default=str) + "\n")
    return 0


# ------------------------------------------------------------------------------------------------ baselines
def cmd_noise(args) -> int:
    """Uniform noise on [0, 255] with the shape and count of --like (BiDVL Table 4's "Random" OOD set)."""
    import torch

    from ebmtool import artifacts
    from ebmtool.data import load_images

    x, _, art = load_images(args.like)
    n = args.n or len(x)
    g = torch.Generator().manual_seed(args.seed)
    images = torch.randint(0, 256, (n, *x.shape[1:]), generator=g, dtype=torch.int64).to(torch.uint8)
    labels = torch.zeros(n, dtype=torch.long)
    meta = {"dataset": "uniform-noise", "split": "test", "n": n, "image_shape": list(images.shape[1:]),
            "value_range": [0, 255], "classes": [0], "source": f"uniform noise U{{0..255}} per pixel, seed {args.seed}",
            "content_sha256": artifacts.tensor_sha256(images, labels)}
    artifacts.save(args.output, "dataset", {"images": images, "labels": labels},
                   config={"like": str(args.like), "seed": args.seed}, meta=meta, parents=[art])
    print(json.dumps({"output": args.output, "dataset": "uniform-noise", "split": "test", "n": n,
                      "image_shape": list(images.shape[1:]), "classes": [0]}))
    return 0


def cmd_pca(args) -> int:
    """PCA reconstruction error (scikit-learn, fitted on the training normals) scored on the test part."""
    from ebmtool.data import load_images
    from ebmtool.eval.anomaly import binary_labels, metrics, pca_scores

    xtr, _, _ = load_images(args.train)
    xte, lte, _ = load_images(args.test)
    m = metrics(binary_labels(lte, [args.anomaly_class]), pca_scores(xtr, xte, components=args.components, seed=args.seed))
    print(json.dumps({**m.as_dict(), "model_method": "pca", "components": args.components,
                      "score": "PCA squared reconstruction error", "anomaly_classes": [args.anomaly_class]}))
    return 0


# ------------------------------------------------------------------------------------------------ lineage
def record_of(path: Path) -> dict | None:
    """The run record of an artifact (ARTIFACT.json) or of an evaluation (its own .json)."""
    p = Path(path)
    return load_json(p if p.suffix == ".json" else Path(str(p) + ".json"))


def closure(paths: list[Path]) -> dict[str, dict]:
    """Every run record these files were made from (followed through each record's inputs), once each."""
    seen: dict[str, dict] = {}
    todo = [Path(p) for p in paths]
    while todo:
        p = todo.pop()
        key = str(p if p.suffix == ".json" else Path(str(p) + ".json"))
        if key in seen:
            continue
        rec = record_of(p)
        if rec is None:
            continue
        seen[key] = rec
        todo += [Path(i) for i in rec.get("_recipe", {}).get("inputs", [])]
    return seen


def stage_name(rec: dict) -> str:
    argv = rec.get("_recipe", {}).get("argv", [])
    if len(argv) > 1 and argv[1] == "data":
        return "data prepare"
    if len(argv) > 2 and argv[1] == "fit-prior":
        m = argv[argv.index("--method") + 1] if "--method" in argv else "?"
        return f"fit-prior {m}"
    if len(argv) > 2 and argv[1].endswith("table.py"):
        return f"table.py {argv[2]}"
    return argv[1] if len(argv) > 1 else "?"


def timing_line(recs: dict[str, dict]) -> str:
    by: dict[str, float] = {}
    for r in recs.values():
        by[stage_name(r)] = by.get(stage_name(r), 0.0) + float(r.get("_recipe", {}).get("wall_s", 0.0))
    total = sum(by.values())
    parts = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(by.items(), key=lambda kv: -kv[1]))
    any_rec = next(iter(recs.values()), {}).get("_recipe", {})
    machine = f"{any_rec.get('cpu', '?')}, {any_rec.get('cpu_count', '?')} CPUs usable, OMP_NUM_THREADS={any_rec.get('omp_num_threads')}"
    return (f"{total:.0f} s summed over the {len(recs)} steps this table reads (shared steps such as data preparation "
            f"and the pretrained generator counted once here, also when other tables reuse them): {parts}. "
            f"Machine: {machine}; wall times include any load from other jobs on it (and each other's, under make -j).")


def data_lines(recs: dict[str, dict]) -> list[str]:
    out = []
    for key in sorted(recs):
        r = recs[key]
        art = r.get("_recipe", {}).get("output")
        if not art or stage_name(r) not in ("data prepare", "table.py noise"):
            continue
        meta = st_header(Path(art)).get("ebmtool.meta", {})
        prot = meta.get("protocol")
        extra = f"; anomaly protocol: digit {prot['anomaly_class']} held out, part {prot['part']}" if prot else ""
        shape = "×".join(str(s) for s in meta.get("image_shape", r.get("image_shape", [])))
        out.append(f"`{Path(art).name}`: {meta.get('n', r.get('n'))} images {shape}, {meta.get('source', r.get('dataset'))}{extra}")
    return out


# ------------------------------------------------------------------------------------------------ cells
def fmt(v, digits: int) -> str:
    """A measured number; small values keep 3 significant digits (smoke-scale FIDs in a classifier space)."""
    if v is None:
        return "–"
    if v != 0 and abs(v) < 10 ** (1 - digits):
        return f"{v:.3g}"
    if digits == 2 and abs(v) < 10:
        return f"{v:.4f}"
    return f"{v:.{digits}f}"


def paper_fmt(v: str) -> str:
    """A cell as the paper prints it ("-" = no number; "m±s" = mean ± std)."""
    return "–" if v in ("-", None) else str(v).replace("±", " ± ")


def metric_of(rec: dict | None, metric: str) -> float | None:
    if rec is None:
        return None
    key = {"fid": "value", "mse": "mse", "rmse": "rmse", "auroc": "auroc", "auprc": "auprc"}[metric]
    v = rec.get(key)
    return float(v) if isinstance(v, (int, float)) and math.isfinite(v) else None


def mean_std(vals: list[float]) -> tuple[float, float, int] | None:
    if not vals:
        return None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


class Ctx:
    def __init__(self, args):
        self.args = args
        self.runs = Path(args.runs)
        self.cols = dict(kv.split("=", 1) for kv in (args.col or []))
        self.used: list[Path] = []
        self.figure: dict | None = None  # {"title", "panels"} or {"title", "auprc": ...}; drawn beside the table

    def rec(self, *parts: str) -> dict | None:
        p = self.runs.joinpath(*parts)
        self.used.append(p)
        return load_json(p)

    def d(self, ds: str) -> str:
        return self.cols[ds]


def dataset_notes(ctx: Ctx, datasets: list[str]) -> list[str]:
    lines = []
    for ds in datasets:
        d = ctx.d(ds)
        real = d == ds or d.startswith(ds)
        what = ("the real dataset" if real else
                f"**stand-in** `{d}` (not {NICE.get(ds, ds)}: {NICE.get(ds, ds)} is {SHAPE.get(ds, '?')}; it needs a download, "
                "and the smoke scale runs on data available offline)")
        if d.startswith("digits"):
            what += "; scikit-learn's digits have no test split, so its test images are the training images"
        lines.append(f"{NICE.get(ds, ds)} column: {what}; runs in `{ctx.runs / d}`")
    same = [ds for ds in datasets if [ctx.d(o) for o in datasets].count(ctx.d(ds)) > 1]
    if same:
        lines.append("Columns " + ", ".join(NICE.get(s, s) for s in same) + " share one stand-in, so their ebmtool "
                     "numbers come from the very same runs.")
    return lines


def fid_notes(recs: list[dict | None]) -> list[str]:
    seen = []
    for r in recs:
        if not r:
            continue
        line = (f"{r.get('extractor')}, weights {r.get('weights')}, resize {r.get('resize')}; "
                f"n = {r.get('n_samples')} samples vs n = {r.get('n_ref')} reference images ({r.get('reference')})")
        if line not in seen:
            seen.append(line)
    out = [f"FID feature space: {s}" for s in seen]
    if any(r and "classifier" in str(r.get("extractor", "")) for r in recs):
        out.append("FIDs marked * are Fréchet distances in the penultimate layer of a small classifier trained by "
                   "`ebmtool train-features` on the training labels (no Inception weights on this machine): "
                   "**not comparable with the papers' Inception FIDs** (different feature space, tiny n, biased upward).")
    elif any(r for r in recs):
        out.append("Inception FID (pytorch-fid's TF-ported InceptionV3 pool3 weights), as in the papers; the papers "
                   "use 50,000 samples, and FID is biased upward at smaller n.")
    return out


# ------------------------------------------------------------------------------------------------ tables
def render_generation(ctx: Ctx, spec: dict, ours: list[tuple[str, str]], metric_digits: dict) -> tuple[list[str], list]:
    """A paper table of (dataset, metric) columns with ebmtool rows (label, model file stem) below it."""
    cols = spec["cols"]
    head = ["Model"] + [f"{NICE[ds]} {m.upper()}" for ds, m in cols]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for label, vals in spec["rows"].items():
        lines.append(f"| {label} (paper) | " + " | ".join(paper_fmt(v) for v in vals) + " |")
    fids, values = [], {}
    for label, stem in ours:
        cells = []
        for ds, m in cols:
            rec = ctx.rec(ctx.d(ds), f"{stem}.{'fid' if m == 'fid' else 'recon'}.json")
            if m == "fid":
                fids.append(rec)
            v = metric_of(rec, m)
            values.setdefault(label, []).append(v)
            cells.append(fmt(v, metric_digits[m]) + ("*" if m == "fid" and v is not None and "classifier" in str(rec.get("extractor")) else ""))
        lines.append(f"| **ebmtool {label}** ({ctx.args.scale}) | " + " | ".join(cells) + " |")
    ctx.figure = {"panels": paper_vs_ours(ctx, cols, spec["rows"], values, fids)}
    return lines, fids


YLABEL = {"fid": "FID (lower is better)", "mse": "MSE per pixel (pixels in [-1, 1])",
          "rmse": "RMSE (pixels in [-1, 1])", "auroc": "AUROC"}


def paper_num(v) -> float | None:
    """The mean of a paper's cell ("m±s" or "m"); None for "-"."""
    try:
        return None if v in ("-", None) else float(str(v).split("±")[0])
    except ValueError:
        return None


def paper_vs_ours(ctx: Ctx, cols: list, paper_rows: dict, ours: dict[str, list], recs: list, *,
                  groups: list[str] | None = None, xlabel: str = "dataset") -> list[list[dict]]:
    """One row of panels per metric: the paper's numbers | ebmtool's (own y axes: the data and, at small scales,
    the FID feature space differ; ebmtool's groups name the data folder actually used)."""
    classifier = any(r and "classifier" in str(r.get("extractor")) for r in recs)
    rows = []
    for m in dict.fromkeys(mm for _, mm in cols):
        idx = [i for i, (_, mm) in enumerate(cols) if mm == m]
        g_paper = groups or [NICE.get(cols[i][0], cols[i][0]) for i in idx]
        g_ours = groups or [f"{NICE.get(cols[i][0], cols[i][0])}\n({ctx.cols.get(cols[i][0], '?')})" for i in idx]
        base = (0.5, "random (0.5)") if m == "auroc" else None
        ylim = (0, 1) if m == "auroc" else None
        ylab = YLABEL[m] + ("\n(classifier features, not Inception)" if m == "fid" and classifier else "")
        rows.append([
            {"title": f"paper: {m.upper()}", "xlabel": xlabel, "ylabel": YLABEL[m], "groups": g_paper,
             "series": {k: [paper_num(v[i]) for i in idx] for k, v in paper_rows.items()}, "baseline": base, "ylim": ylim},
            {"title": f"ebmtool ({ctx.args.scale}): {m.upper()}", "xlabel": xlabel, "ylabel": ylab, "groups": g_ours,
             "series": {k: [v[i] for i in idx] for k, v in ours.items()}, "baseline": base, "ylim": ylim},
        ])
    return rows


def notes(ctx: Ctx, extra: list[str], fid_recs: list, datasets: list[str]) -> list[str]:
    recs = closure(ctx.used + [Path(p) for p in ctx.args.inputs])
    out = ["", "## How the ebmtool numbers were made", ""]
    out.append(f"- Scale: **{ctx.args.scale}** — {SCALE_NOTE[ctx.args.scale]}")
    for line in dataset_notes(ctx, datasets) if datasets else []:
        out.append(f"- {line}")
    dl = data_lines(recs)
    if dl:
        out.append("- Data actually used: " + "; ".join(dl) + ".")
    for line in fid_notes(fid_recs):
        out.append(f"- {line}")
    out += [f"- {e}" for e in extra]
    out.append(f"- Wall time: {timing_line(recs)}")
    out.append(f"- Re-make: `make {ctx.args.target or ctx.args.table} SCALE={ctx.args.scale}` (each artifact is a file under "
               f"`{ctx.runs}` with its JSON record beside it; make re-runs only what is missing or out of date).")
    return out


MSE_NOTE = ("MSE: per-pixel mean squared error between test images and their reconstructions, pixels in [-1, 1] "
            "(the papers' convention for data scaled to [-1, 1]); reconstructions by posterior short-run Langevin "
            "from N(0, I) (`ebmtool reconstruct`)")
WARM_NOTE = ("Every latent-EBM model starts from the same pretrained generator (`pretrain-generator`, the 0-stage / SRI "
             "model of the row \"ebmtool pretrain-generator\"), so rows differ only by the prior-fitting method.")


def t_lebm1(ctx: Ctx) -> str:
    spec = papers.LEBM_T1
    lines, fids = render_generation(ctx, spec, [("mle (LEBM)", "mle"), ("pretrain-generator (SRI, N(0, I) prior)", "pretrain")],
                                    {"mse": 4, "fid": 2})
    head = ["# LEBM (Pang et al. 2020) Table 1 — test MSE and sample FID", "",
            f"Paper numbers: {spec['source']}. ebmtool rows: `fit-prior --method mle` and its "
            "warm start, measured here.", ""]
    return "\n".join(head + lines + notes(ctx, [MSE_NOTE, WARM_NOTE], fids, ["svhn", "cifar10", "celeba"])) + "\n"


def t_ance1(ctx: Ctx) -> str:
    spec = papers.ANCE_T1
    lines, fids = render_generation(ctx, spec, [("adaptive-nce (4 stages)", "ance4"), ("mle (LEBM)", "mle")],
                                    {"mse": 4, "fid": 2})
    head = ["# Adaptive multi-stage NCE (Xiao & Han 2022) Table 1 — test MSE and sample FID", "",
            f"Paper numbers: {spec['source']}. ebmtool rows: `fit-prior --method adaptive-nce` "
            "(4 stages, added stage by stage through files: 1 → 2 → 4) and `--method mle` on the same generator.", ""]
    return "\n".join(head + lines + notes(ctx, [MSE_NOTE, WARM_NOTE], fids, ["svhn", "celeba", "cifar10"])) + "\n"


def t_joint1(ctx: Ctx) -> str:
    spec = papers.JOINT_T1
    lines, fids = render_generation(ctx, spec, [("joint-mle (L=2)", "joint-mle"), ("mle (LEBM)", "mle")], {"fid": 2})
    head = ["# Joint latent-space EBM prior (Cui, Wu & Han 2023) Table 1 — sample FID", "",
            f"Paper numbers: {spec['source']}. ebmtool rows: `fit-prior --method joint-mle` "
            "(two latent layers, posterior Langevin over both) and `--method mle` on the same generator.", ""]
    return "\n".join(head + lines + notes(ctx, [WARM_NOTE], fids, ["svhn", "celeba", "cifar10"])) + "\n"


def t_ance3(ctx: Ctx) -> str:
    spec = papers.ANCE_T3
    d = ctx.d("celeba")
    lines = ["| Training | Number of stages | FID (paper) | FID (ebmtool) |", "|---|---|---|---|"]
    fids, ours = [], {}
    for kind, stem in (("adaptive", "ance"), ("non-adaptive", "tre")):
        for k in spec["stages"]:
            rec = ctx.rec(d, "pretrain.fid.json" if k == 0 else f"{stem}{k}.fid.json")
            fids.append(rec)
            v = metric_of(rec, "fid")
            ours.setdefault(kind, []).append(v)
            star = "*" if v is not None and "classifier" in str(rec.get("extractor")) else ""
            lines.append(f"| {kind.capitalize() if k == 0 else ''} | {k} | {spec[kind][k]} | {fmt(v, 2)}{star} |")
    head = ["# Adaptive multi-stage NCE (Xiao & Han 2022) Table 3 — ablation on CelebA (FID)", "",
            f"Paper numbers: {spec['source']}. 0 stages = the pretrained generator under N(0, I) "
            "(`pretrain-generator`), shared by both halves. Adaptive: `fit-prior --method adaptive-nce`, stages added "
            "through files (1, then +1 → 2, +2 → 4, +4 → 8; the generator keeps learning under the current prior). "
            "Non-adaptive: `--non-adaptive --stages m` (the TRE-style ablation: generator and posterior fixed at the "
            "0-stage model, m ratios between linear-mixing waymarks).", ""]
    cols = [("celeba", "fid")] * len(spec["stages"])
    ctx.figure = {"panels": paper_vs_ours(ctx, cols, {k: [spec[k][s] for s in spec["stages"]] for k in ("adaptive", "non-adaptive")},
                                          ours, fids, groups=[str(k) for k in spec["stages"]], xlabel="number of stages")}
    return "\n".join(head + lines + notes(ctx, [], fids, ["celeba"])) + "\n"


def t_bidvl1(ctx: Ctx) -> str:
    spec = papers.BIDVL_T1
    lines, fids = _bidvl_gen(ctx, spec, "fid", 2)
    head = ["# BiDVL (Kan et al. 2022) Table 1 — sample FID", "",
            f"Paper numbers: {spec['source']}. ebmtool row: `fit-prior --method bidvl` "
            "(r′ = 0.05 at 32×32, 0.1 at 64×64; samples v = G(h), h ~ N(0, I)).", ""]
    return "\n".join(head + lines + notes(ctx, [], fids, ["cifar10", "celeba"])) + "\n"


def t_bidvl3(ctx: Ctx) -> str:
    spec = papers.BIDVL_T3
    lines, _ = _bidvl_gen(ctx, spec, "rmse", 4)
    head = ["# BiDVL (Kan et al. 2022) Table 3 — test reconstruction RMSE", "",
            f"Paper numbers: {spec['source']}. ebmtool row: `fit-prior --method bidvl`, "
            "reconstruction G(μ(v)) through the inference model.", ""]
    note = ("RMSE: square root of the mean per-pixel squared error over the test images, pixels in [-1, 1] "
            "(on [0, 1] pixels it is half this value; the paper does not state its range)")
    return "\n".join(head + lines + notes(ctx, [note], [], ["cifar10", "celeba"])) + "\n"


def _bidvl_gen(ctx: Ctx, spec: dict, metric: str, digits: int):
    stems = {"cifar10": "bidvl-r0.05", "celeba": "bidvl-r0.1"}
    head = ["Model"] + [f"{NICE[ds]} {m.upper()}" for ds, m in spec["cols"]]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for label, vals in spec["rows"].items():
        lines.append(f"| {label} (paper) | " + " | ".join(paper_fmt(v) for v in vals) + " |")
    cells, recs = [], []
    for ds, _m in spec["cols"]:
        rec = ctx.rec(ctx.d(ds), f"{stems[ds]}.{'fid' if metric == 'fid' else 'recon'}.json")
        recs.append(rec)
        v = metric_of(rec, metric)
        cells.append(fmt(v, digits) + ("*" if metric == "fid" and v is not None and "classifier" in str(rec.get("extractor")) else ""))
    lines.append(f"| **ebmtool bidvl** ({ctx.args.scale}) | " + " | ".join(cells) + " |")
    ctx.figure = {"panels": paper_vs_ours(ctx, spec["cols"], spec["rows"],
                                          {"bidvl": [metric_of(r, metric) for r in recs]}, recs)}
    return lines, recs


def t_bidvl4(ctx: Ctx) -> str:
    spec = papers.BIDVL_T4
    d = ctx.d("cifar10")
    head = ["Model"] + [f"{NICE[ds].replace('-64', '')} (OOD)" for ds, _ in spec["cols"]]
    lines = [f"| {' | '.join(head)} |", "|" + "---|" * len(head)]
    for label, vals in spec["rows"].items():
        lines.append(f"| {label} (paper) | " + " | ".join(paper_fmt(v) for v in vals) + " |")
    cells, extra, vals = [], [], []
    for ood, _ in spec["cols"]:
        rec = ctx.rec(d, f"bidvl-r0.05.ood-{ood}.json")
        vals.append(metric_of(rec, "auroc"))
        cells.append(fmt(metric_of(rec, "auroc"), 3))
        if rec:
            extra.append(f"{NICE[ood]}: {rec.get('n') - rec.get('n_anomalous')} in-distribution vs "
                         f"{rec.get('n_anomalous')} OOD images (`{Path(str(rec.get('ood_data'))).name}`), "
                         f"AUPRC {rec.get('auprc'):.3f}")
    lines.append(f"| **ebmtool bidvl** ({ctx.args.scale}) | " + " | ".join(cells) + " |")
    ctx.figure = {"panels": paper_vs_ours(ctx, spec["cols"], spec["rows"], {"bidvl": vals}, [],
                                          groups=[NICE[o] for o, _ in spec["cols"]], xlabel="OOD set")}
    oods = {"random": "uniform noise shaped like the in-distribution test set (`table.py noise`)",
            "svhn": f"`{ctx.d('ood-svhn')}`", "celeba": f"`{ctx.d('ood-celeba')}` (resized to the model's 32×32)"}
    head_txt = ["# BiDVL (Kan et al. 2022) Table 4 — OOD detection AUROC (CIFAR-10 in-distribution)", "",
                f"Paper numbers: {spec['source']}. ebmtool row: the r′ = 0.05 model of Table 1, "
                "score −E(v) (`ebmtool anomaly --ood-data`, OOD = label 1), AUROC.", ""]
    notes_extra = ["In-distribution: the test images of the CIFAR-10 column's data (" + f"`{d}`" + "). OOD sets: "
                   + "; ".join(f"{NICE[k]} = {v}" for k, v in oods.items()) + "."] + extra
    return "\n".join(head_txt + lines + notes(ctx, notes_extra, [], ["cifar10"])) + "\n"


def t_bidvl5(ctx: Ctx) -> str:
    spec = papers.BIDVL_T5
    d = ctx.d("cifar10")
    lines = ["| r′ | " + " | ".join(spec["ratios"]) + " |", "|---|" + "---|" * len(spec["ratios"]),
             "| FID (paper) | " + " | ".join(str(spec["fid"][r]) for r in spec["ratios"]) + " |"]
    recs, cells = [], []
    for r in spec["ratios"]:
        rec = ctx.rec(d, f"bidvl-r{r}.fid.json")
        recs.append(rec)
        v = metric_of(rec, "fid")
        cells.append(fmt(v, 2) + ("*" if v is not None and "classifier" in str(rec.get("extractor")) else ""))
    lines.append(f"| **FID (ebmtool, {ctx.args.scale})** | " + " | ".join(cells) + " |")
    ctx.figure = {"panels": paper_vs_ours(ctx, [("cifar10", "fid")] * len(spec["ratios"]),
                                          {"BiDVL": [spec["fid"][r] for r in spec["ratios"]]},
                                          {"bidvl": [metric_of(r, "fid") for r in recs]}, recs,
                                          groups=list(spec["ratios"]), xlabel="basic ratio r′")}
    head = ["# BiDVL (Kan et al. 2022) Table 5 — basic ratio r′ vs FID on CIFAR-10", "",
            f"Paper numbers: {spec['source']}. ebmtool: `fit-prior --method bidvl --basic-ratio r′`, "
            "one model per r′.", ""]
    return "\n".join(head + lines + notes(ctx, [], recs, ["cifar10"])) + "\n"


# --- anomaly -----------------------------------------------------------------------------------------------
OURS_LABEL = {"pca": "PCA reconstruction error (baseline)", "pretrain": "pretrain-generator, N(0, I) prior (0-stage baseline)",
              "mle": "mle (LEBM)", "adaptive-nce": "adaptive-nce (4 stages)", "joint-mle": "joint-mle (L=2)"}


def anomaly_cells(ctx: Ctx, method: str, metric: str) -> list[tuple[float, float, int] | None]:
    out = []
    for k in papers.DIGITS:
        vals = []
        if k in ctx.args.digits:
            for s in ctx.args.seeds:
                v = metric_of(ctx.rec("anomaly", f"d{k}-s{s}", f"{method}.anomaly.json"), metric)
                if v is not None:
                    vals.append(v)
        out.append(mean_std(vals))
    return out


def cell_ms(c) -> str:
    if c is None:
        return "not run"
    m, s, n = c
    return f"{m:.3f} ± {s:.3f} (n={n})" if n > 1 else f"{m:.3f} (n=1)"


def anomaly_body(ctx: Ctx, paper_rows: dict, methods: list[str]) -> list[str]:
    head = "| Held-out digit | " + " | ".join(str(k) for k in papers.DIGITS) + " |"
    lines = [head, "|---|" + "---|" * len(papers.DIGITS)]
    for label, vals in paper_rows.items():
        lines.append(f"| {label} (paper) | " + " | ".join(paper_fmt(v) for v in vals) + " |")
    for m in methods:
        lines.append(f"| **ebmtool {OURS_LABEL[m]}** ({ctx.args.scale}) | "
                     + " | ".join(cell_ms(c) for c in anomaly_cells(ctx, m, "auprc")) + " |")
    lines += ["", "ebmtool's other metrics on the same scores (mean over seeds): average precision "
              "(`average_precision_score`) / AUROC.", "",
              head, "|---|" + "---|" * len(papers.DIGITS)]
    for m in methods:
        cells = []
        for k in papers.DIGITS:
            aps, rocs = [], []
            if k in ctx.args.digits:
                for s in ctx.args.seeds:
                    r = ctx.rec("anomaly", f"d{k}-s{s}", f"{m}.anomaly.json")
                    if r:
                        aps.append(r["average_precision"])
                        rocs.append(r["auroc"])
            cells.append(f"{statistics.fmean(aps):.3f} / {statistics.fmean(rocs):.3f}" if aps else "not run")
        lines.append(f"| ebmtool {OURS_LABEL[m]} | " + " | ".join(cells) + " |")
    return lines


def anomaly_notes(ctx: Ctx) -> list[str]:
    seeds = ", ".join(str(s) for s in ctx.args.seeds)
    digits = ", ".join(str(k) for k in ctx.args.digits)
    n = []
    for k in ctx.args.digits:
        r = ctx.rec("anomaly", f"d{k}-s{ctx.args.seeds[0]}", "pca.anomaly.json")
        if r:
            n.append(f"digit {k}: {r['n']} test images, {r['n_anomalous']} anomalous")
    return [
        f"Protocol (docs/design.md §5): digit K is the anomaly class; the other nine digits are split once 80/20 with a fixed "
        f"seed; models train on the 80% and are scored on the other 20% plus every image of K (no training image in "
        f"the test part, unlike the original code's leaky second permutation). Run here for digits {digits}, seeds {seeds}"
        + (f" ({'; '.join(n)})" if n else "") + "; cells say `not run` for the digits this scale skips.",
        "AUPRC = `auc(recall, precision)` over `precision_recall_curve` (the papers' evaluation code), anomaly score "
        "−log p(x, z) at posterior samples (higher = more anomalous); mean ± sample std over seeds (the papers: over "
        "their last 10 epochs/trials).",
        "Baselines on the very same split: PCA reconstruction error (scikit-learn, 32 components) and the pretrained "
        "generator under N(0, I) (the 0-stage model, also the warm start of every latent EBM here). The papers' "
        "baselines were measured on the leaky split; compare ebmtool's rows with these two first.",
    ]


def anomaly_figure(ctx: Ctx, spec: dict, methods: list[str]) -> dict:
    """AUPRC per digit: ebmtool's methods as bars (mean ± std over seeds), the papers' rows as markers, the random
    baseline (fraction of anomalies in the test part) per digit."""
    if not ctx.args.digits:
        return None
    results, random = {}, {}
    for m in methods:
        per = {}
        for k in ctx.args.digits:
            vals = [metric_of(ctx.rec("anomaly", f"d{k}-s{s}", f"{m}.anomaly.json"), "auprc") for s in ctx.args.seeds]
            per[k] = [v for v in vals if v is not None]
        results[f"ebmtool {m}"] = per
    for k in ctx.args.digits:
        for s in ctx.args.seeds:
            for m in methods:
                r = ctx.rec("anomaly", f"d{k}-s{s}", f"{m}.anomaly.json")
                if r and r.get("n") and r.get("n_anomalous") is not None and k not in random:
                    random[k] = r["n_anomalous"] / r["n"]
    reference = {f"{label} (paper)": {k: paper_num(v) for k, v in zip(papers.DIGITS, vals) if k in ctx.args.digits}
                 for label, vals in spec["rows"].items()}
    return {"auprc": (results, random, reference)}


def _anomaly_table(ctx: Ctx, title: str, spec: dict, methods: list[str]) -> str:
    ctx.figure = anomaly_figure(ctx, spec, methods)
    head = [f"# {title}", "", f"Paper numbers: {spec['source']}.", ""]
    body = anomaly_body(ctx, spec["rows"], methods)
    return "\n".join(head + body + notes(ctx, anomaly_notes(ctx), [], [])) + "\n"


def t_lebm4(ctx):
    return _anomaly_table(ctx, "LEBM (Pang et al. 2020) Table 4 — MNIST anomaly detection (AUPRC)", papers.LEBM_T4,
                          ["mle", "pretrain", "pca"])


def t_ance2(ctx):
    return _anomaly_table(ctx, "Adaptive multi-stage NCE (Xiao & Han 2022) Table 2 — MNIST anomaly detection (AUPRC)",
                          papers.ANCE_T2, ["adaptive-nce", "mle", "pretrain", "pca"])


def t_joint4(ctx):
    return _anomaly_table(ctx, "Joint latent-space EBM prior (Cui, Wu & Han 2023) Table 4 — MNIST anomaly detection (AUPRC)",
                          papers.JOINT_T4, ["joint-mle", "mle", "pretrain", "pca"])


def t_anomaly(ctx):
    """The combined hold-one-digit table (cpu-anomaly): every method beside the paper row it reproduces."""
    rows = {}
    for m in ("mle", "adaptive-nce", "joint-mle"):
        label, vals = papers.ANOMALY_PAPER_ROW[m]
        rows[label] = vals
    spec = {"source": f"{papers.LEBM} Table 4, {papers.ANCE} Table 2, {papers.JOINT} Table 4", "rows": rows}
    return _anomaly_table(ctx, f"MNIST hold-one-digit anomaly detection, all latent methods ({ctx.args.scale} scale)",
                          spec, ["mle", "adaptive-nce", "joint-mle", "pretrain", "pca"])


TABLES = {
    "lebm-table1": t_lebm1, "lebm-table4": t_lebm4,
    "ance-table1": t_ance1, "ance-table2": t_ance2, "ance-table3": t_ance3,
    "joint-table1": t_joint1, "joint-table4": t_joint4,
    "bidvl-table1": t_bidvl1, "bidvl-table3": t_bidvl3, "bidvl-table4": t_bidvl4, "bidvl-table5": t_bidvl5,
    "anomaly": t_anomaly,
}


def draw_figure(ctx: Ctx, path: Path, title: str) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # ebmtool from this checkout
    from ebmtool.eval import plots

    if "auprc" in ctx.figure:
        results, random, reference = ctx.figure["auprc"]
        plots.auprc_per_digit(results, random, str(path), title=f"{title}\nmean ± std over seeds", reference=reference)
    else:
        plots.bar_panels(ctx.figure["panels"], str(path), title=title)


def cmd_render(args) -> int:
    ctx = Ctx(args)
    text = TABLES[args.table](ctx)
    out = Path(args.output)
    figure = None
    if ctx.figure is not None:
        figure = out.with_suffix(".png")
        out.parent.mkdir(parents=True, exist_ok=True)
        title = text.splitlines()[0].lstrip("# ").strip()
        draw_figure(ctx, figure, title)
        head, _, rest = text.partition("\n")
        text = f"{head}\n\n![{args.table}]({figure.name})\n{rest}"
    atomic_write(out, text)
    print(json.dumps({"output": args.output, "table": args.table, "figure": str(figure) if figure else None}))
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "run":
        return cmd_run(argv[1:])
    ap = argparse.ArgumentParser(prog="table.py")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("noise")
    p.add_argument("--like", required=True)
    p.add_argument("-o", "--output", required=True)
    p.add_argument("-n", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("pca")
    p.add_argument("--train", required=True)
    p.add_argument("--test", required=True)
    p.add_argument("--anomaly-class", type=int, required=True)
    p.add_argument("--components", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("render")
    p.add_argument("table", choices=sorted(TABLES))
    p.add_argument("-o", "--output", required=True)
    p.add_argument("--scale", required=True, choices=["smoke", "cpu", "paper"])
    p.add_argument("--runs", required=True, help="RUNS/SCALE folder")
    p.add_argument("--col", action="append", help="logical dataset=data folder, e.g. svhn=digits32")
    p.add_argument("--digits", type=int, nargs="*", default=[])
    p.add_argument("--seeds", type=int, nargs="*", default=[])
    p.add_argument("--target", default=None, help="the make target that makes this table (named in its notes)")
    inputs: list[str] = []
    if "--" in argv:  # render ... -- INPUTS: the files the table was made from (for lineage and wall time)
        argv, inputs = argv[: argv.index("--")], argv[argv.index("--") + 1:]
    args = ap.parse_args(argv)
    args.inputs = inputs
    if args.cmd == "noise":
        return cmd_noise(args)
    if args.cmd == "pca":
        return cmd_pca(args)
    return cmd_render(args)


if __name__ == "__main__":
    sys.exit(main())
