"""MNIST hold-one-digit anomaly benchmark, protocol v3: the papers' data, image size, split and score.

Data: all 70,000 MNIST images (the training file then the test file, ``data prepare --split train+test``) at
their native 28x28. For held-out digit K (``data prepare --anomaly-protocol K``, the one split implementation):
the normals are permuted once with a fixed seed; 80% train (of which 10% are held out as *calibration* normals,
used only by the label-free scores and the chain-length rule below), the other 20% of normals + every K are the
test part. ``MNIST_ROOT`` overrides where the four IDX files are read (default: ../shared/data/mnist).

Model (the LEBM group's MNIST anomaly code): the fully connected generator ``mnist28`` (nz 20 -> 512 -> 1024 ->
784), sigma 0.3, energy MLP 20 -> 200 -> 200 -> 1; the ``paper`` preset's chains and learning rates.

Budget, fixed before any run and without test labels (docs/design.md §5): the lineage's ~10k updates (21 epochs)
cost ~30 CPU-minutes of LEBM training per row on this project's CPUs, so every row gets the largest budget that
keeps a core row near 10 CPU-minutes: ``EPOCHS`` = 8 epochs of the fit part (8 x 453 = 3,624 updates), the same for
every learned row: LEBM from scratch 8 epochs; the 0-stage generator 4 epochs; adaptive NCE = that generator +
4 stages of 1 epoch; the update-matched generator = that generator + 4 more epochs.

Score (the lineage's): -log p(x, z) = ||x - g(z)||^2 / (2 sigma^2) - f(z) + ||z||^2 / 2 at one z per image from a
noise-free posterior chain (step s = 0.1, LEBM form) started at N(0, I). Its length is chosen per model by a
label-free rule on the first ``CHAIN_RULE_N`` calibration normals: the first multiple of 25 steps (at most 400, the
lineage's) at which the last 50 steps lowered their mean -log p(x, z) by less than 1% of the total decrease so far.
A model with an inference model (``joint-vi``) is scored as the joint paper scores its anomaly rows (Cui, Wu & Han
2023, Sec. 5.2: the un-normalised log-posterior, eq. 20 with k = 0): the same -log p(x, z) at one sample of its
q(z|x), no chain (``score_steps`` 0). It trains with prior chains started at q's samples (``negatives_from=positives``,
contrastive divergence): from the paper's N(0, I) starts its z_1 ran away within the first epoch on MNIST (README, v3
reading). The ``vae`` row (``--methods vae``) is its ablation: ``joint-vi --set ebm=false``, the same networks,
budget and score without the energy terms (a hierarchical VAE). Every label-free score of ``ebmtool.eval.scores``
comes from the same z (typicality and dose calibrated on the first ``CAL_N`` calibration normals).

Curves: every epoch's model (``fit-prior --snapshots``; adaptive NCE: every stage) scored on a fixed stratified
``CURVE_N``-image subsample of the test part, with the final model's chain length (or its q(z|x)); never used to choose anything.
The lineage's practices are computed from the same runs: the mean over the last epochs of the curve and the best
test epoch (from the curve), and the reconstruction term weighted 1 instead of 1/(2 sigma^2) (from the final
model's saved score terms).

    .venv/bin/python benchmarks/anomaly_mnist_v3.py [--digits 1 4 5 7 9] [--seeds 0] [--methods ...]
        [--precision auto] [--threads 1]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_csv import append, cpu_name, read  # noqa: E402
from ebmtool import stages  # noqa: E402
from ebmtool.artifacts import load  # noqa: E402
from ebmtool.config import resolve  # noqa: E402
from ebmtool.data import DataConfig, load_images  # noqa: E402
from ebmtool.eval import scores as S  # noqa: E402
from ebmtool.errors import DivergenceError, UserError  # noqa: E402
from ebmtool.training import Interrupted  # noqa: E402
from ebmtool.eval.anomaly import binary_labels, metrics, pca_scores  # noqa: E402
from ebmtool.methods import METHODS  # noqa: E402
from ebmtool.models import load_model  # noqa: E402
from ebmtool.runtime import resolve as resolve_precision  # noqa: E402
from ebmtool.stages.evaluate import score_terms  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "anomaly_mnist_v3.csv"
CURVE = ROOT / "benchmarks" / "results" / "anomaly_mnist_v3_curve.csv"
WORK = ROOT / "runs" / "anomaly_mnist_v3"
MNIST = Path(os.environ.get("MNIST_ROOT") or ROOT.parent / "shared" / "data" / "mnist")
PROTOCOL = "v3"
PRESET = "paper"
NET = {"generator": {"arch": "mnist28", "nz": 20, "ngf": 64}}
EPOCHS = 8
GEN_EPOCHS = 4
DEVICE = torch.device("cpu")
# a session that ends with kill -9 loses at most this many iterations of a row (a minute or less here), and the
# seconds spent so far are kept every SPENT_EVERY_S for the resumed row's total
CHECKPOINT_EVERY = 100
SPENT_EVERY_S = 30.0
# --budget paper (a GPU; not run on this project's CPUs): the lineage's ~70k updates, 154 epochs of the fit part:
# LEBM from scratch 154 epochs; the 0-stage generator 54; adaptive NCE that generator + 4 stages x 25 epochs (the
# paper preset's stage length); the update-matched generator that generator + 100 epochs.
PAPER_BUDGET = {"epochs": 154, "gen_epochs": 54}
# --budget lineage (issue 35): the lineage's ~10k updates on a CPU, 20 epochs of the fit part (20 x 453 = 9,060), on
# adaptive NCE's own schedule (Xiao & Han, arXiv:2209.08739, Appendix A: a new stage every quarter of the training,
# the generator trained throughout, no separate pretraining): 4 stages x 5 epochs from scratch; LEBM 20 epochs from
# scratch; the update-matched generator 20 epochs from scratch. Rows in anomaly_mnist_v3_lineage.csv.
LINEAGE_BUDGET = {"epochs": 20, "gen_epochs": 0}
BUDGET = {
    "pretrain": {"epochs": GEN_EPOCHS, **NET},
    "pretrain-matched": {"epochs": EPOCHS - GEN_EPOCHS, **NET},  # after the 0-stage generator
    "mle": {"epochs": EPOCHS, **NET},
    "adaptive-nce": {"stages": 1, "epochs_per_stage": (EPOCHS - GEN_EPOCHS) // 4, **NET},  # per stage, 4 stages
    "joint-mle": {"epochs": EPOCHS, **NET},
    # contrastive-divergence negatives: from the paper's N(0, I) starts q(z_1|x) ran away in epoch 1 (README, v3)
    "joint-vi": {"epochs": EPOCHS, "negatives_from": "positives", **NET},
    # its ablation: the same networks, budget and score without the energy terms (a hierarchical VAE)
    "vae": {"epochs": EPOCHS, "ebm": False, **NET},
}
STAGES = 4
METHOD_OF = {"pretrain-matched": "pretrain", "vae": "joint-vi"}
CORE = ["random", "pca", "pretrain", "mle", "adaptive-nce", "pretrain-matched"]
EXTRA = ["joint-mle", "joint-vi", "vae"]
FROM_SCRATCH = ("mle", "joint-mle", "joint-vi", "vae")
LEARNED_PRIOR = ("mle", "adaptive-nce", "joint-mle", "joint-vi")  # the rows with a published cell and practice rows
ENCODER = 0  # score_steps of a model scored by its own inference model q(z|x) (joint-vi; the joint paper's eq. 20)
PUBLISHED = [1, 4, 5, 7, 9]
SCORE_STEP = 0.1  # the lineage's noise-free posterior step, LEBM form
RULE_EVERY, RULE_WINDOW, RULE_TOL, RULE_MAX = 25, 50, 0.01, 400
CHAIN_RULE_N, CAL_N, CURVE_N = 500, 1000, 2000
SCORE_COLS = [f"auprc_{s}" for s in S.SCORES]
FIELDS = (["protocol", "method", "digit", "seed", "precision", "budget", "updates", "epochs", "score_steps",
           "score_step_size", "score_noise", "n_test", "n_anomalous", "random_auprc"] + SCORE_COLS +
          ["auroc_joint", "auprc_recon_weight1", "mse_normal", "mse_anomalous", "train_wall_s", "score_wall_s",
           "train_cpu_s", "score_cpu_s", "cpu", "torch", "threads", "auprc_joint_second_permutation"])
CURVE_FIELDS = ["protocol", "method", "digit", "seed", "precision", "epoch", "updates", "n_curve", "score_steps",
                "auprc_joint", "auprc_recon", "auprc_prior", "cpu", "nce_loss"]


def set_budget(epochs: int, gen_epochs: int, suffix: str) -> None:
    """Another budget (--budget paper): every row's epochs, and result files and models of their own."""
    global EPOCHS, GEN_EPOCHS, RESULTS, CURVE, WORK
    EPOCHS, GEN_EPOCHS = epochs, gen_epochs
    BUDGET["pretrain"]["epochs"] = gen_epochs or epochs  # gen_epochs 0: no 0-stage generator
    for m in FROM_SCRATCH:
        BUDGET[m]["epochs"] = epochs
    BUDGET["pretrain-matched"]["epochs"] = epochs - gen_epochs
    BUDGET["adaptive-nce"]["epochs_per_stage"] = (epochs - gen_epochs) // STAGES
    RESULTS = RESULTS.with_name(RESULTS.stem + suffix + ".csv")
    CURVE = CURVE.with_name(CURVE.stem + suffix + ".csv")
    WORK = WORK.with_name(WORK.name + suffix)


