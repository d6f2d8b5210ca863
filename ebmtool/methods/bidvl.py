"""``fit-prior --method bidvl``: bi-level doubly variational learning (Kan et al., CVPR 2022, arXiv:2203.14702).

Decoupled EBLVM (eq. 8): p(v, h) = p_psi(v) q_w1(h|v), p_psi(v) ~ exp(-E_psi(v)), with a Gaussian inference
model q_w1(h|v) and an implicit generative model v = G_w2(h), h ~ N(0, I) (Sec. 4.3). Per batch, in the order of
the authors' code (Algorithm 1 lists the N = 1 lower-level step first; either way no gradient unrolling):

1. upper level, eq. (14), on psi:   loss_e = mean E(v_data) - mean E(G(h)),  h ~ N(0, I), G(h) held fixed;
2. lower level, eq. (13), on w = (w1, w2), one Adam step on::

       loss_qp = mean E(G(h))                                    (w2 only: the IGM chases p_psi)
               + ||mu(G(h)) - h||^2 / h_dim                      (latent reconstruction, -log q_w1(h|G(h)) up to
                                                                  its variance; w2 only)
               + r' [ ||G(h_q) - v||^2 + KL(q(h|v) || N(0, I)) ]  (the importance-weighted VAE loss on data,
                                                                  h_q = mu + exp(logvar / 2) eps)

   with the importance ratio r(v) of eq. (15) replaced by its basic term r' (``basic_ratio``; 0.05 at 32x32,
   0.1 at 64x64, Sec. 5.4 / Table 5; the released code never uses the bias term, docs/design.md §9). Squared errors are
   summed over pixels / latent dimensions and averaged over the batch, as in the authors' code.

``--no-offset`` keeps the opposite w1 terms of eqs. (11)-(12) with the Sec. 4.4 replacement, as in the authors'
commented-out "complete" branch: the latent reconstruction uses h' ~ q(h|G(h)) (reparameterised) and trains
both w1 and w2 in the lower level, and the upper level adds KL(q(h|G(h)) || N(0, I)) / h_dim (G(h) held fixed)
and steps w1 with the same encoder/generator optimiser.

Adam betas (0, 0.9): lr 1e-4 for the energy, 3e-4 and L2 weight decay 1e-4 for encoder + generator (the
authors' ``QPdecay``), both learning rates decayed by 0.998 per epoch. Logged per batch: loss_e, loss_qp,
e_data = mean E(v_data), e_gen = mean E(G(h)), mse (per pixel, of G(h_q) against v), kl, h_rec.

The model, :class:`~ebmtool.models.bidvl.BiDVLModel`, is in :mod:`ebmtool.models.bidvl`.
"""

from __future__ import annotations

import contextlib
from typing import Optional

import torch
from pydantic import Field

from ebmtool.config import MAX_CHANNELS, MAX_LATENT, MAX_STEP_SIZE, Langevin, Optim, StageCommon, Strict
from ebmtool.errors import UserError
from ebmtool.models.bidvl import BiDVLModel
from ebmtool.nets.generators import GENERAL_SIZES, nearest_served, size_hint
from ebmtool.nets.image_ebm import GaussianEncoder, ImageEnergy, ImageGenerator, layout
from ebmtool.registry import Flag, Kept, register_method
from ebmtool.sampling import frozen
from ebmtool.training import FitResult, adam, optimizer_step, train_loop


# ---------------------------------------------------------------------------------------------------------
# config
# ---------------------------------------------------------------------------------------------------------
class BiDVLGeneratorSpec(Strict):
    nz: int = Field(100, ge=1, le=MAX_LATENT, description="latent dimension h_dim")
    ngf: int = Field(48, ge=1, le=MAX_CHANNELS, description="generator base width (authors' Pbasec)")


class BiDVLEncoderSpec(Strict):
    nef: int = Field(48, ge=1, le=MAX_CHANNELS, description="encoder base width (authors' Qbasec)")
    slope: float = Field(0.2, ge=0)


