"""``fit-prior --method mle``: LEBM (Pang et al. 2020, arXiv:2006.08205, Algorithm 1).

Per batch: z- by prior short-run Langevin (K0 = 60, s0 = 0.4) on f(z) - ||z||^2/2; z+ by posterior short-run
Langevin (K1 = 20, s1 = 0.1) on f(z) - ||z||^2/2 - ||x - g(z)||^2/(2 sigma^2); generator step on
-log p(x|z+); prior step on the gradient of eq. (5): E(z+) - E(z-) with E = -f, i.e. loss f(z-) - f(z+).
Adam (betas 0.5, 0.999), lr 2e-5 prior / 1e-4 generator, both decayed 0.998 per epoch (the authors' code).
"""

from __future__ import annotations

from pydantic import Field

from ebmtool.config import EnergySpec, GeneratorSpec, Langevin, Optim, TrainCommon
from ebmtool.errors import UserError
from ebmtool.registry import Kept, register_method
from ebmtool.training import FitResult, chain_latents, adam, optimizer_step, train_loop
from ebmtool.models.latent import generator_for, latent_model
from ebmtool.priors import EnergyTiltedPrior, GaussianPrior


class MLEConfig(TrainCommon):
    generator: GeneratorSpec = GeneratorSpec()
    energy: EnergySpec = EnergySpec(slope=0.2)
    prior: Langevin = Langevin(steps=60, step_size=0.4)
    posterior: Langevin = Langevin(steps=20, step_size=0.1)
    opt_g: Optim = Optim(lr=1e-4, decay=0.998)
    opt_e: Optim = Optim(lr=2e-5, decay=0.998)
    energy_l2: float = Field(0.0, ge=0, description="L2 penalty on f at both sample sets (0 = papers)")
    epochs: int = Field(70, ge=1)


@register_method("mle", MLEConfig,
                 "LEBM: maximum likelihood with prior and posterior short-run Langevin (Pang et al. 2020)",
                 kept_from_init=(Kept("generator"), Kept("energy", "prior", when="energy")),
                 presets={"smoke": {"opt_e": {"lr": 2e-4}}, "cpu": {"opt_e": {"lr": 2e-4}}, "paper": {"epochs": 200}})
def fit(cfg: MLEConfig, data, init, init_art, ctx) -> FitResult:
    gen = generator_for(cfg.generator, data.image_shape, init, init_art and init_art.path)
    if init is not None and isinstance(init.prior, EnergyTiltedPrior):
        prior = init.prior  # continue an LEBM model
    elif init is None or isinstance(init.prior, GaussianPrior):
        prior = EnergyTiltedPrior(gen.nz, cfg.energy.hidden, cfg.energy.layers, cfg.energy.slope)
    else:
        raise UserError(f"--init {init_art.path}: a {init.prior.type_name} prior cannot be trained by mle "
                        "(start from a pretrained generator or an mle model)")
    model = latent_model(gen, prior, cfg.sigma, data.image_shape, posterior=cfg.posterior, sampling=cfg.prior,
                         method="mle").to(ctx.device)
    opt_g, sched_g = adam(model.generator.parameters(), cfg.opt_g)
    opt_e, sched_e = adam(model.prior.parameters(), cfg.opt_e)
    ctx.ckpt.track(model=model, opt_g=opt_g, opt_e=opt_e, sched_g=sched_g, sched_e=sched_e)

    def step(idx, x, it):
        n = len(x)
        z_neg = chain_latents(prior.chain(n, cfg.prior, f"prior Langevin (iteration {it + 1})", device=x.device))
        z_pos = chain_latents(model.infer(x, what=f"posterior Langevin (iteration {it + 1})"))
        # generator: maximise log p(x | z+)
        loss_g = -model.log_lik(x, z_pos).mean()
        optimizer_step(opt_g, loss_g, "the generator loss")
        # prior: E(z+) - E(z-) with E = -f
        f_pos, f_neg = prior.tilt(z_pos), prior.tilt(z_neg)
        loss_e = f_neg.mean() - f_pos.mean()
        if cfg.energy_l2 > 0:
            loss_e = loss_e + cfg.energy_l2 * (f_pos.pow(2).mean() + f_neg.pow(2).mean())
        optimizer_step(opt_e, loss_e, "the prior (energy) loss")
        return {"loss_g": loss_g.detach(), "loss_e": loss_e.detach(), "f_pos": f_pos.mean().detach(),
                "f_neg": f_neg.mean().detach(), "z_pos_norm": z_pos.norm(dim=1).mean(),
                "z_neg_norm": z_neg.norm(dim=1).mean()}

    hist = train_loop(ctx, data, epochs=cfg.epochs, batch_size=cfg.batch_size, step=step,
                      schedulers=[sched_g, sched_e], label="mle", log_every=cfg.log_every)
    return FitResult(model, hist)
