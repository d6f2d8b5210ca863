"""``pretrain-generator``: generator learning with short-run posterior inference under N(0, I) (ABP/SRI).

Per batch: z+ ~ short-run Langevin on log N(z; 0, I) + log p(x|z) from p0; one Adam step on
-log p(x|z+) = ||x - g(z+)||^2 / (2 sigma^2). This is the "0 stages" model of the adaptive-NCE ablation.
"""

from __future__ import annotations


from ebmtool.config import GeneratorSpec, Langevin, Optim, TrainCommon
from ebmtool.registry import register_method
from ebmtool.training import FitResult, chain_latents, adam, optimizer_step, train_loop
from ebmtool.models.latent import generator_for, latent_model
from ebmtool.priors import GaussianPrior


class PretrainConfig(TrainCommon):
    generator: GeneratorSpec = GeneratorSpec()
    posterior: Langevin = Langevin(steps=20, step_size=0.1)
    opt_g: Optim = Optim(lr=1e-4, decay=0.998)
    sampling: Langevin = Langevin(steps=100, step_size=0.1)


@register_method("pretrain", PretrainConfig, "generator under N(0, I) with short-run posterior Langevin",
                 fit_prior=False)
def fit(cfg: PretrainConfig, data, init, init_art, ctx) -> FitResult:
    gen = generator_for(cfg.generator, data.image_shape, init, init_art and init_art.path)
    model = latent_model(gen, GaussianPrior(gen.nz), cfg.sigma, data.image_shape, posterior=cfg.posterior,
                         sampling=cfg.sampling, method="pretrain").to(ctx.device)
    opt, sched = adam(model.generator.parameters(), cfg.opt_g)
    ctx.ckpt.track(model=model, opt_g=opt, sched_g=sched)

    def step(idx, x, it):
        z = chain_latents(model.infer(x, what=f"posterior Langevin (iteration {it + 1})"))
        loss = -model.log_lik(x, z).mean()
        optimizer_step(opt, loss, "the generator loss")
        return {"loss_g": loss.detach(), "mse": (loss.detach() * 2 * cfg.sigma**2 / x[0].numel())}

    hist = train_loop(ctx, data, epochs=cfg.epochs, batch_size=cfg.batch_size, step=step, schedulers=[sched],
                      label="pretrain", log_every=cfg.log_every)
    return FitResult(model, hist)