class BiDVLEnergySpec(Strict):
    ndf: int = Field(64, ge=1, le=MAX_CHANNELS, description="energy net base width (authors' Ebasec)")
    slope: float = Field(0.1, ge=0)


class BiDVLConfig(StageCommon):
    epochs: int = Field(600, ge=1)
    batch_size: int = Field(100, ge=1)
    log_every: int = Field(0, ge=0, description="print a loss line every N iterations (0: per epoch only)")
    generator: BiDVLGeneratorSpec = BiDVLGeneratorSpec()
    encoder: BiDVLEncoderSpec = BiDVLEncoderSpec()
    ebm: BiDVLEnergySpec = BiDVLEnergySpec()
    basic_ratio: Optional[float] = Field(None, ge=0, description="r' (None: 0.05 below 64x64, 0.1 at 64x64)")
    offset: bool = Field(True, description="eqs. (13)-(14); False: the not-offset variant of Sec. 4.4")
    opt_e: Optim = Optim(lr=1e-4, beta1=0.0, beta2=0.9, decay=0.998)
    opt_qp: Optim = Optim(lr=3e-4, beta1=0.0, beta2=0.9, decay=0.998, weight_decay=1e-4)  # the authors' QPdecay
    refine_steps: int = Field(0, ge=0, description="image-space Langevin steps on -E after G(h) at sample time")
    refine_step_size: float = Field(0.01, gt=0, le=MAX_STEP_SIZE,
                                    description="s of that chain (sample --step-size overrides)")


def default_basic_ratio(size: int) -> float:
    """r' of Sec. 5.4: 0.05 on 32x32 datasets, 0.1 on 64x64 (smaller images take the 32x32 value)."""
    return 0.1 if size >= 64 else 0.05


def kl_to_standard_normal(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, diag exp(logvar)) || N(0, I)) = 1/2 sum_j (mu_j^2 + exp(logvar_j) - logvar_j - 1), shape (B,)."""
    return 0.5 * (mu.pow(2) + logvar.exp() - logvar - 1).sum(1)


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """h = mu + exp(logvar / 2) * eps, eps ~ N(0, I) (Sec. 4.3)."""
    return mu + (0.5 * logvar).exp() * torch.randn_like(mu)


def model_for(cfg: BiDVLConfig, image_shape, init, init_art) -> BiDVLModel:
    """A fresh model for the data's image shape, or the BiDVL model of ``--init`` to continue (its spec wins)."""
    c, h, w = image_shape
    if init is not None:
        if not isinstance(init, BiDVLModel):
            raise UserError(f"--init {init_art.path}: a {init.method} model is a latent-space model; bidvl trains its "
                            "own image energy, encoder and generator (drop --init, or continue a bidvl model)")
        if tuple(init.image_shape) != tuple(image_shape):
            raise UserError(f"--init {init_art.path}: model makes {tuple(init.image_shape)} images but --data holds "
                            f"{tuple(image_shape)}")
        return init
    if h != w:
        raise UserError(f"images are {h}x{w} (height x width): bidvl needs square images (resize and centre-crop "
                        f"them with {size_hint(nearest_served(min(h, w)))})")
    try:
        layout(h)
    except ValueError:
        raise UserError(f"images are {h}x{w}: bidvl's networks are built for sizes 8 and {GENERAL_SIZES} "
                        f"(use {size_hint(nearest_served(h))})") from None
    g, e, q = cfg.generator, cfg.ebm, cfg.encoder
    return BiDVLModel(ImageEnergy(c, h, e.ndf, e.slope), GaussianEncoder(c, h, g.nz, q.nef, q.slope),
                      ImageGenerator(c, h, g.nz, g.ngf), image_shape,
                      refine=Langevin.stored(cfg.refine_steps, cfg.refine_step_size), method="bidvl")