def set_protocol(name: str) -> None:
    """--protocol standard: the source's own split (train on the training file's normals, 10% of them held out as
    calibration normals; test on the whole 10,000-image test file), the same budget, score and rule; result files
    and models of their own."""
    global PROTOCOL, RESULTS, CURVE, WORK
    PROTOCOL = name
    RESULTS = RESULTS.with_name(RESULTS.name.replace("_v3", f"_{name}"))
    CURVE = CURVE.with_name(CURVE.name.replace("_v3", f"_{name}"))
    WORK = WORK.with_name(WORK.name.replace("_v3", f"_{name}"))


def parts(digit: int) -> dict[str, str]:
    """The digit's fit / calibration / test parts of the 70,000 images (made once, atomically), and
    ``test-second``: the test part as the protocol's original loader drew it (a second permutation, so most of its
    normals are training images; the training part is the same), for the practice row only."""
    WORK.mkdir(parents=True, exist_ok=True)
    out = {}
    standard = PROTOCOL == "standard"
    for part, perm in (("fit", "same"), ("calibration", "same"), ("test", "same")) + ((("test", "second"),) if not standard else ()):
        name = part if perm == "same" else f"{part}-{perm}"
        p = WORK / f"mnist70k-no{digit}-{name}.safetensors"
        if not p.exists():
            tmp = p.with_suffix(f".{os.getpid()}.tmp.safetensors")
            stages.data_prepare(DataConfig(dataset="mnist", root=str(MNIST), split="train+test",
                                           anomaly_protocol=digit, part=part, test_permutation=perm,
                                           anomaly_split="standard" if standard else "random"), str(tmp))
            os.replace(tmp, p)
        out[name] = str(p)
    return out


