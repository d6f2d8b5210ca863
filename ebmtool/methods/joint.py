"""``fit-prior --method joint-mle | joint-vi``: joint latent-space EBM prior on a multi-layer generator
(Cui, Wu & Han, CVPR 2023, arXiv:2306.06323).

Latents z = (z_1 bottom, ..., z_L top); the generator reads z_1. The prior (eq. 6-7) tilts a Gaussian hierarchy
by one energy term per layer::

    p(z) ∝ exp[sum_i f_i(z_i)] prod_{i<L} N(z_i; mu_i(z_{i+1}), sigma_i(z_{i+1})^2) N(z_L; 0, I)

``joint-mle`` (Sec. 3.2), per batch: z- by prior short-run Langevin over all layers jointly (eq. 13; 60 steps,
s = 0.4), z+ by posterior short-run Langevin (eq. 14; 40 steps, s = 0.1), both started from N(0, I) on every
layer as in the authors' code (``chain_start``; the paper does not say), then one backward pass of

    loss = -log p(x|z+) - log p(z+) + log p(z-)          (p(z) un-normalised)

which gives eq. 9 for the generator, eq. 10 for the energies (loss f_i(z_i-) - f_i(z_i+)) and eq. 11 for the
conditionals (log p(z_i|z_{i+1}) at prior minus at posterior samples, the authors' loss); log N(z_L) has no
parameters. ``joint-vi`` (Sec. 3.3) replaces posterior Langevin by a bottom-up inference model
q(z_1|x) prod q(z_{i+1}|z_i) with reparametrised samples z_q:

    loss = -[log p(x|z_q) + log p(z_q) - log q(z_q|x)] + log p(z-)

i.e. the negative ELBO with the un-normalised EBM prior (eq. 19 for q, eq. 16 for the generator) plus the
prior-sample half of eq. 17-18. ``negatives_from=positives`` (not in the paper) starts the prior chains at the
batch's detached z+ (contrastive divergence): from N(0, I) starts joint-vi's q(z_1|x) ran away on MNIST, climbing f_1
where the prior chains never went. ``ebm=false`` (not in the paper) is the ablation of the EBM prior: no f_i, p(z) is
the normalised hierarchy, E_p[grad log p(z-)] = 0, so no prior chain runs: joint-mle learns the hierarchy by its MLE
gradient at posterior samples, joint-vi is a hierarchical VAE of the same networks (loss: the negative ELBO, up to the
constant of p(x|z) that ``log_lik`` leaves out). One Adam per module as in the authors' code (default betas, no
decay): lr 2e-5 for the energies, 1e-4 for the generator, the conditionals (and the inference model).

Chains run in z-space (eq. 13-14, the authors' code). A Langevin step s on a Gaussian conditional of std sigma is
stable only while sigma > s/2; conditionals that sharpen during training (a fast ``opt_c.lr``) make chains diverge,
and the error then names the smallest sigma and the ``conditional.floor`` that would keep s stable.
The prior is :class:`ebmtool.priors.JointPrior`; hierarchical sampling (Sec. 5.2) is
:func:`ebmtool.models.latent.hierarchical_sample`.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ebmtool.config import (MAX_CHANNELS, MAX_HIDDEN, MAX_LATENT, MAX_LAYERS, EnergySpec, GeneratorSpec, Langevin,
                            Optim, Strict, TrainCommon)
from ebmtool.errors import DivergenceError, UserError
from ebmtool.models.latent import LatentModel, generator_for, latent_model
from ebmtool.nets.encoders import BottomUpGaussianEncoder
from ebmtool.priors import GaussianPrior, JointPrior
from ebmtool.priors.joint import Layers
from ebmtool.registry import GENERATOR_KEPT, Flag, Kept, register_method
from ebmtool.training import FitResult, chain_latents, adam, optimizer_step, train_loop


# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------
class GaussianMLPSpec(Strict):
    """Conditional Gaussian MLP d_in -> hidden (x layers) -> (mu, log sigma); sigma = exp(log sigma) + floor."""

    hidden: int = Field(200, ge=1, le=MAX_HIDDEN)
    layers: int = Field(4, ge=1, le=MAX_LAYERS)
    slope: float = Field(0.2, ge=0)
    floor: float = Field(0.01, gt=0, description="least sigma (0.01: authors' code); z-space Langevin with step s "
                                                  "is stable on a Gaussian conditional only while sigma > s/2")


class EncoderSpec(Strict):
    """Bottom-up inference model: conv trunk (nef channels, doubling per stride-2 conv) for q(z_1|x),
    Gaussian MLPs (hidden x layers) for q(z_{i+1}|z_i)."""

    nef: int = Field(64, ge=1, le=MAX_CHANNELS)
    hidden: int = Field(200, ge=1, le=MAX_HIDDEN)
    layers: int = Field(2, ge=1, le=MAX_LAYERS)
    slope: float = Field(0.2, ge=0)


class JointConfig(TrainCommon):
    """Shared by joint-mle and joint-vi. Defaults: the authors' CIFAR-10 code (z_1 = generator.nz)."""

    layers: int = Field(2, le=MAX_LAYERS, description="latent layers L (z_1 bottom .. z_L top), at least 2")
    nz_top: int = Field(100, ge=1, le=MAX_LATENT, description="dimension of each layer above z_1 (z_1 = generator.nz)")
    generator: GeneratorSpec = GeneratorSpec()
    energy: EnergySpec = EnergySpec(hidden=200, layers=3, slope=0.2)
    energy_upper: EnergySpec = EnergySpec(hidden=100, layers=2, slope=0.2)
    conditional: GaussianMLPSpec = GaussianMLPSpec()
    prior: Langevin = Langevin(steps=60, step_size=0.4)
    opt_g: Optim = Optim(lr=1e-4, beta1=0.9)  # generator (authors' g1_lr)
    opt_c: Optim = Optim(lr=1e-4, beta1=0.9)  # Gaussian conditionals p(z_i|z_{i+1}) (authors' g2_lr)
    opt_e: Optim = Optim(lr=2e-5, beta1=0.9)  # energies (authors' e1_lr, e2_lr)
    chain_start: Literal["noise", "ancestral"] = Field(
        "noise", description="where the prior and posterior chains start: noise = N(0, I) on every layer (the authors' "
                             "joint-training code), ancestral = draws of the Gaussian hierarchy")
    energy_l2: float = Field(0.0, ge=0, description="L2 penalty on sum_i f_i at both sample sets (0 = paper)")
    negatives_from: Literal["start", "positives"] = Field(
        "start", description="where the training prior chains (z-) start: start = chain_start draws (the paper); "
                             "positives = this batch's z+ (posterior Langevin or q(z|x) samples, detached), i.e. "
                             "contrastive divergence (Hinton 2002; not in the paper)")
    ebm: bool = Field(True, description="false: no energy terms, p(z) = the Gaussian hierarchy alone and no prior "
                                        "chains in training: the ablation of the EBM prior (joint-vi: a hierarchical "
                                        "VAE of the same networks; not in the paper)")
    epochs: int = Field(100, ge=1)

    def unused_sections(self) -> dict[str, str]:
        """Sections these values leave with nothing to act on: set by the user, they are refused (stages.train)."""
        if self.ebm:
            return {}
        return {k: "ebm=false has no energy terms for it to act on" for k in ("energy", "energy_upper", "opt_e")}

    @model_validator(mode="after")
    def _ebm_options(self):
        if not self.ebm:
            used = [k for k, off in (("negatives_from", self.negatives_from == "start"),
                                     ("energy_l2", self.energy_l2 == 0))
                    if not off]
            if used:
                raise PydanticCustomError("ebm", "{opts} acts on the energy terms, which ebm=false drops",
                                          {"opts": " and ".join(used)})
        return self

    @field_validator("layers")
    @classmethod
    def _at_least_two(cls, v: int) -> int:
        if v < 2:
            raise PydanticCustomError("layers", "joint methods need --layers >= 2")
        return v


