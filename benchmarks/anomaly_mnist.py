"""MNIST hold-one-digit anomaly benchmark, protocol v2 (docs/design.md, "Evaluation protocols").

The split: the real 10,000-image MNIST test set (the only MNIST on this project's machines; ``MNIST_ROOT``
overrides where it is read), for held-out digit K: 20% of the normals + every K for testing, the other
80% of normals for training, of which 10% are held out from fitting as *calibration* normals (used only by
the label-free ``typicality`` and ``dose`` scores). Every row of a (digit, seed) is fitted on the same ``fit`` part and
scored on the same ``test`` part.

Rows, each the way its paper trains it:

- ``pca``: PCA (32 components) reconstruction error; ``random``: the prevalence (AUPRC of a random score);
  ``data``: the feature-FID floor, held-out normals (the calibration part) against the fit part.
- ``pretrain``: the 0-stage generator, z ~ N(0, I), trained with posterior Langevin.
- ``pretrain-matched``: the 0-stage generator trained on to as many updates as ``mle`` (10 + 6 epochs), so the
  learned priors are also compared with a plain generator that had the same training.
- ``mle``: LEBM from scratch (Pang et al. 2020, Algorithm 1: prior and generator from initialisation).
- ``adaptive-nce``: 4 NCE stages from the 0-stage generator (Xiao & Han), added one stage at a time.
- ablations (published digits): ``mle-warm`` (LEBM from the 0-stage generator), ``nce`` (1 stage),
  ``adaptive-nce-tre`` (``--non-adaptive``), ``joint-mle`` (Cui et al. 2023, from scratch), ``adaptive-nce-xh``
  (adaptive NCE in its paper's Langevin convention, eq. 3, with its step sizes).

Scoring, equal for every latent model: posterior short-run Langevin, ``SCORE_CHAIN`` steps and step size,
from N(0, I); ``CHAINS`` independent chains per image at the final checkpoint, AUPRC per chain, reported as
the mean and std over chains. Every label-free score of ``ebmtool.eval.scores`` is a column, from the
same chains. The reconstruction MSE at the posterior sample is kept separately for normals and anomalies.

Learning curves: mle is trained in chunks of ``CHUNK`` epochs (each chunk continues the previous model
with ``--init``: Adam's moments restart, the weights do not), adaptive NCE stage by stage; after each
chunk / stage one chain scores the test part and a row goes to ``anomaly_mnist_curve.csv``.

One CSV row per (method, digit, seed, precision) is appended as soon as it is measured; rows already in
the file are skipped, so the table fills in over several sessions.

    .venv/bin/python benchmarks/anomaly_mnist.py [--digits 1 4 5 7 9] [--seeds 0 1 2]
        [--methods pretrain mle adaptive-nce] [--precision bf16] [--threads 1]
    .venv/bin/python benchmarks/anomaly_mnist.py --report      # markdown tables from the CSV
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from ebmtool import stages  # noqa: E402
from ebmtool.stages.evaluate import score_terms  # noqa: E402
from ebmtool.config import resolve  # noqa: E402
from ebmtool.data import DataConfig, load_images  # noqa: E402
from ebmtool.eval import scores as S  # noqa: E402
from ebmtool.eval.anomaly import binary_labels, metrics, pca_scores  # noqa: E402
from ebmtool.methods import METHODS  # noqa: E402
from ebmtool.models import load_model  # noqa: E402
from ebmtool.runtime import resolve as resolve_precision  # noqa: E402
from bench_csv import append, cpu_name, locked, read, write_all  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "anomaly_mnist_v2.csv"
CURVE = ROOT / "benchmarks" / "results" / "anomaly_mnist_curve.csv"
WORK = ROOT / "runs" / "anomaly_mnist_v2"
MNIST = Path(os.environ.get("MNIST_ROOT") or ROOT.parent / "shared" / "data" / "mnist")
PROTOCOL = "v2"
CHAINS = 2
SCORE_CHAIN = {"steps": 30, "step_size": 0.1}
CHUNK = 4  # mle epochs per curve point
FID_SAMPLES = 2000
# The budget of every row: the cpu preset plus these flags (one generator size shared by all rows).
NET = {"generator": {"nz": 16, "ngf": 16}}
BUDGET = {
    "pretrain": {"epochs": 10, **NET},
    "mle": {"epochs": 16, **NET},
    # the 0-stage generator continued to LEBM's number of updates: is a learned prior worth more than more training?
    "pretrain-matched": {"epochs": 6, **NET},
    "mle-warm": {"epochs": 8, **NET},
    "joint-mle": {"epochs": 16, **NET},
    "adaptive-nce": {"stages": 4, "epochs_per_stage": 2, **NET},
    "nce": {"stages": 1, "epochs_per_stage": 8, **NET},
    "adaptive-nce-tre": {"stages": 4, "epochs_per_stage": 2, "non_adaptive": True, **NET},
}
# adaptive NCE with its paper's Langevin convention (eq. 3: z + (s/2) grad + sqrt(s) noise) and step sizes (App. A.3:
# s = 0.1 for the posterior and for test-time prior sampling), i.e. ebmtool's one sampler at sqrt(0.1) = 0.316
XH = {c: {"convention": "xiao-han", "step_size": 0.1} for c in ("posterior", "sampling", "prior")}
BUDGET["adaptive-nce-xh"] = {**BUDGET["adaptive-nce"], **XH}
METHOD_OF = {"pretrain-matched": "pretrain", "mle-warm": "mle", "adaptive-nce-tre": "adaptive-nce", "adaptive-nce-xh": "adaptive-nce"}
FROM_GEN = {"pretrain-matched", "mle-warm", "adaptive-nce", "nce", "adaptive-nce-tre", "adaptive-nce-xh"}  # --init the 0-stage generator
CORE = ["pca", "random", "data", "pretrain", "mle", "adaptive-nce", "pretrain-matched"]
ABLATIONS = ["mle-warm", "nce", "adaptive-nce-tre", "joint-mle", "adaptive-nce-xh"]
SCORE_COLS = [f"auprc_{s}" for s in S.SCORES]
FIELDS = (["protocol", "method", "digit", "seed", "precision", "budget", "updates", "chains", "n_test",
           "n_anomalous", "random_auprc"] + SCORE_COLS + ["auprc_joint_chain_std", "auroc_joint",
           "mse_normal", "mse_anomalous", "fid_features", "features_accuracy", "train_wall_s", "score_wall_s", "cpu",
    "torch", "threads"])
CURVE_FIELDS = ["protocol", "method", "digit", "seed", "precision", "updates", "epochs"] + SCORE_COLS + [
    "mse_normal", "mse_anomalous", "train_wall_s", "cpu"]


def parts(digit: int) -> dict[str, str]:
    WORK.mkdir(parents=True, exist_ok=True)
    out = {}
    for part in ("fit", "calibration", "test"):
        p = WORK / f"mnist-no{digit}-{part}.safetensors"
        if not p.exists():
            tmp = p.with_suffix(f".{os.getpid()}.tmp.safetensors")
            stages.data_prepare(DataConfig(dataset="mnist", root=str(MNIST), split="test", size=32,
                                           anomaly_protocol=digit, part=part), str(tmp))
            os.replace(tmp, p)
        out[part] = str(p)
    return out


def fit(method: str, data: str, out: Path, seed: int, prec: str, init: str | None, **over) -> float:
    """Train one model with the row's budget (``over`` replaces budget keys); returns wall seconds."""
    if out.exists():  # trained earlier (e.g. by an interrupted run of this script): its own recorded wall time
        from ebmtool.artifacts import load

        return float(load(out).meta.get("wall_time_s", 0.0))
    m = METHOD_OF.get(method, method)
    flags = {**BUDGET[method], **over, "seed": seed, "precision": prec}
    cfg = resolve(METHODS[m].config, method=m, preset="cpu", toml=None, flags=flags)
    ck = stages.checkpoint_path(str(out))  # left by an interrupted run (SIGTERM writes one): continue it
    t0 = time.perf_counter()
    stages.train(m, cfg, data, str(out), init_path=init, quiet=True, resume=str(ck) if ck.exists() else None)
    return time.perf_counter() - t0