def fit(method: str, data: str, out: Path, seed: int, prec: str, init: str | None, snapshots: Path | None) -> float:
    """Train one model with its budget; the model as it stands after each epoch goes to ``snapshots``. Returns
    the training wall seconds. The process CPU seconds are kept beside the model (``.cpu_s``; wall time counts the
    waits a busy machine adds, CPU time what the row costs). An interrupted run resumes from its checkpoint, and
    the seconds of its earlier segments (``.partial.json``) are added, so a row counts its whole training."""
    import json

    if out.exists():
        t = out.with_suffix(".wall_s")
        return float(t.read_text()) if t.exists() else float(load(out).meta.get("wall_time_s", 0.0))
    partial = out.with_suffix(".partial.json")
    m = METHOD_OF.get(method, method)
    cfg = resolve(METHODS[m].config, method=m, preset=PRESET, toml=None,
                  flags={**BUDGET[method], "seed": seed, "precision": prec, "device": config_device()})
    ck = stages.checkpoint_path(str(out))
    if snapshots is not None and not ck.exists() and snapshots.exists():
        shutil.rmtree(snapshots)  # left by a run killed without a checkpoint: it starts again
    if not ck.exists():
        partial.unlink(missing_ok=True)  # a killed run's seconds, but no checkpoint to continue from
    before = json.loads(partial.read_text()) if partial.exists() else {"wall": 0.0, "cpu": 0.0}
    t0, c0 = time.perf_counter(), time.process_time()

    def spent() -> dict:
        return {"wall": before["wall"] + time.perf_counter() - t0, "cpu": before["cpu"] + time.process_time() - c0}

    def keep_spent() -> None:  # the seconds so far, for a next run after a kill -9 (resumes at the last checkpoint)
        tmp = partial.with_suffix(".tmp")
        tmp.write_text(json.dumps(spent()))
        os.replace(tmp, partial)

    ticker = threading.Event()

    def tick() -> None:
        while not ticker.wait(SPENT_EVERY_S):
            keep_spent()

    ticking = threading.Thread(target=tick, daemon=True)
    ticking.start()
    try:
        stages.train(m, cfg, data, str(out), init_path=init, quiet=True, resume=str(ck) if ck.exists() else None,
                     checkpoint_every=CHECKPOINT_EVERY, snapshots=str(snapshots) if snapshots is not None else None)
    except BaseException:
        ticker.set()
        ticking.join()
        if ck.exists():  # interrupted with a checkpoint: its next run continues, and counts this segment too
            keep_spent()
        raise
    ticker.set()
    ticking.join()
    total = spent()
    out.with_suffix(".cpu_s").write_text(f"{total['cpu']:.1f}\n")
    out.with_suffix(".wall_s").write_text(f"{total['wall']:.1f}\n")
    partial.unlink(missing_ok=True)
    return total["wall"]