class JointMLEConfig(JointConfig):
    posterior: Langevin = Langevin(steps=40, step_size=0.1)


class JointVIConfig(JointConfig):
    encoder: EncoderSpec = EncoderSpec()
    opt_q: Optim = Optim(lr=1e-4, beta1=0.9)  # inference model (as the generator: the released code has no VI run)


# the Langevin posterior stored with a joint-vi model (used by evaluation only if the encoder is bypassed)
VI_MODEL_POSTERIOR = Langevin(steps=40, step_size=0.1)


# ------------------------------------------------------------------------------------------------
# fitting
# ------------------------------------------------------------------------------------------------
def _prior(cfg: JointConfig, nz: int, init, init_art, method: str, log) -> JointPrior:
    if init is not None and isinstance(init.prior, JointPrior):
        if init.prior.layers != cfg.layers:
            raise UserError(f"--init {init_art.path}: the model has {init.prior.layers} latent layers, "
                            f"not --layers {cfg.layers}")
        if tuple(init.prior.dims[1:]) != (cfg.nz_top,) * (cfg.layers - 1):
            raise UserError(f"--init {init_art.path}: the model's layers above z_1 have dimensions "
                            f"{list(init.prior.dims[1:])}, not nz_top {cfg.nz_top} (--set nz_top="
                            f"{init.prior.dims[1]} continues it)")
        if init.prior.ebm != cfg.ebm:
            raise UserError(f"--init {init_art.path}: the model was trained with ebm={str(init.prior.ebm).lower()}, "
                            f"not ebm={str(cfg.ebm).lower()}")
        if init.prior.start != cfg.chain_start:  # chains follow the config, as their steps do; said, not silent
            log(f"[{method}] the --init model's chains started from {init.prior.start} draws; this run's start from "
                f"{cfg.chain_start} (--set chain_start={init.prior.start} keeps theirs)")
            init.prior.start = cfg.chain_start
        return init.prior  # continue a joint model (its saved architecture wins)
    if init is None or isinstance(init.prior, GaussianPrior):
        return JointPrior((nz,) + (cfg.nz_top,) * (cfg.layers - 1), cfg.energy.model_dump(),
                          cfg.energy_upper.model_dump(), cfg.conditional.model_dump(), cfg.chain_start, cfg.ebm)
    raise UserError(f"--init {init_art.path}: a {init.prior.type_name} prior cannot be trained by {method} "
                    "(start from a pretrained generator or a joint model)")


