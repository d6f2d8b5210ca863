"""A method in one file, outside the package: the generator under N(0, I) fitted with a noise-free posterior
chain of ``--toy-steps`` steps. Registering it (config, fit, preset, flag) touches no other file."""

from ebmtool.config import GeneratorSpec, Langevin, Optim, TrainCommon
from ebmtool.models.latent import generator_for, latent_model
from ebmtool.priors import GaussianPrior
from ebmtool.registry import Flag, register_method
from ebmtool.training import FitResult, chain_latents, adam, optimizer_step, train_loop


class ToyConfig(TrainCommon):
    generator: GeneratorSpec = GeneratorSpec()
    posterior: Langevin = Langevin(steps=5, step_size=0.1, noise=False)
    opt_g: Optim = Optim(lr=1e-4)


@register_method("toy", ToyConfig, "toy: generator under N(0, I), noise-free posterior chain (one-file method)",
                 presets={"smoke": {"opt_g": {"lr": 3e-3}}},
                 flags=(Flag("--toy-steps", "posterior.steps", int, "toy: posterior Langevin steps"),))
def fit(cfg: ToyConfig, data, init, init_art, ctx) -> FitResult:
    gen = generator_for(cfg.generator, data.image_shape, init, init_art and init_art.path)
    model = latent_model(gen, GaussianPrior(gen.nz), cfg.sigma, data.image_shape, posterior=cfg.posterior,
                         sampling=cfg.posterior, method="toy").to(ctx.device)
    opt, sched = adam(model.generator.parameters(), cfg.opt_g)
    ctx.ckpt.track(model=model, opt_g=opt, sched_g=sched)

    def step(idx, x, it):
        z = chain_latents(model.infer(x))
        loss = -model.log_lik(x, z).mean()
        optimizer_step(opt, loss, "the generator loss")
        return {"loss_g": loss.detach()}

    return FitResult(model, train_loop(ctx, data, epochs=cfg.epochs, batch_size=cfg.batch_size, step=step,
                                       schedulers=[sched], label="toy"))
