"""``fit-prior --method adaptive-nce``: adaptive multi-stage density ratio estimation (Xiao & Han 2022,
arXiv:2209.08739).

Prior at stage k: p_k(z) = p0(z) prod_{i<k} r_i(z). Within stage k, per batch:

1. z+ ~ short-run posterior Langevin on p_k(z) p(x|z) (s = 0.1, 30 steps);
2. generator step on -log p(x|z+) (the generator keeps learning under the current prior);
3. z- ~ p_k: exactly p0 at stage 0; afterwards rows of the *read* memory (posterior samples of stage k-1,
   samples of q_{k-1} ~ p_k), or short-run prior Langevin on p_k with ``--prior-sampler langevin``;
4. NCE step on log r_k (eq. 4): -E_{z+} log sigmoid(log r_k) - E_{z-} log sigmoid(-log r_k);
5. z+ is written into the example's row of the *write* memory (collected for stage k+1).

Two memory buffers (read: previous stage, write: this stage) swap at the stage boundary, so the negatives
of stage k are never overwritten by stage k's own posterior samples. At the end of a stage r_k is frozen.

Step sizes are read in each chain's ``convention`` (default "lebm", z + s^2/2 grad + s eps); the paper's eq. 3,
z + s/2 grad + sqrt(s) eps, is ``--set posterior.convention=xiao-han`` (and ``prior.``/``sampling.``), the same
sampler at sqrt(s) (docs/design.md §3).

``--non-adaptive`` is the TRE-style ablation (Sec. 3.2 / 5.5): generator frozen at the 0-stage model,
posterior under p0, ratios fit between waymarks w_j = sqrt(1 - a_j^2) z- + a_j z+, a_j = j/m, z- ~ p0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field

from ebmtool.config import EnergySpec, GeneratorSpec, Langevin, Optim, StageCommon
from ebmtool.errors import UserError
from ebmtool.registry import Flag, Kept, register_method
from ebmtool import distributed
from ebmtool.artifacts import MemoryArtifact
from ebmtool import progress as bars
from ebmtool.training import FitResult, chain_latents, History, adam, optimizer_step, train_loop
from ebmtool.models.latent import generator_for, latent_model
from ebmtool.priors import GaussianPrior, RatioProductPrior


class AdaptiveNCEConfig(StageCommon):
    stages: int = Field(4, ge=1, description="stages to add (each learns one ratio r_k)")
    epochs_per_stage: int = Field(25, ge=1)
    batch_size: int = Field(100, ge=1)
    sigma: float = Field(0.3, gt=0)
    generator: GeneratorSpec = GeneratorSpec()
    energy: EnergySpec = EnergySpec(slope=0.1)
    posterior: Langevin = Langevin(steps=30, step_size=0.1)
    prior: Langevin = Langevin(steps=60, step_size=0.1)
    prior_sampler: Literal["memory", "langevin"] = "memory"
    non_adaptive: bool = False
    opt_g: Optim = Optim(lr=1e-4)
    opt_r: Optim = Optim(lr=5e-5)
    sampling: Langevin = Langevin(steps=100, step_size=0.1)
    sampler: Literal["langevin", "sir"] = "langevin"
    log_every: int = Field(0, ge=0)


def nce_loss(log_r_pos: torch.Tensor, log_r_neg: torch.Tensor) -> torch.Tensor:
    """Eq. (4): logistic loss of classifying posterior (label 1) against prior (label 0) samples by log r."""
    return -F.logsigmoid(log_r_pos).mean() - F.logsigmoid(-log_r_neg).mean()


def _prior_from_init(init, cfg, nz, init_art) -> RatioProductPrior:
    if init is None or isinstance(init.prior, GaussianPrior):
        return RatioProductPrior(nz, cfg.energy.hidden, cfg.energy.layers, cfg.energy.slope)
    if isinstance(init.prior, RatioProductPrior):
        return init.prior
    raise UserError(f"--init {init_art.path}: NCE stages can only be added to a Gaussian or ratio-product prior, "
                    f"not a {init.prior.type_name} prior")


# added stages take the ratio network size of the product they join
NCE_KEPT = (Kept("generator"), Kept("energy", "prior", when="ratio_product"))
NCE_FLAGS = (Flag("--stages", "stages", int, "adaptive-nce: stages to add"),
             Flag("--epochs-per-stage", "epochs_per_stage", int, "adaptive-nce"),
             Flag("--prior-sampler", "prior_sampler", str, "adaptive-nce: memory | langevin"),
             Flag("--non-adaptive/--adaptive", "non_adaptive", bool, "adaptive-nce: TRE-style ablation"))


def _nce_presets(per_stage: dict[str, int]) -> dict[str, dict]:
    return {"smoke": {"epochs_per_stage": per_stage["smoke"], "opt_r": {"lr": 5e-4}},
            "cpu": {"epochs_per_stage": per_stage["cpu"], "opt_r": {"lr": 5e-4}},
            "paper": {"epochs_per_stage": per_stage["paper"], "posterior": {"steps": 30}}}


@register_method("adaptive-nce", AdaptiveNCEConfig,
                 "adaptive multi-stage NCE density-ratio estimation, stage by stage (Xiao & Han 2022)",
                 presets=_nce_presets({"smoke": 1, "cpu": 5, "paper": 25}), flags=NCE_FLAGS, kept_from_init=NCE_KEPT,
                 snapshots=False)
def fit(cfg: AdaptiveNCEConfig, data, init, init_art, ctx, method: str = "adaptive-nce") -> FitResult:
    gen = generator_for(cfg.generator, data.image_shape, init, init_art and init_art.path)
    prior = _prior_from_init(init, cfg, gen.nz, init_art)
    for r in prior.stages:
        r.requires_grad_(False)
    k0 = len(prior.stages)
    W = distributed.world()
    model = latent_model(gen, prior, cfg.sigma, data.image_shape, posterior=cfg.posterior, sampling=cfg.sampling,
                         sampler=cfg.sampler, method=method).to(ctx.device)
    if cfg.non_adaptive:
        return _fit_non_adaptive(cfg, data, model, k0, init, ctx)

    n, nz, dev = len(data.x), gen.nz, ctx.device
    read_memory = None
    if k0 > 0 and cfg.prior_sampler == "memory":
        mem = init_art.tensors.get("memory") if init_art is not None else None
        if mem is None and isinstance(init_art, MemoryArtifact):  # the Python API's init=model object
            raise UserError(f"init {init_art.path}: a model object carries no memory of posterior samples; give "
                            "init its artifact's path (fit_prior(..., out=PATH) wrote it there), or "
                            "overrides={'prior_sampler': 'langevin'}")
        if mem is None:
            raise UserError(f"--init {init_art.path}: model has no memory of posterior samples "
                            "(use --prior-sampler langevin)")
        if init_art.meta.get("data_content_sha256") != data.content_sha256:
            raise UserError(f"--init {init_art.path}: its memory belongs to another dataset than --data "
                            "(content sha256 differs); pass the same --data or use --prior-sampler langevin")
        if tuple(mem.shape) != (n, nz):
            raise UserError(f"--init {init_art.path}: its memory has shape {tuple(mem.shape)}, expected ({n}, {nz}) "
                            "(one latent per example of --data)")
        read_memory = mem.to(dev)
    opt_g, sched_g = adam(model.generator.parameters(), cfg.opt_g)
    ck = ctx.ckpt
    ck.track(model=model, opt_g=opt_g, sched_g=sched_g)
    hist = History()
    s_resume = _resume_stage(ck.resume_iteration, cfg, n)
    for _ in range(s_resume):  # completed stages: their ratios come back with the checkpoint's model state
        prior.add_stage(prior.new_ratio().to(dev))
    write_memory = torch.zeros(n, nz, device=dev)
    # one bar over every stage (its ETA is the run's), counting epochs as the log lines do
    def stage_text(k: int) -> str:  # stages counted from 1, as --stages and the plots count them
        return f"{method} stage {k + 1}/{k0 + cfg.stages}"

    with bars.bar(stage_text(k0 + s_resume), cfg.stages * cfg.epochs_per_stage, show=not ctx.quiet, unit="epochs",
                  width=len(stage_text(k0 + cfg.stages - 1))) as progress:
        progress.set(s_resume * cfg.epochs_per_stage)
        for s in range(s_resume, cfg.stages):
            k = k0 + s
            progress.describe(stage_text(k))
            r = prior.new_ratio().to(dev)
            opt_r, _ = adam(r.parameters(), cfg.opt_r)
            write_memory = torch.zeros(n, nz, device=dev)
            mem_gen = torch.Generator(device="cpu").manual_seed(ctx.seed * 7919 + k)
            ck.track(ratio=r, opt_r=opt_r, write_memory=write_memory, mem_gen=mem_gen)
            if k > 0 and cfg.prior_sampler == "memory":
                if read_memory is None:  # resuming mid-run: the previous stage's buffer comes from the checkpoint
                    read_memory = torch.zeros(n, nz, device=dev)
                ck.track(read_memory=read_memory)

            def negatives(m: int, it: int) -> torch.Tensor:
                if k == 0:
                    return torch.randn(m, nz, device=dev)  # p_0 = N(0, I) exactly
                if read_memory is not None:  # rows drawn for the global batch; this rank uses its shard of them
                    rows = torch.randint(0, n, (m if not W.parallel else cfg.batch_size,), generator=mem_gen,
                                         device="cpu")
                    return read_memory[distributed.take(rows)[:m].to(dev)]
                return chain_latents(prior.chain(m, cfg.prior, f"prior Langevin (stage {k}, iteration {it + 1})",
                                                 device=dev))

            def step(idx, x, it):
                z_pos = chain_latents(model.infer(x, what=f"posterior Langevin (stage {k}, iteration {it + 1})"))
                loss_g = -model.log_lik(x, z_pos).mean()
                optimizer_step(opt_g, loss_g, "the generator loss")
                z_neg = negatives(len(x), it)
                lr_pos, lr_neg = r(z_pos), r(z_neg)
                loss_r = nce_loss(lr_pos, lr_neg)
                optimizer_step(opt_r, loss_r, f"the NCE loss of stage {k}")
                # each rank writes the rows of the examples it holds; every replica of the memory gets all of them
                write_memory[distributed.gather(idx.to(dev))] = distributed.gather(z_pos.detach())
                return {"loss_g": loss_g.detach(), "nce": loss_r.detach(), "log_r_pos": lr_pos.mean().detach(),
                        "log_r_neg": lr_neg.mean().detach()}

            train_loop(ctx, data, epochs=cfg.epochs_per_stage, batch_size=cfg.batch_size, step=step,
                       schedulers=[sched_g], history=hist, label=f"{method} stage {k + 1}", log_every=cfg.log_every,
                       epoch_offset=s * cfg.epochs_per_stage, bar=progress,
                       epochs_total=cfg.stages * cfg.epochs_per_stage)
            prior.add_stage(r)  # freeze r_k: it is now part of p_{k+1}
            read_memory = write_memory  # swap: this stage's posterior samples are the next stage's negatives
    stage_losses = _per_stage(hist.epochs["nce"], cfg.epochs_per_stage)
    tensors = {"memory": write_memory.detach().cpu()}
    tensors.update({f"history.stage{k0 + i}.nce": torch.tensor(v, device="cpu") for i, v in enumerate(stage_losses)})
    meta = {"stages_total": len(prior.stages), "stages_added": cfg.stages, "data_content_sha256": data.content_sha256,
            "nce_final_per_stage": [v[-1] for v in stage_losses]}
    return FitResult(model, hist, tensors, meta)


def _resume_stage(resume_it: int, cfg, n: int) -> int:
    """Index of the stage a checkpoint at ``resume_it`` completed iterations falls in (0 when not resuming).
    A checkpoint taken at a stage's last iteration resumes in that stage (its end-of-stage actions are pending)."""
    if resume_it <= 0:
        return 0
    stage_len = cfg.epochs_per_stage * math.ceil(n / cfg.batch_size)
    return min(math.ceil(resume_it / stage_len) - 1, cfg.stages - 1)