def _divergence_hint(prior: JointPrior, step_size: float, device) -> str:
    """Name the usual cause of a diverging joint chain: a Gaussian conditional narrower than s/2, on which a
    z-space Langevin step z += (s^2/2)(mu - z)/sigma^2 overshoots and grows."""
    with torch.no_grad():
        z = prior.base_sample(256, device)
        least = min(float(c(z[i + 1])[1].min()) for i, c in enumerate(prior.conditionals))
    if least >= step_size / 2:
        return ""
    return (f"; the Gaussian conditionals' sigma reaches {least:.3g} < s/2 = {step_size / 2:.3g}, where a Langevin "
            f"step of size {step_size} is unstable (lower the conditionals' learning rate opt_c.lr, or train anew "
            f"with --set conditional.floor={step_size / 2:.3g}: a run from --init keeps its conditionals)")


def joint_loss(model: LatentModel, x: torch.Tensor, z_pos: Layers, z_neg: Layers | None,
               log_q: torch.Tensor | None = None,
               energy_l2: float = 0.0) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The loss whose gradient is eq. 9-11 (``log_q`` None: z+ from posterior Langevin) or eq. 16-19 (z+ ~ q(z|x)
    reparametrised, ``log_q`` = log q(z+|x)), with p(z) = exp(sum_i f_i) p_hierarchy un-normalised::

        loss = -[log p(x|z+) + sum_i f_i(z_i+) + log p_h(z+) - log q(z+|x)] + sum_i f_i(z_i-) + log p_h(z-)

    Generator: -log p(x|z+) (eq. 9, 16); energies: f(z-) - f(z+) (eq. 10, 17); conditionals: log p_h at prior
    minus at posterior samples (eq. 11, 18); inference model: the negative ELBO (eq. 19). Returns (loss, scalars).

    ``z_neg`` None (a prior without energy terms, ``ebm=False``): p(z) = p_h is normalised, E_p[grad log p_h] = 0,
    so the negative half drops: -log p(x, z+) at posterior samples (its gradient is the hierarchy's MLE gradient),
    or for VI the negative ELBO up to the constant of log p(x|z).
    """
    prior = model.prior
    ll = model.log_lik(x, z_pos)  # log p(x | z_1+), (B,)
    f_pos, c_pos = prior.tilt(z_pos), prior.base_log_prob(z_pos)  # sum_i f_i, log p_hierarchy; (B,) each
    objective = ll + f_pos + c_pos - (log_q if log_q is not None else 0.0)  # (B,)
    if z_neg is None:
        loss = -objective.mean()
        stats = {"loss_g": -ll.mean(), "neg_log_prior": -c_pos.mean(), "z_pos_norm": z_pos[0].norm(dim=1).mean()}
    else:
        f_neg, c_neg = prior.tilt(z_neg), prior.base_log_prob(z_neg)
        loss = -objective.mean() + (f_neg + c_neg).mean()
        if energy_l2 > 0:
            loss = loss + energy_l2 * (f_pos.pow(2).mean() + f_neg.pow(2).mean())
        stats = {"loss_g": -ll.mean(), "loss_e": f_neg.mean() - f_pos.mean(), "loss_c": c_neg.mean() - c_pos.mean(),
                 "f_pos": f_pos.mean(), "f_neg": f_neg.mean(), "z_pos_norm": z_pos[0].norm(dim=1).mean(),
                 "z_neg_norm": z_neg[0].norm(dim=1).mean()}
    if log_q is not None:
        stats["elbo"] = objective.mean()
    return loss, {k: v.detach() for k, v in stats.items()}


def _fit(cfg: JointConfig, data, init, init_art, ctx, method: str, vi: bool) -> FitResult:
    gen = generator_for(cfg.generator, data.image_shape, init, init_art and init_art.path)
    prior = _prior(cfg, gen.nz, init, init_art, method, ctx.log)
    encoder = None
    if vi:
        old = getattr(init, "encoder", None)
        encoder = old if isinstance(old, BottomUpGaussianEncoder) and old.dims == prior.dims else \
            BottomUpGaussianEncoder(data.image_shape, prior.dims, **cfg.encoder.model_dump())
    posterior = VI_MODEL_POSTERIOR if vi else cfg.posterior
    model = latent_model(gen, prior, cfg.sigma, data.image_shape, posterior=posterior, sampling=cfg.prior,
                         method=method, encoder=encoder).to(ctx.device)
    groups = {"generator": (model.generator, cfg.opt_g), "conditionals": (prior.conditionals, cfg.opt_c)}
    if prior.ebm:
        groups["energies"] = (prior.energies, cfg.opt_e)
    if vi:
        groups["encoder"] = (encoder, cfg.opt_q)
    adams = {name: adam(m.parameters(), o) for name, (m, o) in groups.items()}
    opts, scheds = {k: a[0] for k, a in adams.items()}, [a[1] for a in adams.values()]
    ctx.ckpt.track(model=model, **{f"opt_{k}": o for k, o in opts.items()},
                   **{f"sched_{k}": sc for k, sc in zip(opts, scheds)})

    def positives(x, it):
        """z+ ~ posterior short-run Langevin (eq. 14), or reparametrised z+ ~ q(z|x) and log q(z+|x) (B,) for VI."""
        if vi:
            return model.encoder.rsample(x)
        return chain_latents(model.infer(x, what=f"posterior Langevin (iteration {it + 1})")), None

    def chains(x, it):
        """(z-, z+, log q): z- ~ prior short-run Langevin (eq. 13) from chain_start draws, or from z+ (CD);
        no z- (None) without energy terms, whose prior is normalised."""
        if not prior.ebm:
            return None, *positives(x, it)
        what = f"prior Langevin (iteration {it + 1})"
        if cfg.negatives_from == "positives":
            z_pos, log_q = positives(x, it)
            return chain_latents(prior.chain(tuple(z.detach() for z in z_pos), cfg.prior, what)), z_pos, log_q
        z_neg = chain_latents(prior.chain(len(x), cfg.prior, what, device=x.device))
        return z_neg, *positives(x, it)

    def step(idx, x, it):
        try:
            z_neg, z_pos, log_q = chains(x, it)
        except DivergenceError as e:
            # no prior chain without f
            chains_run = ([cfg.prior] if prior.ebm else []) + ([] if vi else [cfg.posterior])
            s = max(c.effective_step_size() for c in chains_run)
            raise DivergenceError(str(e) + _divergence_hint(prior, s, x.device)) from None
        loss, stats = joint_loss(model, x, z_pos, z_neg, log_q, cfg.energy_l2)
        optimizer_step({f"the {k}": o for k, o in opts.items()}, loss)  # one backward, one Adam step per module
        return stats

    hist = train_loop(ctx, data, epochs=cfg.epochs, batch_size=cfg.batch_size, step=step, schedulers=scheds,
                      label=method, log_every=cfg.log_every)
    return FitResult(model, hist, meta={"latent_dims": list(prior.dims)})


JOINT_FLAGS = (Flag("--layers", "layers", int, "joint-mle/joint-vi: latent layers"),)
# a joint model given to --init is continued with its saved architecture: these sections are read from it, and a
# value the user sets that differs is refused in one line (stages.train.keep_init_structure), never ignored
JOINT_KEPT = GENERATOR_KEPT + tuple(Kept(s, f"prior.{s}", when="joint")
                                    for s in ("energy", "energy_upper", "conditional"))
JOINT_VI_KEPT = JOINT_KEPT + (Kept("encoder", when="bottom_up_gaussian"),)
_SMALL = {"nz_top": 4, "opt_e": {"lr": 2e-4}, "energy_upper": {"hidden": 32},
          "conditional": {"hidden": 32, "layers": 2}}


@register_method("joint-mle", JointMLEConfig,
                 "joint EBM prior on a multi-layer generator, prior and posterior Langevin over all layers "
                 "(Cui, Wu & Han 2023)", flags=JOINT_FLAGS, kept_from_init=JOINT_KEPT,
                 presets={"smoke": _SMALL, "cpu": {"nz_top": 8, "opt_e": {"lr": 2e-4}}, "paper": {"nz_top": 100}})
def fit_mle(cfg: JointMLEConfig, data, init, init_art, ctx) -> FitResult:
    return _fit(cfg, data, init, init_art, ctx, "joint-mle", vi=False)


@register_method("joint-vi", JointVIConfig,
                 "joint EBM prior on a multi-layer generator with a bottom-up inference model (Cui, Wu & Han 2023, "
                 "Sec. 3.3)", flags=JOINT_FLAGS, kept_from_init=JOINT_VI_KEPT,
                 presets={"smoke": {**_SMALL, "encoder": {"nef": 16, "hidden": 32}, "opt_q": {"lr": 1e-3}},
                          "cpu": {"nz_top": 8, "opt_e": {"lr": 2e-4}, "encoder": {"nef": 32}, "opt_q": {"lr": 1e-3}},
                          "paper": {"nz_top": 100}})
def fit_vi(cfg: JointVIConfig, data, init, init_art, ctx) -> FitResult:
    return _fit(cfg, data, init, init_art, ctx, "joint-vi", vi=True)