def config_device() -> str:
    """The config's device: "auto" where that is the device asked for (the first rows' checkpoints recorded it)."""
    return "auto" if DEVICE.type == "cpu" and not torch.cuda.is_available() else DEVICE.type


def chain_length(model, xc: torch.Tensor, prec: str) -> int:
    """The label-free rule: run the noise-free chain on calibration normals, stop at the first multiple of
    RULE_EVERY steps where the last RULE_WINDOW steps lowered the mean -log p(x, z) by < RULE_TOL of the total
    decrease so far (RULE_MAX at most)."""
    dev = DEVICE
    chain = model.inference.override(RULE_MAX, SCORE_STEP, False)
    torch.manual_seed(0)
    with resolve_precision(prec, dev).context(dev):
        res = model.infer(xc, chain, record_every=RULE_EVERY)
    e = (-res.trajectory.stacked_log_probs().double().mean(1)).tolist()  # at steps 0, 25, 50, ...
    steps, back = res.trajectory.steps, RULE_WINDOW // RULE_EVERY
    for i in range(back, len(e)):
        if e[i - back] - e[i] < RULE_TOL * (e[0] - e[i]):
            return steps[i]
    return RULE_MAX


def terms_of(model_path: str, x: torch.Tensor, steps: int, seed: int, prec: str) -> dict[str, np.ndarray]:
    """The score terms at one z per image: from the noise-free chain of ``steps`` steps, or (``steps`` = ENCODER)
    a sample of the model's inference model q(z|x), the joint paper's decision function (eq. 20, k = 0)."""
    dev = DEVICE
    model, _ = load_model(model_path, device=dev)
    torch.manual_seed(10_000 * seed)
    chain = {} if steps == ENCODER else {"steps": steps, "step_size": SCORE_STEP, "noise": False}
    with resolve_precision(prec, dev).context(dev):
        t = score_terms(model, x, **chain, device=dev)
    return {k: v.numpy() for k, v in t.items()}


def curve_subsample(y: np.ndarray) -> np.ndarray:
    """A fixed stratified subsample of the test part (the same for every model of a digit)."""
    g = np.random.default_rng(12345)
    n_a = int(round(CURVE_N * y.mean()))
    a = g.choice(np.flatnonzero(y == 1), n_a, replace=False)
    b = g.choice(np.flatnonzero(y == 0), CURVE_N - n_a, replace=False)
    return np.sort(np.concatenate([a, b]))