def evaluate(model_path: str, p: dict[str, str], digit: int, seed: int, prec: str, chains: int) -> dict:
    """Every score's AUPRC (mean over ``chains`` posterior chains), its chain std for joint, MSE by class."""
    dev = torch.device("cpu")
    model, _ = load_model(model_path, device=dev)
    x, lab, _ = load_images(p["test"])
    xc, _, _ = load_images(p["calibration"])
    y = binary_labels(lab, [digit]).numpy()
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    # the same chain for every model: --step-size is read in the model's convention, so ask for the step that
    # runs the one sampler at SCORE_CHAIN's step size (lebm: s; xiao-han: s^2, whose square root is s)
    xh = getattr(getattr(model, "inference", None), "convention", "lebm") == "xiao-han"
    chain = {**SCORE_CHAIN, "step_size": SCORE_CHAIN["step_size"] ** 2 if xh else SCORE_CHAIN["step_size"]}
    per: dict[str, list[float]] = {c: [] for c in SCORE_COLS}
    auroc, mse_n, mse_a = [], [], []
    t0 = time.perf_counter()
    for c in range(chains):
        torch.manual_seed(10_000 * seed + c)
        with resolve_precision(prec, dev).context(dev):
            terms = {k: v.numpy() for k, v in score_terms(model, x, device=dev, **chain).items()}
            cal = {k: v.numpy() for k, v in score_terms(model, xc, device=dev, **chain).items()}
        for s in S.SCORES:
            sc = S.score(s, terms, images=u8, calibration=cal)
            per[f"auprc_{s}"].append(metrics(y, sc).auprc)
        auroc.append(metrics(y, S.joint(terms)).auroc)
        mse = terms["recon"] * 2 * model.sigma ** 2 / x[0].numel()
        mse_n.append(float(mse[y == 0].mean()))
        mse_a.append(float(mse[y == 1].mean()))
    m = metrics(y, S.joint(terms))
    return {**{k: f"{np.mean(v):.4f}" for k, v in per.items()},
            "auprc_joint_chain_std": f"{np.std(per['auprc_joint'], ddof=1):.4f}" if chains > 1 else "",
            "auroc_joint": f"{np.mean(auroc):.4f}", "mse_normal": f"{np.mean(mse_n):.5f}",
            "mse_anomalous": f"{np.mean(mse_a):.5f}", "n_test": m.n, "n_anomalous": m.n_anomalous,
            "random_auprc": f"{m.n_anomalous / m.n:.4f}", "chains": chains,
            "score_wall_s": f"{time.perf_counter() - t0:.1f}"}