def _per_stage(per_epoch: list[float], epochs_per_stage: int) -> list[list[float]]:
    return [per_epoch[i: i + epochs_per_stage] for i in range(0, len(per_epoch), epochs_per_stage)]


def _fit_non_adaptive(cfg, data, model, k0, init, ctx) -> FitResult:
    """TRE-style waymark ablation: generator fixed, posterior under p0, ratios between linear-mixing waymarks."""
    if init is None or not isinstance(init.prior, GaussianPrior):
        raise UserError("--non-adaptive needs --init a pretrained generator (the 0-stage model under N(0, I))")
    prior: RatioProductPrior = model.prior
    dev, m = ctx.device, cfg.stages
    base = latent_model(model.generator, GaussianPrior(prior.nz), cfg.sigma, model.image_shape,
                        posterior=cfg.posterior, sampling=cfg.sampling, method="pretrain").to(dev)
    alphas = [j / m for j in range(m + 1)]
    hist = History()
    model.generator.requires_grad_(False)
    ck = ctx.ckpt
    ck.track(model=model)
    j_resume = _resume_stage(ck.resume_iteration, cfg, len(data.x))
    for _ in range(j_resume):
        prior.add_stage(prior.new_ratio().to(dev))
    for j in range(j_resume, m):
        r = prior.new_ratio().to(dev)
        opt_r, _ = adam(r.parameters(), cfg.opt_r)
        ck.track(ratio=r, opt_r=opt_r)
        a0, a1 = alphas[j], alphas[j + 1]

        def step(idx, x, it):
            z_pos = chain_latents(base.infer(x, what=f"posterior Langevin (waymark {j}, iteration {it + 1})"))
            z_neg = torch.randn_like(z_pos)  # z- ~ p0
            w_neg = math.sqrt(1 - a0**2) * z_neg + a0 * z_pos  # waymark j
            w_pos = math.sqrt(1 - a1**2) * z_neg + a1 * z_pos  # waymark j + 1
            lp, ln = r(w_pos), r(w_neg)
            loss = nce_loss(lp, ln)
            optimizer_step(opt_r, loss, f"the NCE loss of ratio {j}")
            return {"nce": loss.detach(), "log_r_pos": lp.mean().detach(), "log_r_neg": ln.mean().detach()}

        train_loop(ctx, data, epochs=cfg.epochs_per_stage, batch_size=cfg.batch_size, step=step, history=hist,
                   label=f"non-adaptive ratio {j}", log_every=cfg.log_every, epoch_offset=j * cfg.epochs_per_stage)
        prior.add_stage(r)
    model.generator.requires_grad_(True)
    stage_losses = _per_stage(hist.epochs["nce"], cfg.epochs_per_stage)
    tensors = {f"history.stage{i}.nce": torch.tensor(v, device="cpu") for i, v in enumerate(stage_losses)}
    meta = {"stages_total": len(prior.stages), "stages_added": m, "non_adaptive": True,
            "waymarks": alphas, "nce_final_per_stage": [v[-1] for v in stage_losses]}
    return FitResult(model, hist, tensors, meta)


class NCEConfig(AdaptiveNCEConfig):
    stages: int = Field(1, ge=1, le=1, description="plain NCE is the one-stage case")


@register_method("nce", NCEConfig, "single-stage NCE (adaptive-nce with --stages 1)",
                 presets=_nce_presets({"smoke": 1, "cpu": 5, "paper": 100}), flags=NCE_FLAGS, kept_from_init=NCE_KEPT,
                 snapshots=False)
def fit_nce(cfg, data, init, init_art, ctx) -> FitResult:
    return fit(cfg, data, init, init_art, ctx, method="nce")