def evaluate(model_path: Path, p: dict[str, str], digit: int, seed: int, prec: str) -> dict:
    """The final model's row: chain length by the rule, every score on the whole test part, the terms saved."""
    x, lab, _ = load_images(p["test"])
    xc, _, _ = load_images(p["calibration"])
    y = binary_labels(lab, [digit]).numpy()
    model, _ = load_model(str(model_path), device=DEVICE)
    t0, c0 = time.perf_counter(), time.process_time()
    steps = ENCODER if model.encoder is not None else chain_length(model, xc[:CHAIN_RULE_N], prec)
    terms = terms_of(str(model_path), x, steps, seed, prec)
    cal = terms_of(str(model_path), xc[:CAL_N], steps, seed, prec)
    np.savez(model_path.with_suffix(".terms.npz"), **terms, **{f"cal_{k}": v for k, v in cal.items()}, y=y)
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    row = {f"auprc_{s}": f"{metrics(y, S.score(s, terms, images=u8, calibration=cal)).auprc:.4f}" for s in S.SCORES}
    m = metrics(y, S.joint(terms))
    w1 = terms["recon"] * 2 * model.sigma ** 2 + terms["tilt"] + terms["base"]  # the recon term weighted 1
    mse = terms["recon"] * 2 * model.sigma ** 2 / x[0].numel()
    return {**row, "auroc_joint": f"{m.auroc:.4f}", "auprc_recon_weight1": f"{metrics(y, w1).auprc:.4f}",
            "mse_normal": f"{mse[y == 0].mean():.5f}", "mse_anomalous": f"{mse[y == 1].mean():.5f}",
            "n_test": m.n, "n_anomalous": m.n_anomalous, "random_auprc": f"{m.n_anomalous / m.n:.4f}",
            "score_steps": steps, "score_step_size": "" if steps == ENCODER else SCORE_STEP,
            "score_noise": "encoder q(z|x) sample" if steps == ENCODER else "none",
            "score_wall_s": f"{time.perf_counter() - t0:.1f}", "score_cpu_s": f"{time.process_time() - c0:.1f}"}


def curve(method: str, digit: int, seed: int, prec: str, points: list[tuple[int, Path]], steps: int,
          p: dict[str, str], cpu: str) -> None:
    """One curve row per (epoch, model) on the fixed subsample, with the final model's chain length (or its
    q(z|x): ``steps`` = ENCODER). An adaptive-NCE stage's row also keeps the stage's NCE loss at its end
    (``nce_loss``; chance, a ratio that tells nothing apart, is 2 ln 2 = 1.386)."""
    x, lab, _ = load_images(p["test"])
    y = binary_labels(lab, [digit]).numpy()
    idx = curve_subsample(y)
    n_fit = len(load_images(p["fit"])[0])
    have = {(r["method"], r["digit"], r["seed"], r["precision"], r["epoch"]) for r in read(CURVE)}
    for epoch, mp in points:
        if (method, str(digit), str(seed), prec, str(epoch)) in have:
            continue
        t = terms_of(str(mp), x[idx], steps, seed, prec)
        yy = y[idx]
        append(CURVE, CURVE_FIELDS, {
            "protocol": PROTOCOL, "method": method, "digit": digit, "seed": seed, "precision": prec, "epoch": epoch,
            "updates": epoch * math.ceil(n_fit / 100), "n_curve": len(idx), "score_steps": steps, "cpu": cpu,
            "nce_loss": stage_nce_loss(method, mp),
            **{f"auprc_{s}": f"{metrics(yy, S.score(s, t)).auprc:.4f}" for s in ("joint", "recon", "prior")}})


def stage_nce_loss(method: str, model_path: Path) -> str:
    """The NCE loss at the end of the stage that wrote an adaptive-NCE model (its last epoch's mean), else ""."""
    if method != "adaptive-nce" or model_path.parent != WORK:  # the 0-stage generator's snapshots have none
        return ""
    nce = load(str(model_path)).meta.get("final", {}).get("nce")
    return "" if nce is None else f"{nce:.4f}"


def snapshots_of(folder: Path, offset: int = 0) -> list[tuple[int, Path]]:
    return [(offset + int(f.stem.split("-")[1]), f) for f in sorted(folder.glob("epoch-*.safetensors"))]


