"""MNIST hold-one-digit anomaly benchmark, every protocol (docs/design.md §5), one script over shared parts.

    .venv/bin/python -m benchmarks.anomaly --protocol v3|standard|v2 [--digits 1 4 5 7 9] [--seeds 0]
        [--methods ...] [--precision auto|fp32|bf16] [--threads 1] [--budget cpu|lineage|paper] [--device cpu|cuda]

The protocols (``PROTOCOLS``) differ in their data, budget and score only; the rows, the training (resumable, its
seconds kept across kills), the CSVs (one row per (method, digit, seed, precision), appended as measured and
skipped when present), the curves and the budget texts are shared.

- ``v3``: all 70,000 images (``data prepare --split train+test``) at 28x28. For held-out digit K the normals are
  permuted once: 80% train (10% of them held out as *calibration* normals, used only by the label-free scores and
  the chain rule), the other 20% + every K test. Model: the ``mnist28`` generator, the ``paper`` preset. Budget,
  fixed before any run without test labels: ``EPOCHS`` = 8 epochs of the fit part for every learned row (LEBM from
  scratch 8; the 0-stage generator 4; adaptive NCE that generator + 4 stages of 1 epoch; the update-matched
  generator that generator + 4). ``--budget paper`` (a GPU): the lineage's ~70k updates, 154 epochs (generator 54).
- ``standard``: v3's model, budget, score and rule on the source's own split: the training file's normals train
  (10% calibration), the whole 10,000-image test file tests.
- ``v2``: the 10,000-image test file alone at 32x32, 20% of normals + every K test; the ``cpu`` preset (nz 16,
  ngf 16); per-row budgets (``V2_BUDGET``); scored by ``CHAINS`` noisy posterior chains of ``SCORE_CHAIN``
  (AUPRC mean and std over chains); every latent row also gets a feature-space FID of 2,000 prior samples, and the
  ``data`` row the FID floor (held-out normals against the fit part).

Score of v3 and standard (the lineage's): -log p(x, z) = ||x - g(z)||^2 / (2 sigma^2) - f(z) + ||z||^2 / 2 at
one z per image from a noise-free posterior chain (step 0.1, LEBM form) from N(0, I), whose length is chosen per
model by a label-free rule on ``CHAIN_RULE_N`` calibration normals: the first multiple of 25 steps (at most 400)
at which the last 50 steps lowered their mean -log p(x, z) by less than 1% of the total decrease so far. A model
with an inference model (``joint-vi``, ``vae`` = ``joint-vi --set ebm=false``) is scored at one sample of q(z|x)
(the joint paper's eq. 20, k = 0). Every label-free score of ``ebmtool.eval.scores`` comes from the same z.

Curves: v3 / standard: every epoch's model (``--snapshots``; adaptive NCE: every stage) on a fixed stratified
``CURVE_N``-image subsample, with the final model's chain; v2: every ``CHUNK`` epochs of LEBM and every stage
of adaptive NCE, on the whole test part, one chain. Never used to choose anything.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from benchmarks.bench_csv import append, cpu_name, locked, read, write_all
from ebmtool import stages
from ebmtool.artifacts import load
from ebmtool.config import resolve
from ebmtool.data import DataConfig, load_images
from ebmtool.errors import DivergenceError, UserError
from ebmtool.eval import scores as S
from ebmtool.eval.anomaly import binary_labels, metrics, pca_scores
from ebmtool.methods import METHODS
from ebmtool.models import load_model
from ebmtool.runtime import resolve as resolve_precision
from ebmtool.stages.evaluate import score_terms
from ebmtool.training import Interrupted

ROOT = Path(__file__).resolve().parents[1]
MNIST = Path(os.environ.get("MNIST_ROOT") or ROOT.parent / "shared" / "data" / "mnist")
PUBLISHED = [1, 4, 5, 7, 9]
SCORE_COLS = [f"auprc_{s}" for s in S.SCORES]
V2_FIELDS = (["protocol", "method", "digit", "seed", "precision", "budget", "updates", "chains", "n_test",
              "n_anomalous", "random_auprc"] + SCORE_COLS + ["auprc_joint_chain_std", "auroc_joint", "mse_normal",
              "mse_anomalous", "fid_features", "features_accuracy", "train_wall_s", "score_wall_s", "cpu", "torch",
              "threads"])
V2_CURVE_FIELDS = ["protocol", "method", "digit", "seed", "precision", "updates", "epochs"] + SCORE_COLS + [
    "mse_normal", "mse_anomalous", "train_wall_s", "cpu"]
FIELDS = (["protocol", "method", "digit", "seed", "precision", "budget", "updates", "epochs", "score_steps",
           "score_step_size", "score_noise", "n_test", "n_anomalous", "random_auprc"] + SCORE_COLS +
          ["auroc_joint", "auprc_recon_weight1", "mse_normal", "mse_anomalous", "train_wall_s", "score_wall_s",
           "train_cpu_s", "score_cpu_s", "cpu", "torch", "threads", "auprc_joint_second_permutation"])
CURVE_FIELDS = ["protocol", "method", "digit", "seed", "precision", "epoch", "updates", "n_curve", "score_steps",
                "auprc_joint", "auprc_recon", "auprc_prior", "cpu", "nce_loss"]
NCE_FIELDS = ["protocol", "method", "digit", "seed", "precision", "stage", "nce_first_epoch", "nce_last_epoch",
              "chance", "log_r_pos", "log_r_neg"]


def v3_budget(epochs: int, gen_epochs: int) -> dict[str, dict]:
    """Every learned row of v3 / standard: ``epochs`` of the fit part, the 0-stage generator ``gen_epochs`` of them."""
    net = {"generator": {"arch": "mnist28", "nz": 20, "ngf": 64}}
    # gen_epochs 0 (--budget lineage): no 0-stage generator; the update-matched generator is trained from scratch
    return {"pretrain": {"epochs": gen_epochs or epochs, **net},
            "pretrain-matched": {"epochs": epochs - gen_epochs, **net},
            "mle": {"epochs": epochs, **net}, "joint-mle": {"epochs": epochs, **net},
            "adaptive-nce": {"stages": 4, "epochs_per_stage": (epochs - gen_epochs) // 4, **net},
            # contrastive-divergence negatives: from the paper's N(0, I) starts q(z_1|x) ran away in epoch 1
            "joint-vi": {"epochs": epochs, "negatives_from": "positives", **net},
            "vae": {"epochs": epochs, "ebm": False, **net}}  # joint-vi's ablation: no energy terms


_NET2 = {"generator": {"nz": 16, "ngf": 16}}
# adaptive NCE in its paper's Langevin convention (eq. 3) and step sizes (App. A.3: s = 0.1)
_XH = {c: {"convention": "xiao-han", "step_size": 0.1} for c in ("posterior", "sampling", "prior")}
V2_BUDGET = {
    "pretrain": {"epochs": 10, **_NET2}, "mle": {"epochs": 16, **_NET2},
    "pretrain-matched": {"epochs": 6, **_NET2},  # the 0-stage generator continued to LEBM's updates
    "mle-warm": {"epochs": 8, **_NET2}, "joint-mle": {"epochs": 16, **_NET2},
    "adaptive-nce": {"stages": 4, "epochs_per_stage": 2, **_NET2},
    "nce": {"stages": 1, "epochs_per_stage": 8, **_NET2},
    "adaptive-nce-tre": {"stages": 4, "epochs_per_stage": 2, "non_adaptive": True, **_NET2},
    "adaptive-nce-xh": {"stages": 4, "epochs_per_stage": 2, **_NET2, **_XH},
}


@dataclass(frozen=True)
class Protocol:
    """What differs between the protocols; everything else is shared."""
    name: str
    split: str            # data prepare --split
    size: int | None      # image side (None: MNIST's own 28)
    anomaly_split: str    # random (80/20 of the normals) | standard (the source's own files)
    prefix: str           # the parts' file names
    preset: str
    budget: dict
    core: list[str]
    extra: list[str]
    chains: int           # 0: one z at the label-free chain rule's length (or q(z|x)); k: k noisy chains (v2)
    seeds: list[int]
    precision: str
    results: str          # CSV names under benchmarks/results, models under runs/
    curve: str
    work: str
    gen: str = "pretrain"  # the 0-stage generator's file name
    chunk: int = 0        # v2: LEBM trained in chunks of this many epochs, a curve point each
    second: bool = False  # v3: the second-permutation test part (the practice row)
    fid: bool = False     # v2: FID of every latent row, and the ``data`` row
    fields: list[str] = field(default_factory=lambda: FIELDS)
    curve_fields: list[str] = field(default_factory=lambda: CURVE_FIELDS)


V3_CORE = ["random", "pca", "pretrain", "mle", "adaptive-nce", "pretrain-matched"]
PROTOCOLS = {
    "v3": Protocol("v3", "train+test", None, "random", "mnist70k-no", "paper", v3_budget(8, 4), V3_CORE,
                   ["joint-mle", "joint-vi", "vae"], 0, [0], "auto", "anomaly_mnist_v3.csv",
                   "anomaly_mnist_v3_curve.csv", "anomaly_mnist_v3", second=True),
    "standard": Protocol("standard", "train+test", None, "standard", "mnist70k-no", "paper", v3_budget(8, 4),
                         V3_CORE, ["joint-mle", "joint-vi", "vae"], 0, [0], "auto", "anomaly_mnist_standard.csv",
                         "anomaly_mnist_standard_curve.csv", "anomaly_mnist_standard"),
    "v2": Protocol("v2", "test", 32, "random", "mnist-no", "cpu", V2_BUDGET,
                   ["pca", "random", "data", "pretrain", "mle", "adaptive-nce", "pretrain-matched"],
                   ["mle-warm", "nce", "adaptive-nce-tre", "joint-mle", "adaptive-nce-xh"], 2, [0, 1, 2], "bf16",
                   "anomaly_mnist_v2.csv", "anomaly_mnist_curve.csv", "anomaly_mnist_v2", gen="gen", chunk=4,
                   fid=True, fields=V2_FIELDS, curve_fields=V2_CURVE_FIELDS),
}
PAPER_BUDGET = {"epochs": 154, "gen_epochs": 54}  # --budget paper: the lineage's ~70k updates (a GPU)
# --budget lineage (issue 35): the lineage's ~10k updates on a CPU, 20 epochs of the fit part (20 x 453 = 9,060 on
# v3), on adaptive NCE's own schedule (Xiao & Han, arXiv:2209.08739, Appendix A: a new stage every quarter of the
# training, the generator trained throughout, no separate pretraining): 4 stages x 5 epochs from scratch; LEBM and
# the update-matched generator 20 epochs from scratch. No 0-stage generator row.
LINEAGE_BUDGET = {"epochs": 20, "gen_epochs": 0}
BUDGETS = {"cpu": None, "lineage": LINEAGE_BUDGET, "paper": PAPER_BUDGET}
METHOD_OF = {"pretrain-matched": "pretrain", "mle-warm": "mle", "adaptive-nce-tre": "adaptive-nce",
             "adaptive-nce-xh": "adaptive-nce", "vae": "joint-vi"}
STAGED = ("adaptive-nce", "adaptive-nce-xh")  # added one stage at a time, from the 0-stage generator
FROM_GEN = ("pretrain-matched", "mle-warm", "nce", "adaptive-nce-tre") + STAGED  # --init the 0-stage generator
LEARNED_PRIOR = ("mle", "adaptive-nce", "joint-mle", "joint-vi")  # the rows with a published cell
ENCODER = 0  # score_steps of a model scored by its own inference model q(z|x)
SCORE_STEP = 0.1  # the lineage's noise-free posterior step, LEBM form
RULE_EVERY, RULE_WINDOW, RULE_TOL, RULE_MAX = 25, 50, 0.01, 400
CHAIN_RULE_N, CAL_N, CURVE_N = 500, 1000, 2000
SCORE_CHAIN = {"steps": 30, "step_size": 0.1}  # v2's noisy posterior chains
FID_SAMPLES = 2000
CHECKPOINT_EVERY = 100  # kill -9 loses at most this many iterations; the seconds spent are kept every SPENT_EVERY_S
SPENT_EVERY_S = 30.0
DEVICE = torch.device("cpu")
# the protocol in use and its files (``use``)
P = PROTOCOLS["v3"]
BUDGET: dict[str, dict] = {}
RESULTS_DIR, RUNS = ROOT / "benchmarks" / "results", ROOT / "runs"
RESULTS = CURVE = WORK = Path()
EPOCHS = GEN_EPOCHS = STAGES = 0


def use(name: str, budget: str = "cpu") -> None:
    """Select a protocol (and ``budget`` lineage or paper: every row's epochs and result files of their own)."""
    global P, BUDGET, RESULTS, CURVE, WORK, EPOCHS, GEN_EPOCHS, STAGES
    P = PROTOCOLS[name]
    sfx = "" if budget == "cpu" else f"_{budget}"
    BUDGET = {k: dict(v) for k, v in (v3_budget(BUDGETS[budget]["epochs"], BUDGETS[budget]["gen_epochs"])
                                      if sfx else P.budget).items()}
    RESULTS = RESULTS_DIR / P.results.replace(".csv", f"{sfx}.csv")
    CURVE, WORK = RESULTS_DIR / P.curve.replace(".csv", f"{sfx}.csv"), RUNS / (P.work + sfx)
    EPOCHS, STAGES = BUDGET["mle"]["epochs"], BUDGET["adaptive-nce"]["stages"]
    GEN_EPOCHS = EPOCHS - BUDGET["pretrain-matched"]["epochs"] if "pretrain-matched" in BUDGET else 0


use("v3")


def parts(digit: int) -> dict[str, str]:
    """The digit's fit / calibration / test parts (made once, atomically), and for v3 ``test-second``: the test part
    as the protocol's original loader drew it (a second permutation, most of its normals trained on)."""
    WORK.mkdir(parents=True, exist_ok=True)
    out = {}
    for part, perm in (("fit", "same"), ("calibration", "same"), ("test", "same")) + (
            (("test", "second"),) if P.second else ()):
        name = part if perm == "same" else f"{part}-{perm}"
        p = WORK / f"{P.prefix}{digit}-{name}.safetensors"
        if not p.exists():
            tmp = p.with_suffix(f".{os.getpid()}.tmp.safetensors")
            stages.data_prepare(DataConfig(dataset="mnist", root=str(MNIST), split=P.split, size=P.size,
                                           anomaly_protocol=digit, part=part, test_permutation=perm,
                                           anomaly_split=P.anomaly_split), str(tmp))
            os.replace(tmp, p)
        out[name] = str(p)
    return out


def fit(method: str, data: str, out: Path, seed: int, prec: str, init: str | None, snapshots: Path | None,
        **over) -> float:
    """Train one model with its budget (``over`` replaces budget keys); the model after each epoch goes to
    ``snapshots``. Returns the training wall seconds; the process CPU seconds are kept beside the model (``.cpu_s``).
    An interrupted run resumes from its checkpoint, and the seconds of its earlier segments (``.partial.json``) are
    added, so a row counts its whole training."""
    if out.exists():
        t = out.with_suffix(".wall_s")
        return float(t.read_text()) if t.exists() else float(load(out).meta.get("wall_time_s", 0.0))
    partial = out.with_suffix(".partial.json")
    m = METHOD_OF.get(method, method)
    cfg = resolve(METHODS[m].config, method=m, preset=P.preset, toml=None,
                  flags={**BUDGET[method], **over, "seed": seed, "precision": prec, "device": config_device()})
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
    chain = model.inference.override(RULE_MAX, SCORE_STEP, False)
    torch.manual_seed(0)
    with resolve_precision(prec, DEVICE).context(DEVICE):
        res = model.infer(xc, chain, record_every=RULE_EVERY)
    e = (-res.trajectory.stacked_log_probs().double().mean(1)).tolist()  # at steps 0, 25, 50, ...
    steps, back = res.trajectory.steps, RULE_WINDOW // RULE_EVERY
    for i in range(back, len(e)):
        if e[i - back] - e[i] < RULE_TOL * (e[0] - e[i]):
            return steps[i]
    return RULE_MAX


def chain_of(model, steps: int | None) -> dict:
    """score_terms' chain: ``steps`` noise-free steps (v3), ENCODER (a sample of q(z|x)), or None: v2's noisy
    SCORE_CHAIN (its step asked in the model's convention so that the one sampler runs at SCORE_CHAIN's step)."""
    if steps is None:
        xh = getattr(getattr(model, "inference", None), "convention", "lebm") == "xiao-han"
        return {**SCORE_CHAIN, "step_size": SCORE_CHAIN["step_size"] ** (2 if xh else 1)}
    return {} if steps == ENCODER else {"steps": steps, "step_size": SCORE_STEP, "noise": False}


def terms_of(model_path: str, x: torch.Tensor, steps: int | None, seed: int, prec: str,
             *more: torch.Tensor) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
    """The score terms at one z per image, the chain of ``chain_of(steps)``, torch seeded with ``seed`` once; with
    ``more`` image sets, one dict per set, their chains run one after the other (v2's calibration chain)."""
    model, _ = load_model(model_path, device=DEVICE)
    torch.manual_seed(seed)
    with resolve_precision(prec, DEVICE).context(DEVICE):
        ts = [{k: v.numpy() for k, v in score_terms(model, b, **chain_of(model, steps), device=DEVICE).items()}
              for b in (x, *more)]
    return ts if more else ts[0]


def scored(y: np.ndarray, terms: dict, x: torch.Tensor, cal: dict | None, sigma: float) -> dict[str, float]:
    """Every label-free score's AUPRC, the joint score's AUROC, and the reconstruction MSE of normals / anomalies."""
    u8 = ((x + 1) * 127.5).round().to(torch.uint8)
    out = {f"auprc_{s}": metrics(y, S.score(s, terms, images=u8, calibration=cal)).auprc for s in S.SCORES}
    mse = terms["recon"] * 2 * sigma ** 2 / x[0].numel()
    return {**out, "auroc_joint": metrics(y, S.joint(terms)).auroc, "mse_normal": float(mse[y == 0].mean()),
            "mse_anomalous": float(mse[y == 1].mean())}


def evaluate(model_path: Path, p: dict[str, str], digit: int, seed: int, prec: str, chains: int) -> dict:
    """The final model's row on the whole test part: ``chains`` = 0: one z at the rule's chain length (or q(z|x)),
    its terms saved beside the model; k > 0: the mean (and std) over k noisy chains."""
    x, lab, _ = load_images(p["test"])
    xc, _, _ = load_images(p["calibration"])
    y = binary_labels(lab, [digit]).numpy()
    model, _ = load_model(str(model_path), device=DEVICE)
    n, n_a = len(y), int(y.sum())
    t0, c0 = time.perf_counter(), time.process_time()
    common = {"n_test": n, "n_anomalous": n_a, "random_auprc": f"{n_a / n:.4f}"}
    if chains:
        per = [scored(y, t, x, tc, model.sigma) for c in range(chains)
               for t, tc in [terms_of(str(model_path), x, None, 10_000 * seed + c, prec, xc)]]
        mean = {k: float(np.mean([r[k] for r in per])) for k in per[0]}
        return {**{c: f"{mean[c]:.4f}" for c in SCORE_COLS + ["auroc_joint"]}, **common, "chains": chains,
                **{c: f"{mean[c]:.5f}" for c in ("mse_normal", "mse_anomalous")},
                "auprc_joint_chain_std": f"{np.std([r['auprc_joint'] for r in per], ddof=1):.4f}" if chains > 1 else "",
                "score_wall_s": f"{time.perf_counter() - t0:.1f}"}
    steps = ENCODER if model.encoder is not None else chain_length(model, xc[:CHAIN_RULE_N], prec)
    terms = terms_of(str(model_path), x, steps, 10_000 * seed, prec)
    cal = terms_of(str(model_path), xc[:CAL_N], steps, 10_000 * seed, prec)
    np.savez(model_path.with_suffix(".terms.npz"), **terms, **{f"cal_{k}": v for k, v in cal.items()}, y=y)
    r = scored(y, terms, x, cal, model.sigma)
    w1 = terms["recon"] * 2 * model.sigma ** 2 + terms["tilt"] + terms["base"]  # the recon term weighted 1
    return {**{c: f"{r[c]:.4f}" for c in SCORE_COLS + ["auroc_joint"]}, **common,
            **{c: f"{r[c]:.5f}" for c in ("mse_normal", "mse_anomalous")},
            "auprc_recon_weight1": f"{metrics(y, w1).auprc:.4f}", "score_steps": steps,
            "score_step_size": "" if steps == ENCODER else SCORE_STEP,
            "score_noise": "encoder q(z|x) sample" if steps == ENCODER else "none",
            "score_wall_s": f"{time.perf_counter() - t0:.1f}", "score_cpu_s": f"{time.process_time() - c0:.1f}"}


def curve_subsample(y: np.ndarray) -> np.ndarray:
    """A fixed stratified subsample of the test part (the same for every model of a digit)."""
    g = np.random.default_rng(12345)
    n_a = int(round(CURVE_N * y.mean()))
    a = g.choice(np.flatnonzero(y == 1), n_a, replace=False)
    b = g.choice(np.flatnonzero(y == 0), CURVE_N - n_a, replace=False)
    return np.sort(np.concatenate([a, b]))


def updates(n_fit: int, epochs: int) -> int:
    """Batches of 100 (v2 counted full batches only; its committed rows keep that count)."""
    return epochs * (n_fit // 100 if P.name == "v2" else math.ceil(n_fit / 100))


def curve(method: str, digit: int, seed: int, prec: str, points: list[tuple], steps: int | None,
          p: dict[str, str], cpu: str) -> None:
    """One curve row per (epochs, model, training wall so far): v3 / standard on the fixed subsample with the final
    model's chain (``nce_loss``: an adaptive-NCE stage's loss at its end; chance is 2 ln 2 = 1.386); v2 on the whole
    test part, one noisy chain."""
    x, lab, _ = load_images(p["test"])
    y = binary_labels(lab, [digit]).numpy()
    idx = curve_subsample(y) if not P.chains else np.arange(len(y))
    n_fit = len(load_images(p["fit"])[0])
    at = "updates" if P.chains else "epoch"
    have = {(r["method"], r["digit"], r["seed"], r["precision"], r[at]) for r in read(CURVE)}
    for epoch, mp, wall in points:
        ups = updates(n_fit, epoch)
        if (method, str(digit), str(seed), prec, str(ups if P.chains else epoch)) in have:
            continue
        base = {"protocol": P.name, "method": method, "digit": digit, "seed": seed, "precision": prec,
                "updates": ups, "cpu": cpu}
        if P.chains:
            r = evaluate(mp, p, digit, seed, prec, 1)
            append(CURVE, P.curve_fields, {**base, "epochs": epoch, "train_wall_s": f"{wall:.1f}",
                                           **{k: r[k] for k in SCORE_COLS + ["mse_normal", "mse_anomalous"]}})
            continue
        t, yy = terms_of(str(mp), x[idx], steps, 10_000 * seed, prec), y[idx]
        append(CURVE, P.curve_fields, {**base, "epoch": epoch, "n_curve": len(idx), "score_steps": steps,
                                       "nce_loss": stage_nce_loss(method, mp), **{
                                           f"auprc_{s}": f"{metrics(yy, S.score(s, t)).auprc:.4f}"
                                           for s in ("joint", "recon", "prior")}})


def stage_nce_loss(method: str, model_path: Path) -> str:
    """The NCE loss at the end of the stage that wrote an adaptive-NCE model (its last epoch's mean), else ""."""
    if method != "adaptive-nce" or model_path.parent != WORK:  # the 0-stage generator's snapshots have none
        return ""
    nce = load(str(model_path)).meta.get("final", {}).get("nce")
    return "" if nce is None else f"{nce:.4f}"


def snapshots_of(folder: Path | None, offset: int = 0) -> list[tuple]:
    if folder is None:
        return []
    return [(offset + int(f.stem.split("-")[1]), f, 0.0) for f in sorted(folder.glob("epoch-*.safetensors"))]


def baseline(method: str, digit: int, seed: int, p: dict[str, str]) -> dict:
    """The rows without training: ``random`` (the prevalence), ``pca`` (32 components), ``data`` (v2: the FID floor,
    held-out normals against the fit part)."""
    if method == "data":
        feats = features(digit, p)
        r = stages.fid(p["calibration"], p["fit"], features=feats, device="cpu", cache_dir=str(WORK / "fid-cache"))
        return {"budget": "none (real images)", "fid_features": f"{r.value:.3f}",
                "features_accuracy": f"{float(load(feats).meta['accuracy']):.4f}"}
    xt, lt, _ = load_images(p["test"])
    y = binary_labels(lt, [digit]).numpy()
    if method == "random":
        return {"budget": "none", "auprc_joint": f"{y.mean():.4f}", "auroc_joint": "0.5000", "n_test": len(y),
                "n_anomalous": int(y.sum()), "random_auprc": f"{y.mean():.4f}"}
    t0 = time.perf_counter()
    m = metrics(y, pca_scores(load_images(p["fit"])[0], xt, seed=seed))
    return {"budget": "PCA 32 components", "auprc_joint": f"{m.auprc:.4f}", "auroc_joint": f"{m.auroc:.4f}",
            "n_test": m.n, "n_anomalous": m.n_anomalous, "random_auprc": f"{m.n_anomalous / m.n:.4f}",
            "train_wall_s": f"{time.perf_counter() - t0:.1f}"}


def run_cell(method: str, digit: int, seed: int, prec: str, cpu: str) -> dict:
    p = parts(digit)
    common = {"protocol": P.name, "method": method, "digit": digit, "seed": seed, "precision": prec, "cpu": cpu,
              "torch": torch.__version__, "threads": torch.get_num_threads()}
    if method in ("pca", "random", "data"):
        return {**common, **baseline(method, digit, seed, p)}
    n_fit = len(load_images(p["fit"])[0])
    tag = f"d{digit}-s{seed}-{prec}"

    def snaps(path: Path) -> Path | None:  # v3 / standard keep every epoch's model for the curve
        return None if P.chains else path.with_suffix(".snapshots")

    gen = WORK / f"{P.gen}-{tag}.safetensors"
    gen_wall, points = 0.0, []
    scratch = GEN_EPOCHS == 0 and P.name != "v2"  # --budget lineage: every row from scratch, no 0-stage generator
    if method in ("pretrain",) + FROM_GEN and not scratch:  # the rows built on the 0-stage generator
        gen_wall = fit("pretrain", p["fit"], gen, seed, prec, None, snaps(gen))
        points = snapshots_of(snaps(gen))
    if method == "pretrain":
        model, wall, epochs = gen, gen_wall, GEN_EPOCHS
    elif method in STAGED:  # stage by stage, as the paper adds them: one model (and curve point) per stage
        prev, wall, ep = None if scratch else str(gen), 0.0, BUDGET[method]["epochs_per_stage"]
        for k in range(1, STAGES + 1):
            out = WORK / f"{method}-{tag}-k{k}.safetensors"
            wall += fit(method, p["fit"], out, seed + 1000 * k, prec, prev, None, stages=1)
            points.append((ep * k + (0 if P.chains else GEN_EPOCHS), out, wall))
            prev = str(out)
        # v2 counted a row started from the generator by its own training; v3 by the whole
        model, epochs = Path(prev), ep * STAGES + (0 if P.chains else GEN_EPOCHS)
        wall += 0.0 if P.chains else gen_wall
    elif method == "mle" and P.chunk:  # v2: from scratch in chunks, each continuing the previous model
        points = mle_chunks(p, tag, seed, prec, EPOCHS)
        (epochs, model, wall) = points[-1]
    else:  # the rest: from scratch, or continued from the generator (FROM_GEN)
        model = WORK / f"{method}-{tag}.safetensors"
        later = seed + 1000 * GEN_EPOCHS if method == "pretrain-matched" else seed  # new batches
        wall = fit(method, p["fit"], model, later, prec, str(gen) if method in FROM_GEN and not scratch else None,
                   snaps(model))
        points += snapshots_of(snaps(model), GEN_EPOCHS if method in FROM_GEN else 0)
        b = BUDGET[method]
        epochs = (b.get("epochs") or b["stages"] * b["epochs_per_stage"]) + (
            GEN_EPOCHS if method == "pretrain-matched" else 0)
        wall += gen_wall if method == "pretrain-matched" else 0.0  # its whole training, as LEBM's row
    row = evaluate(model, p, digit, seed, prec, P.chains)
    steps = None if P.chains else int(row["score_steps"])
    if P.second and method in LEARNED_PRIOR and digit in PUBLISHED:
        row["auprc_joint_second_permutation"] = second_permutation(model, p, digit, seed, prec, steps)
    if P.fid:
        row.update(fid_row(str(model), digit, seed, p))
    curve(method, digit, seed, prec, points, steps, p, cpu)
    if WORK.name.endswith("_paper"):  # ~150 snapshots of 5 MB per run: their curve rows are written, drop them
        for f in {mp.parent for _, mp, _ in points if mp.parent != WORK}:
            shutil.rmtree(f, ignore_errors=True)
    trained = [model] if not (method == "pretrain" or method in FROM_GEN) else [gen] * (not scratch) + [
        mp for _, mp, _ in points if mp.parent == WORK] + ([model] if method == "pretrain-matched" else [])
    have = [f.with_suffix(".cpu_s") for f in set(trained)]
    cpu_s = f"{sum(float(f.read_text()) for f in have):.1f}" if all(f.exists() for f in have) else ""  # else unknown
    return {**common, **row, "budget": budget_text(method), "updates": updates(n_fit, epochs), "epochs": epochs,
            "train_wall_s": f"{wall:.1f}", "train_cpu_s": cpu_s}


def mle_chunks(p: dict[str, str], tag: str, seed: int, prec: str, total: int) -> list[tuple]:
    """v2's LEBM from scratch to ``total`` epochs in chunks of P.chunk, each continuing the previous model (Adam's
    moments restart, the weights do not); chunks trained earlier are reused. Returns (epochs, model, wall) each."""
    prev, wall, epochs, points = None, 0.0, 0, []
    while epochs < total:
        e = min(P.chunk, total - epochs)
        out = WORK / f"mle-{tag}-e{epochs + e}.safetensors"
        wall += fit("mle", p["fit"], out, seed + 1000 * epochs, prec, prev, None, epochs=e)
        epochs, prev = epochs + e, str(out)
        points.append((epochs, out, wall))
    return points


def budget_text(method: str) -> str:
    """The row's budget, as its CSV cell says it."""
    b = BUDGET[method]
    if P.name == "v2":
        if method == "pretrain-matched":
            return f"cpu preset + {BUDGET['pretrain']} then {b['epochs']} more epochs (LEBM's updates)"
        return f"cpu preset + {b}" + (" after the 0-stage generator" if method in FROM_GEN else "")
    if GEN_EPOCHS == 0 and method in ("pretrain-matched", "adaptive-nce"):  # --budget lineage
        return f"{P.preset} preset + {b['generator']}; " + (
            f"{EPOCHS} epochs from scratch" if method == "pretrain-matched" else
            f"{STAGES} stages x {b['epochs_per_stage']} epochs from scratch, the generator trained throughout")
    return (f"{P.preset} preset + {b['generator']}; " + {
        "pretrain": f"{GEN_EPOCHS} epochs", "pretrain-matched": f"{GEN_EPOCHS} + {EPOCHS - GEN_EPOCHS} epochs",
        "adaptive-nce": f"{GEN_EPOCHS}-epoch generator + {STAGES} stages x {b.get('epochs_per_stage')} epochs"}.get(
        method, f"{EPOCHS} epochs from scratch"
        + ("; prior chains from q(z|x) (contrastive divergence)" if b.get("negatives_from") == "positives" else "")
        + ("; joint-vi without energy terms (ebm=false)" if b.get("ebm") is False else "")))


def second_permutation(model_path: Path, p: dict[str, str], digit: int, seed: int, prec: str, steps: int) -> str:
    """The practice row: the same model and chain scored on the original loader's test part (most of its normals
    were trained on), AUPRC under the papers' score."""
    x, lab, _ = load_images(p["test-second"])
    y = binary_labels(lab, [digit]).numpy()
    return f"{metrics(y, S.joint(terms_of(str(model_path), x, steps, 10_000 * seed, prec))).auprc:.4f}"


def features(digit: int, p: dict[str, str]) -> str:
    """The digit's FID feature space: ``train-features`` (LeNet, early stopping) on the fit part, seed 0."""
    out = WORK / f"features-d{digit}.safetensors"
    if not out.exists():
        stages.train_features(p["fit"], str(out), seed=0, device="cpu")
    return str(out)


def fid_row(model_path: str, digit: int, seed: int, p: dict[str, str]) -> dict:
    """Feature-space FID of FID_SAMPLES prior samples against the fit images; a sample grid beside the model."""
    feats = features(digit, p)
    smp = Path(model_path).with_suffix(".samples.safetensors")
    if not smp.exists():
        stages.sample(model_path, FID_SAMPLES, out=str(smp), grid=str(Path(model_path).with_suffix(".png")),
                      seed=seed, device="cpu")
    r = stages.fid(str(smp), p["fit"], features=feats, device="cpu", cache_dir=str(WORK / "fid-cache"))
    return {"fid_features": f"{r.value:.3f}", "features_accuracy": f"{float(load(feats).meta['accuracy']):.4f}"}


def model_of(method: str, digit: int, seed: int, prec: str) -> Path:
    tag = f"d{digit}-s{seed}-{prec}"
    return WORK / (f"{method}-{tag}-k{STAGES}.safetensors" if method in STAGED else f"{method}-{tag}.safetensors")


def practices() -> None:
    """Fill the second-permutation cell of the published digits' learned-prior rows from their saved models."""
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
            write_all(RESULTS, P.fields, now)
        print("second permutation", key, v, flush=True)


def nce_stats() -> None:
    """v2: per adaptive-NCE stage of every measured run, the NCE loss of its first and last epoch against chance
    (2 ln 2) and the mean log r_k on posterior / prior samples in the last epoch. Rewrites anomaly_mnist_nce.csv."""
    out = []
    for r in read(RESULTS):
        for k in range(1, BUDGET[r["method"]]["stages"] + 1) if r["method"] in STAGED else ():
            mp = WORK / f"{r['method']}-d{r['digit']}-s{r['seed']}-{r['precision']}-k{k}.safetensors"
            if mp.exists():
                t = load(mp).tensors
                nce = t["history.nce"].tolist()
                out.append({**{c: r[c] for c in NCE_FIELDS[:5]}, "stage": k, "nce_first_epoch": f"{nce[0]:.4f}",
                            "nce_last_epoch": f"{nce[-1]:.4f}", "chance": f"{2 * math.log(2):.4f}",
                            "log_r_pos": f"{float(t['history.log_r_pos'][-1]):.4f}",
                            "log_r_neg": f"{float(t['history.log_r_neg'][-1]):.4f}"})
    nce_csv = RESULTS.with_name("anomaly_mnist_nce.csv")
    if not out:  # the stage models are not on this machine: keep the committed statistics
        refuse(f"--nce-stats: no adaptive-NCE stage model under {WORK} (the models stay where they were trained)")
    with locked(nce_csv):
        write_all(nce_csv, NCE_FIELDS, out)


def refuse(msg: str, status: int = 2) -> None:
    """One line on stderr, and the exit status (2: a mistake in the command; 1: interrupted, run it again)."""
    print(f"anomaly: {msg}", file=sys.stderr)
    sys.exit(status)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.anomaly", description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol", choices=list(PROTOCOLS), default="v3",
                    help="v3: 80/20 of all 70,000 images' normals; standard: the training file's normals train, the "
                         "whole test file tests; v2: the 10,000-image test file at 32x32")
    ap.add_argument("--digits", type=int, nargs="+", default=PUBLISHED + [0, 2, 3, 6, 8])
    ap.add_argument("--seeds", type=int, nargs="+", help="default: the protocol's (v3, standard: 0; v2: 0 1 2)")
    ap.add_argument("--methods", nargs="+", help="rows to run (default: the protocol's core rows)")
    ap.add_argument("--precision", choices=["auto", "fp32", "bf16"],
                    help="auto: bf16 where the CPU runs it natively (AMX / AVX512-BF16), else fp32 (v3's default; "
                         "v2's is bf16)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--budget", choices=list(BUDGETS), default="cpu",
                    help="cpu: 8 epochs per learned row; lineage: the lineage's ~10k updates (20 epochs, adaptive NCE "
                         "4 stages x 5 epochs from scratch); paper: ~70k updates (154 epochs; a GPU); the last two "
                         "in CSVs of their own (v3 and standard)")
    ap.add_argument("--device", default="cpu", help="cpu | cuda")
    ap.add_argument("--practices", action="store_true",
                    help="v3: fill the second-permutation cells of measured rows from their saved models, and exit")
    ap.add_argument("--nce-stats", action="store_true",
                    help="v2: rewrite anomaly_mnist_nce.csv from the stage models, and exit")
    ap.add_argument("--curve-to", type=int, metavar="EPOCHS",
                    help="v2: extend LEBM's learning curve to EPOCHS (curve rows only, no table rows), and exit")
    a = ap.parse_args(argv)
    p = PROTOCOLS[a.protocol]
    # --budget lineage has no 0-stage generator row: its default rows leave it out (asked for, it is refused)
    methods = a.methods or [m for m in p.core if not (a.budget == "lineage" and m == "pretrain")]
    if bad := [m for m in methods if m not in p.core + p.extra]:
        refuse(f"--methods: {bad[0]} is not a row of protocol {p.name} (choose from {', '.join(p.core + p.extra)})")
    if a.budget != "cpu" and p.name == "v2":
        refuse(f"--budget {a.budget}: the v2 protocol has one budget (use --protocol v3 or standard)")
    if a.budget == "lineage" and "pretrain" in methods:
        refuse("--methods pretrain: --budget lineage trains every row from scratch (no 0-stage generator); its "
               "generator row is pretrain-matched")
    if a.practices and not p.second:
        refuse(f"--practices: protocol {p.name} has no second-permutation test part (v3 only)")
    if a.nce_stats and p.name != "v2":
        refuse("--nce-stats: v2 only (v3 and standard keep each stage's NCE loss in the curve CSV)")
    if a.curve_to is not None and not p.chunk:
        refuse(f"--curve-to: protocol {p.name} keeps every epoch's model in its curve already (v2 only)")
    use(a.protocol, a.budget)
    global DEVICE
    from ebmtool.data.sources import MNIST_FILES, mnist_file
    from ebmtool.runtime import resolve_device

    try:
        DEVICE = resolve_device(a.device)
    except UserError as e:
        refuse(str(e))
    if a.nce_stats:
        return nce_stats()
    missing = [f for split in p.split.split("+") for f in MNIST_FILES[split] if mnist_file(MNIST, f) is None]
    if missing:
        refuse(f"no MNIST file {missing[0]}[.gz] in {MNIST} (set MNIST_ROOT to the folder of the IDX files, or fill "
               "one with `ebmtool data prepare --dataset mnist --download --root DIR`)")
    if a.budget == "paper" and DEVICE.type == "cpu":
        refuse("--budget paper is ~70k updates per row (days on a CPU): run it with --device cuda")
    torch.set_num_threads(a.threads)
    cpu = cpu_name()
    prec = resolve_precision(a.precision or p.precision, DEVICE, warn=False).name
    try:
        if a.practices:
            return practices()
        if a.curve_to:  # the budget study: does AUPRC flatten beyond the table's budget?
            for seed, digit in [(s, d) for s in a.seeds or p.seeds for d in a.digits]:
                tag = f"d{digit}-s{seed}-{prec}"
                curve("mle", digit, seed, prec, mle_chunks(parts(digit), tag, seed, prec, a.curve_to), None,
                      parts(digit), cpu)
            return
        for seed in a.seeds or p.seeds:
            for digit in a.digits:
                for m in methods:
                    done = {(r["method"], r["digit"], r["seed"], r["precision"]) for r in read(RESULTS)}
                    pr = "fp32" if m in ("pca", "random", "data") else prec
                    if (m, str(digit), str(seed), pr) in done:
                        continue
                    try:
                        row = run_cell(m, digit, seed, pr, cpu)
                    except DivergenceError as e:  # a result, not a stop: seeded, it would diverge again on a rerun
                        row = {"protocol": P.name, "method": m, "digit": digit, "seed": seed, "precision": pr,
                               "budget": f"diverged: {e}", "cpu": cpu, "torch": torch.__version__,
                               "threads": torch.get_num_threads()}
                    append(RESULTS, P.fields, row)
                    print({k: row.get(k) for k in ("method", "digit", "seed", "auprc_joint", "score_steps",
                                                  "train_wall_s", "score_wall_s")}, flush=True)
    except Interrupted as e:  # SIGINT/SIGTERM in training: its checkpoint was written, and this script resumes it
        refuse(f"interrupted at iteration {e.iteration}; checkpoint written to {e.checkpoint}; run the same command "
               "again to continue (finished rows are kept, the training resumes from its checkpoint)", 1)
    except (KeyboardInterrupt, UserError) as e:
        refuse(f"{str(e) or 'interrupted'}; run the same command again to continue (finished rows are kept, an "
               "interrupted training resumes from its checkpoint)", 1)


if __name__ == "__main__":
    main()