# ---------------------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------------------
@register_method("bidvl", BiDVLConfig,
                 "BiDVL: image-space EBM with a Gaussian encoder and a generator, bi-level doubly variational "
                 "(Kan et al. 2022)",
                 flags=(Flag("--basic-ratio", "basic_ratio", float, "bidvl: r' (0.05 at 32x32, 0.1 at 64x64)"),
                        Flag("--offset/--no-offset", "offset", bool, "bidvl: offset (default) or not-offset variant")),
                 kept_from_init=(Kept("generator"), Kept("encoder"), Kept("ebm")),
                 presets={"smoke": {"ebm": {"ndf": 16}, "encoder": {"nef": 16}},
                          "cpu": {"ebm": {"ndf": 32}, "encoder": {"nef": 32}},
                          "paper": {"epochs": 600, "generator": {"nz": 100, "ngf": 48}, "encoder": {"nef": 48},
                                    "ebm": {"ndf": 64}}})
def fit(cfg: BiDVLConfig, data, init, init_art, ctx) -> FitResult:
    model = model_for(cfg, data.image_shape, init, init_art).to(ctx.device).train()
    E, Q, G = model.ebm, model.encoder, model.generator
    nz = G.nz
    r = cfg.basic_ratio if cfg.basic_ratio is not None else default_basic_ratio(data.image_shape[1])
    opt_e, sched_e = adam(E.parameters(), cfg.opt_e)
    opt_qp, sched_qp = adam([*Q.parameters(), *G.parameters()], cfg.opt_qp)
    ctx.ckpt.track(model=model, opt_e=opt_e, opt_qp=opt_qp, sched_e=sched_e, sched_qp=sched_qp)

    def step(idx, v, it):
        n = len(v)
        h = torch.randn(n, nz, device=v.device)  # (n, nz), shared by both levels as in the authors' code
        # --- upper level, eq. (14) (+ Sec. 4.4's KL on q(h|G(h)) without offset) ---------------------
        with torch.no_grad():
            v_gen = G(h)  # (n, C, H, W), held fixed
        e_data, e_gen = E(v).mean(), E(v_gen).mean()
        loss_e = e_data - e_gen
        loss_ul = loss_e
        if not cfg.offset:
            loss_ul = loss_ul + kl_to_standard_normal(*Q(v_gen)).mean() / nz
        # without offset the KL term also trains the encoder (the generator has no gradient here)
        optimizer_step({"the energy": opt_e, "the encoder": opt_qp} if not cfg.offset else opt_e, loss_ul, "the energy")
        # --- lower level, eq. (13) (eq. (11)'s latent reconstruction through w1 too without offset) -------
        with frozen([E]):
            mu, logvar = Q(v)  # (n, nz) each
            rec = (G(reparameterise(mu, logvar)) - v).pow(2).flatten(1).sum(1).mean()
            kl = kl_to_standard_normal(mu, logvar).mean()
            v_hat = G(h)
            e_hat = E(v_hat).mean()
            with frozen([Q]) if cfg.offset else contextlib.nullcontext():
                mu_hat, logvar_hat = Q(v_hat)
            h_back = mu_hat if cfg.offset else reparameterise(mu_hat, logvar_hat)
            h_rec = (h_back - h).pow(2).sum(1).mean() / nz
            loss_qp = e_hat + h_rec + r * (rec + kl)
        optimizer_step(opt_qp, loss_qp, "the encoder/generator loss")
        return {"loss_e": loss_e.detach(), "loss_qp": loss_qp.detach(), "e_data": e_data.detach(),
                "e_gen": e_gen.detach(), "mse": rec.detach() / v[0].numel(), "kl": kl.detach(),
                "h_rec": h_rec.detach()}

    hist = train_loop(ctx, data, epochs=cfg.epochs, batch_size=cfg.batch_size, step=step,
                      schedulers=[sched_e, sched_qp], label="bidvl", log_every=cfg.log_every)
    return FitResult(model.eval(), hist, meta={"basic_ratio": r, "offset": cfg.offset})