def run_cell(method: str, digit: int, seed: int, prec: str, cpu: str) -> dict:
    p = parts(digit)
    n_fit = len(load_images(p["fit"])[0])
    common = {"protocol": PROTOCOL, "method": method, "digit": digit, "seed": seed, "precision": prec, "cpu": cpu,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if method in ("pca", "random"):
        xt, lt, _ = load_images(p["test"])
        y = binary_labels(lt, [digit]).numpy()
        if method == "random":
            return {**common, "budget": "none", "auprc_joint": f"{y.mean():.4f}", "auroc_joint": "0.5000",
                    "n_test": len(y), "n_anomalous": int(y.sum()), "random_auprc": f"{y.mean():.4f}"}
        t0 = time.perf_counter()
        m = metrics(y, pca_scores(load_images(p["fit"])[0], xt, seed=seed))
        return {**common, "budget": "PCA 32 components", "auprc_joint": f"{m.auprc:.4f}",
                "auroc_joint": f"{m.auroc:.4f}", "n_test": m.n, "n_anomalous": m.n_anomalous,
                "random_auprc": f"{m.n_anomalous / m.n:.4f}", "train_wall_s": f"{time.perf_counter() - t0:.1f}"}
    tag = f"d{digit}-s{seed}-{prec}"
    gen, gen_snaps = WORK / f"pretrain-{tag}.safetensors", WORK / f"pretrain-{tag}.snapshots"
    points: list[tuple[int, Path]] = []
    if GEN_EPOCHS == 0 and method in ("pretrain", "pretrain-matched"):  # --budget lineage: no 0-stage generator,
        method_ = "pretrain"  # the update-matched generator is one generator trained EPOCHS from scratch
        model, snaps = WORK / f"pretrain-matched-{tag}.safetensors", WORK / f"pretrain-matched-{tag}.snapshots"
        gen_wall, gen = fit(method_, p["fit"], model, seed, prec, None, snaps), model
        points = snapshots_of(snaps)
    elif method in ("pretrain", "pretrain-matched", "adaptive-nce") and GEN_EPOCHS > 0:  # built on the 0-stage gen
        gen_wall = fit("pretrain", p["fit"], gen, seed, prec, None, gen_snaps)
        points = snapshots_of(gen_snaps)
    else:
        gen_wall = 0.0
    if GEN_EPOCHS == 0 and method in ("pretrain", "pretrain-matched"):
        wall, epochs = gen_wall, EPOCHS
    elif method == "pretrain":
        model, wall, epochs = gen, gen_wall, GEN_EPOCHS
    elif method == "pretrain-matched":
        model, snaps = WORK / f"{method}-{tag}.safetensors", WORK / f"{method}-{tag}.snapshots"
        wall = gen_wall + fit(method, p["fit"], model, seed + 1000 * GEN_EPOCHS, prec, str(gen), snaps)
        points += snapshots_of(snaps, GEN_EPOCHS)
        epochs = EPOCHS
    elif method == "adaptive-nce":  # stage by stage, as the paper adds them: one model (and curve point) per stage
        prev, wall = (str(gen) if GEN_EPOCHS > 0 else None), 0.0
        for k in range(1, STAGES + 1):
            out = WORK / f"{method}-{tag}-k{k}.safetensors"
            wall += fit(method, p["fit"], out, seed + 1000 * k, prec, prev, None)
            points.append((GEN_EPOCHS + k * BUDGET[method]["epochs_per_stage"], out))
            prev = str(out)
        model, wall, epochs = Path(prev), gen_wall + wall, EPOCHS
    else:  # mle, joint-mle, joint-vi, vae: from scratch
        model, snaps = WORK / f"{method}-{tag}.safetensors", WORK / f"{method}-{tag}.snapshots"
        wall, epochs = fit(method, p["fit"], model, seed, prec, None, snaps), EPOCHS
        points = snapshots_of(snaps)
    row = evaluate(model, p, digit, seed, prec)
    if method in LEARNED_PRIOR and digit in PUBLISHED and PROTOCOL == "v3":
        row["auprc_joint_second_permutation"] = second_permutation(model, p, digit, seed, prec, int(row["score_steps"]))
    curve(method, digit, seed, prec, points, int(row["score_steps"]), p, cpu)
    if WORK.name.endswith("_paper"):  # ~150 snapshots of 5 MB per run: their curve rows are written, drop them
        for f in {mp.parent for _, mp in points if mp.parent != WORK}:
            shutil.rmtree(f, ignore_errors=True)
    built = {"pretrain": f"{GEN_EPOCHS} epochs", "pretrain-matched": f"{GEN_EPOCHS} + {EPOCHS - GEN_EPOCHS} epochs",
             "adaptive-nce": f"{GEN_EPOCHS}-epoch generator + {STAGES} stages x "
                             f"{BUDGET['adaptive-nce']['epochs_per_stage']} epochs"}
    if GEN_EPOCHS == 0:  # --budget lineage
        built = {"pretrain": f"{EPOCHS} epochs from scratch", "pretrain-matched": f"{EPOCHS} epochs from scratch",
                 "adaptive-nce": f"{STAGES} stages x {BUDGET['adaptive-nce']['epochs_per_stage']} epochs from "
                                 "scratch, the generator trained throughout"}
    budget = f"{PRESET} preset + {NET['generator']}; " + built.get(method, f"{EPOCHS} epochs from scratch" + (
        "; prior chains from q(z|x) (contrastive divergence)"
        if BUDGET.get(method, {}).get("negatives_from") == "positives" else "") + (
        "; joint-vi without energy terms (ebm=false)" if BUDGET.get(method, {}).get("ebm") is False else ""))
    trained = [model] if method in FROM_SCRATCH else [gen] * (GEN_EPOCHS > 0 or method != "adaptive-nce") + [
        mp for _, mp in points if mp.parent == WORK] + ([model] if method == "pretrain-matched" else [])
    have = [f.with_suffix(".cpu_s") for f in set(trained)]
    cpu = f"{sum(float(f.read_text()) for f in have):.1f}" if all(f.exists() for f in have) else ""  # else unknown
    return {**common, **row, "budget": budget, "updates": epochs * math.ceil(n_fit / 100), "epochs": epochs,
            "train_wall_s": f"{wall:.1f}", "train_cpu_s": cpu}


def second_permutation(model_path: Path, p: dict[str, str], digit: int, seed: int, prec: str, steps: int) -> str:
    """The practice row: the same model and chain scored on the original loader's test part (most of its normals
    were trained on), AUPRC under the papers' score."""
    x, lab, _ = load_images(p["test-second"])
    y = binary_labels(lab, [digit]).numpy()
    return f"{metrics(y, S.joint(terms_of(str(model_path), x, steps, seed, prec))).auprc:.4f}"


def model_of(method: str, digit: int, seed: int, prec: str) -> Path:
    tag = f"d{digit}-s{seed}-{prec}"
    return WORK / (f"{method}-{tag}-k{STAGES}.safetensors" if method == "adaptive-nce" else f"{method}-{tag}.safetensors")


def practices() -> None:
    """Fill the second-permutation cell of the LEBM / adaptive NCE / joint rows on the published digits from their
    saved models (rows measured before the column existed, or by another process)."""
    from bench_csv import locked, write_all

    for r in read(RESULTS):
        if r["method"] not in LEARNED_PRIOR or int(r["digit"]) not in PUBLISHED:
            continue
        if r.get("auprc_joint_second_permutation") or not r.get("score_steps"):  # done, or no score (diverged)
            continue
        mp = model_of(r["method"], int(r["digit"]), int(r["seed"]), r["precision"])
        if not mp.exists():
            continue
        v = second_permutation(mp, parts(int(r["digit"])), int(r["digit"]), int(r["seed"]), r["precision"],
                               int(r["score_steps"]))
        key = (r["method"], r["digit"], r["seed"], r["precision"])
        with locked(RESULTS):
            now = read(RESULTS)
            for q in now:
                if (q["method"], q["digit"], q["seed"], q["precision"]) == key:
                    q["auprc_joint_second_permutation"] = v
            write_all(RESULTS, FIELDS, now)
        print("second permutation", key, v, flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--digits", type=int, nargs="+", default=PUBLISHED + [0, 2, 3, 6, 8])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--methods", nargs="+", default=CORE, choices=CORE + EXTRA,
                    help="rows to run (default: the core rows); joint-vi trains with contrastive-divergence negatives; "
                         "vae is joint-vi without energy terms (ebm=false), its ablation")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"], default="auto",
                    help="auto: bf16 where the CPU runs it natively (AMX / AVX512-BF16), else fp32")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", choices=["cpu", "lineage", "paper"], default="cpu",
                    help="cpu: 8 epochs per learned row (this project's CPUs); paper: the lineage's ~70k updates "
                         "(154 epochs; a GPU), rows in anomaly_mnist_v3_paper.csv")
    ap.add_argument("--device", default="cpu", help="cpu | cuda (--budget paper)")
    ap.add_argument("--protocol", choices=["v3", "standard"], default="v3",
                    help="v3: 80/20 of all 70,000 images' normals; standard: the training file's normals train, the "
                         "whole test file tests (rows in anomaly_mnist_standard.csv)")
    ap.add_argument("--practices", action="store_true",
                    help="fill the second-permutation cells of measured rows from their saved models, and exit")
    args = ap.parse_args()
    if args.protocol != "v3":
        set_protocol(args.protocol)
    if args.budget == "paper":
        set_budget(PAPER_BUDGET["epochs"], PAPER_BUDGET["gen_epochs"], "_paper")
    if args.budget == "lineage":
        set_budget(LINEAGE_BUDGET["epochs"], LINEAGE_BUDGET["gen_epochs"], "_lineage")
    global DEVICE
    from ebmtool.runtime import resolve_device

    try:
        DEVICE = resolve_device(args.device)
    except UserError as e:
        sys.exit(f"anomaly_mnist_v3: {e}")
    from ebmtool.data.sources import MNIST_FILES, mnist_file

    missing = [f for split in ("train", "test") for f in MNIST_FILES[split] if mnist_file(MNIST, f) is None]
    if missing:
        sys.exit(f"anomaly_mnist_v3: no MNIST file {missing[0]}[.gz] in {MNIST} (set MNIST_ROOT to the folder of "
                 "the four IDX files, or fill one with `ebmtool data prepare --dataset mnist --download --root DIR`)")
    if args.budget == "paper" and DEVICE.type == "cpu":
        sys.exit("anomaly_mnist_v3: --budget paper is ~70k updates per row (days on a CPU): run it with --device cuda")
    torch.set_num_threads(args.threads)
    cpu = cpu_name()
    prec = resolve_precision(args.precision, DEVICE, warn=False).name
    try:
        if args.practices:
            practices()
            return
        for seed in args.seeds:
            for digit in args.digits:
                for m in args.methods:
                    done = {(r["method"], r["digit"], r["seed"], r["precision"]) for r in read(RESULTS)}
                    pr = "fp32" if m in ("pca", "random") else prec
                    if (m, str(digit), str(seed), pr) in done:
                        continue
                    try:
                        row = run_cell(m, digit, seed, pr, cpu)
                    except DivergenceError as e:  # a result, not a stop: seeded, it would diverge again on a rerun
                        row = {"protocol": PROTOCOL, "method": m, "digit": digit, "seed": seed, "precision": pr,
                               "budget": f"diverged: {e}", "cpu": cpu, "torch": torch.__version__,
                               "threads": torch.get_num_threads()}
                    append(RESULTS, FIELDS, row)
                    print({k: row.get(k) for k in ("method", "digit", "seed", "auprc_joint", "score_steps",
                                                  "train_wall_s", "score_wall_s")}, flush=True)
    except Interrupted as e:  # SIGINT/SIGTERM in training: its checkpoint was written, and this script resumes it
        sys.exit(f"anomaly_mnist_v3: interrupted at iteration {e.iteration}; checkpoint written to {e.checkpoint}; "
                 "run the same command again to continue (finished rows are kept, the training resumes from its "
                 "checkpoint)")
    except (KeyboardInterrupt, UserError) as e:
        sys.exit(f"anomaly_mnist_v3: {str(e) or 'interrupted'}; run the same command again to continue (finished rows "
                 "are kept, an interrupted training resumes from its checkpoint)")


if __name__ == "__main__":
    main()