def features(digit: int, p: dict[str, str]) -> str:
    """The digit's FID feature space: ``train-features`` (LeNet, early stopping) on the fit part, seed 0."""
    out = WORK / f"features-d{digit}.safetensors"
    if not out.exists():
        stages.train_features(p["fit"], str(out), seed=0, device="cpu")
    return str(out)


def fid_row(model_path: str, digit: int, seed: int, p: dict[str, str]) -> dict:
    """Feature-space FID of FID_SAMPLES prior samples against the fit images; a sample grid beside the model."""
    from ebmtool.artifacts import load

    feats = features(digit, p)
    smp = Path(model_path).with_suffix(".samples.safetensors")
    if not smp.exists():
        stages.sample(model_path, FID_SAMPLES, out=str(smp), grid=str(Path(model_path).with_suffix(".png")),
                      seed=seed, device="cpu")
    r = stages.fid(str(smp), p["fit"], features=feats, device="cpu", cache_dir=str(WORK / "fid-cache"))
    return {"fid_features": f"{r.value:.3f}", "features_accuracy": f"{float(load(feats).meta['accuracy']):.4f}"}


def model_path(method: str, digit: int, seed: int, prec: str) -> Path:
    """Where run_cell leaves the final model of a row."""
    tag = f"d{digit}-s{seed}-{prec}"
    if method == "pretrain":
        return WORK / f"gen-{tag}.safetensors"
    if method == "mle":
        return WORK / f"mle-{tag}-e{BUDGET['mle']['epochs']}.safetensors"
    if method in ("adaptive-nce", "adaptive-nce-xh"):
        return WORK / f"{method}-{tag}-k{BUDGET[method]['stages']}.safetensors"
    return WORK / f"{method}-{tag}.safetensors"


def model_files(method: str, digit: int, seed: int, prec: str) -> list[Path]:
    """Every artifact a row trained (mle's chunks, adaptive NCE's stages; the 0-stage generator is its own row)."""
    tag = f"d{digit}-s{seed}-{prec}"
    if method == "mle":
        return [WORK / f"mle-{tag}-e{e}.safetensors" for e in range(CHUNK, BUDGET["mle"]["epochs"] + 1, CHUNK)]
    if method in ("adaptive-nce", "adaptive-nce-xh"):
        return [WORK / f"{method}-{tag}-k{k}.safetensors" for k in range(1, BUDGET[method]["stages"] + 1)]
    if method == "pretrain-matched":  # its whole training: the 0-stage generator and the epochs after it
        return [model_path("pretrain", digit, seed, prec), model_path(method, digit, seed, prec)]
    return [model_path(method, digit, seed, prec)]


def rescore() -> None:
    """Fill the cells a row lacks (scores or FID added after it was measured) from its model, kept under runs/,
    and set its training wall time to the sum of what its artifacts recorded (a row whose models an interrupted
    run had already trained would otherwise show only the time of the rest).
    The scoring chains are seeded as in run_cell, so the cells a row already has would come out the same."""
    rows = read(RESULTS)
    for r in rows:
        if r["method"] in ("pca", "random", "data"):
            continue
        mp = model_path(r["method"], int(r["digit"]), int(r["seed"]), r["precision"])
        need_scores = any(not r.get(c) for c in SCORE_COLS)
        need_fid = not r.get("fid_features")
        files = model_files(r["method"], int(r["digit"]), int(r["seed"]), r["precision"])
        if all(f.exists() for f in files):  # each artifact records its own training time
            from ebmtool.artifacts import load

            wall = f"{sum(float(load(f).meta.get('wall_time_s', 0.0)) for f in files):.1f}"
            b = {k: str(v) for k, v in budget_of(r["method"], len(load_images(parts(int(r["digit"]))["fit"])[0])).items()}
            need_wall = wall != r.get("train_wall_s") or any(r.get(k) != v for k, v in b.items())
            r.update({"train_wall_s": wall, **b})
        else:
            need_wall = False
        if not mp.exists() or not (need_scores or need_fid or need_wall):
            continue
        p = parts(int(r["digit"]))
        if need_scores:
            new = evaluate(str(mp), p, int(r["digit"]), int(r["seed"]), r["precision"], int(r["chains"] or CHAINS))
            r.update({c: new[c] for c in SCORE_COLS if not r.get(c)})
        if need_fid:
            r.update(fid_row(str(mp), int(r["digit"]), int(r["seed"]), p))
        key = (r["method"], r["digit"], r["seed"], r["precision"])
        with locked(RESULTS):  # merge into the file as it is now (another process may have appended rows)
            now = read(RESULTS)
            for q in now:
                if (q["method"], q["digit"], q["seed"], q["precision"]) == key:
                    q.update({k: v for k, v in r.items()
                              if v and (not q.get(k) or k in ("train_wall_s", "budget", "updates"))})
            write_all(RESULTS, FIELDS, now)
        print("rescored", r["method"], r["digit"], r["seed"], {c: r.get(c) for c in ("auprc_dose", "fid_features")},
              flush=True)


NCE_STATS = ROOT / "benchmarks" / "results" / "anomaly_mnist_nce.csv"
NCE_FIELDS = ["protocol", "method", "digit", "seed", "precision", "stage", "nce_first_epoch", "nce_last_epoch", "chance",
              "log_r_pos", "log_r_neg"]


def nce_stats() -> None:
    """Per adaptive-NCE stage of every measured run: the NCE loss of its first and last epoch against chance
    (2 ln 2: a ratio that tells nothing), and the mean log r_k on posterior (pos) and prior (neg) samples in
    the last epoch, read from the stage models kept under runs/. Rewrites anomaly_mnist_nce.csv."""
    import math

    from ebmtool.artifacts import load

    out = []
    for r in read(RESULTS):
        if r["method"] not in ("adaptive-nce", "adaptive-nce-xh"):
            continue
        tag = f"d{r['digit']}-s{r['seed']}-{r['precision']}"
        for k in range(1, BUDGET[r["method"]]["stages"] + 1):
            mp = WORK / f"{r['method']}-{tag}-k{k}.safetensors"
            if not mp.exists():
                continue
            t = load(mp).tensors
            nce = t["history.nce"].tolist()
            out.append({"protocol": PROTOCOL, "method": r["method"], "digit": r["digit"], "seed": r["seed"], "precision": r["precision"],
                        "stage": k, "nce_first_epoch": f"{nce[0]:.4f}", "nce_last_epoch": f"{nce[-1]:.4f}",
                        "chance": f"{2 * math.log(2):.4f}", "log_r_pos": f"{float(t['history.log_r_pos'][-1]):.4f}",
                        "log_r_neg": f"{float(t['history.log_r_neg'][-1]):.4f}"})
    with locked(NCE_STATS):
        write_all(NCE_STATS, NCE_FIELDS, out)


def updates(n_fit: int, epochs: int) -> int:
    return epochs * (n_fit // 100)


def mle_chunks(digit: int, seed: int, prec: str, cpu: str, total: int) -> tuple[Path, float]:
    """LEBM from scratch to ``total`` epochs in chunks of CHUNK, each continuing the previous artifact, with one
    learning-curve point per chunk; chunks trained earlier are reused. Returns the last model and the wall time."""
    p, tag = parts(digit), f"d{digit}-s{seed}-{prec}"
    n_fit = len(load_images(p["fit"])[0])
    done, prev, wall = 0, None, 0.0
    while done < total:
        e = min(CHUNK, total - done)
        out = WORK / f"mle-{tag}-e{done + e}.safetensors"
        wall += fit("mle", p["fit"], out, seed + 1000 * done, prec, prev, epochs=e)
        done += e
        prev = str(out)
        curve_point("mle", digit, seed, prec, out, p, updates(n_fit, done), done, wall, cpu)
    return Path(prev), wall


def run_cell(method: str, digit: int, seed: int, prec: str, cpu: str) -> dict | None:
    p = parts(digit)
    tag = f"d{digit}-s{seed}-{prec}"
    n_fit = len(load_images(p["fit"])[0])
    common = {"protocol": PROTOCOL, "method": method, "digit": digit, "seed": seed, "precision": prec,
              "cpu": cpu, "torch": torch.__version__, "threads": torch.get_num_threads()}
    if method == "data":  # the FID floor: held-out normals (calibration part) against the fit part
        feats = features(digit, p)
        r = stages.fid(p["calibration"], p["fit"], features=feats, device="cpu", cache_dir=str(WORK / "fid-cache"))
        from ebmtool.artifacts import load

        return {**common, "budget": "none (real images)", "fid_features": f"{r.value:.3f}",
                "features_accuracy": f"{float(load(feats).meta['accuracy']):.4f}"}
    if method in ("pca", "random"):
        x, _, _ = load_images(p["fit"])
        xt, lt, _ = load_images(p["test"])
        y = binary_labels(lt, [digit]).numpy()
        if method == "pca":
            t0 = time.perf_counter()
            m = metrics(y, pca_scores(x, xt, seed=seed))
            return {**common, "budget": "PCA 32 components", "auprc_joint": f"{m.auprc:.4f}", "auroc_joint": f"{m.auroc:.4f}",
                    "n_test": m.n, "n_anomalous": m.n_anomalous, "random_auprc": f"{m.n_anomalous / m.n:.4f}",
                    "train_wall_s": f"{time.perf_counter() - t0:.1f}"}
        return {**common, "budget": "none", "auprc_joint": f"{y.mean():.4f}", "auroc_joint": "0.5000",
                "n_test": len(y), "n_anomalous": int(y.sum()), "random_auprc": f"{y.mean():.4f}"}
    gen = WORK / f"gen-{tag}.safetensors"
    wall = fit("pretrain", p["fit"], gen, seed, prec, None)
    if method == "pretrain":
        model = gen
    elif method == "mle":  # from scratch, in chunks: one curve point per chunk
        model, wall = mle_chunks(digit, seed, prec, cpu, BUDGET[method]["epochs"])
    elif method in ("adaptive-nce", "adaptive-nce-xh"):
        prev, k = str(gen), BUDGET[method]["stages"]
        ep = BUDGET[method]["epochs_per_stage"]
        wall = 0.0
        for s in range(1, k + 1):  # stage by stage, as the paper adds them
            out = WORK / f"{method}-{tag}-k{s}.safetensors"
            wall += fit(method, p["fit"], out, seed + 1000 * s, prec, prev, stages=1)
            prev = str(out)
            curve_point(method, digit, seed, prec, out, p, updates(n_fit, ep * s), ep * s, wall, cpu)
        model = Path(prev)
    else:
        model = WORK / f"{method}-{tag}.safetensors"
        later = seed + 1000 * BUDGET["pretrain"]["epochs"] if method == "pretrain-matched" else seed  # new batches
        more = fit(method, p["fit"], model, later, prec, str(gen) if method in FROM_GEN else None)
        wall = wall + more if method == "pretrain-matched" else more  # its whole training, as LEBM's row
    r = {**evaluate(str(model), p, digit, seed, prec, CHAINS), **fid_row(str(model), digit, seed, p)}
    return {**common, **r, **budget_of(method, n_fit), "train_wall_s": f"{wall:.1f}"}


def budget_of(method: str, n_fit: int) -> dict:
    """The row's budget text and its updates (rows started from the 0-stage generator count their own updates,
    except pretrain-matched, which is compared with LEBM by its whole training)."""
    b = BUDGET[method]
    epochs = b.get("epochs") or b["stages"] * b["epochs_per_stage"]
    if method == "pretrain-matched":
        return {"budget": f"cpu preset + {BUDGET['pretrain']} then {epochs} more epochs (LEBM's updates)",
                "updates": updates(n_fit, BUDGET["pretrain"]["epochs"] + epochs)}
    return {"budget": f"cpu preset + {b}" + (" after the 0-stage generator" if method in FROM_GEN else ""),
            "updates": updates(n_fit, epochs)}


def curve_point(method, digit, seed, prec, model, p, ups, epochs, wall, cpu) -> None:
    key = (method, str(digit), str(seed), prec, str(ups))
    if any((r["method"], r["digit"], r["seed"], r["precision"], r["updates"]) == key for r in read(CURVE)):
        return
    r = evaluate(str(model), p, digit, seed, prec, 1)
    append(CURVE, CURVE_FIELDS, {"protocol": PROTOCOL, "method": method, "digit": digit, "seed": seed,
                                 "precision": prec, "updates": ups, "epochs": epochs, "train_wall_s": f"{wall:.1f}",
                                 "cpu": cpu, **{k: r[k] for k in SCORE_COLS + ["mse_normal", "mse_anomalous"]}})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--digits", type=int, nargs="+", default=[1, 4, 5, 7, 9, 0, 2, 3, 6, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--methods", nargs="+", default=CORE, choices=CORE + ABLATIONS)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--report", action="store_true", help="print the markdown tables and exit")
    ap.add_argument("--nce-stats", action="store_true", help="rewrite anomaly_mnist_nce.csv from the stage models and exit")
    ap.add_argument("--rescore", action="store_true", help="fill missing score/FID cells of measured rows and exit")
    ap.add_argument("--curve-to", type=int, metavar="EPOCHS",
                    help="extend LEBM's learning curve to EPOCHS (curve rows only, no table rows) and exit")
    args = ap.parse_args()
    if args.nce_stats:
        nce_stats()
        return
    if args.rescore:
        torch.set_num_threads(args.threads)
        rescore()
        return
    if args.report:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from anomaly_report import report

        print(report())
        return
    if not (MNIST / "t10k-images-idx3-ubyte.gz").exists():
        sys.exit(f"anomaly_mnist: no MNIST test set under {MNIST} (set MNIST_ROOT, or run "
                 "`ebmtool data prepare --dataset mnist --download --root DIR`)")
    torch.set_num_threads(args.threads)
    cpu = cpu_name()
    if args.curve_to:  # the budget study: does AUPRC flatten beyond the table's budget?
        for seed in args.seeds:
            for digit in args.digits:
                mle_chunks(digit, seed, args.precision, cpu, args.curve_to)
        return
    for seed in args.seeds:
        for digit in args.digits:
            for m in args.methods:
                done = {(r["method"], r["digit"], r["seed"], r["precision"]) for r in read(RESULTS)}
                prec = "fp32" if m in ("pca", "random", "data") else args.precision
                if (m, str(digit), str(seed), prec) in done:
                    continue
                row = run_cell(m, digit, seed, prec, cpu)
                append(RESULTS, FIELDS, row)
                print({k: row.get(k) for k in ("method", "digit", "seed", "auprc_joint", "auprc_typicality",
                                              "auprc_complexity", "train_wall_s")}, flush=True)


if __name__ == "__main__":
    from ebmtool.errors import UserError
    from ebmtool.training import Interrupted

    try:
        main()
    except Interrupted as e:  # SIGINT/SIGTERM in training: its checkpoint was written, and this script resumes it
        sys.exit(f"anomaly_mnist: interrupted at iteration {e.iteration}; checkpoint written to {e.checkpoint}; run "
                 "the same command again to continue (finished rows are kept, the training resumes from its "
                 "checkpoint)")
    except (KeyboardInterrupt, UserError) as e:
        sys.exit(f"anomaly_mnist: {str(e) or 'interrupted'}; run the same command again to continue (finished "
                 "rows are kept, an interrupted training resumes from its checkpoint)")
