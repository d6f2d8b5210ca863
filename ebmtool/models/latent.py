"""The latent-variable model x = g(z_1) + N(0, sigma^2 I), z ~ any :class:`~ebmtool.priors.Prior`: its densities,
posterior inference (the one Langevin sampler, or an inference network where the method trains one), the verbs,
hierarchical sampling of multi-layer priors, and the builders the training methods share.

On disk: tensors ``generator.*``, ``prior.*``, ``encoder.*`` and meta ``model`` = the JSON spec that rebuilds the
modules (the saved spec wins over any preset on load).
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn

from ebmtool.config import GeneratorSpec, Langevin
from ebmtool.errors import UserError
from ebmtool.models.base import Model, SampleOutput, bottom, check_spec, register_model
from ebmtool.nets.encoders import encoder_from_spec
from ebmtool.nets.generators import GENERATORS, Generator, resolve_arch
from ebmtool.priors import JointPrior, Prior, prior_from_spec
from ebmtool.priors.joint import _take
from ebmtool.sampling import ChainResult, Latent, langevin


@register_model("latent")
class LatentModel(Model):
    """x = g(z_1) + N(0, sigma^2 I), z ~ prior. log p(x, z) = -||x - g(z)||^2 / (2 sigma^2) + log p(z)."""

    def __init__(self, generator: Generator, prior: Prior, sigma: float, image_shape, *,
                 inference: Langevin, sampling: Langevin, sampler: str = "langevin",
                 encoder: nn.Module | None = None, method: str = "?"):
        super().__init__()
        self.generator, self.prior, self.encoder = generator, prior, encoder
        self.sigma = float(sigma)
        self.image_shape = tuple(image_shape)
        self.inference, self.sampling, self.sampler = inference, sampling, sampler
        self.method = method

    # --- densities ----------------------------------------------------------------------------
    def log_lik(self, x: torch.Tensor, z: Latent) -> torch.Tensor:
        """log p(x|z) up to a constant, per example (B,)."""
        return -(x - self.generator(bottom(z))).pow(2).flatten(1).sum(1) / (2 * self.sigma**2)

    def log_joint(self, x: torch.Tensor, z: Latent) -> torch.Tensor:
        return self.log_lik(x, z) + self.prior.log_prob(z)

    # --- posterior ----------------------------------------------------------------------------
    def infer(self, x: torch.Tensor, chain: Langevin | None = None, z0: Latent | None = None,
              record_every: int = 0, what: str = "posterior Langevin", refine: bool = False) -> ChainResult:
        """Posterior samples: short-run Langevin on log p(x, z) from the prior's chain start (or z0), or the encoder
        if trained; ``refine``: with an encoder, run the chain from the encoder's sample
        (``--steps``/``--step-size``). The caller decides what a diverged chain means (``ChainResult.finite``)."""
        if self.encoder is not None and z0 is None:
            with torch.no_grad():
                z_enc = self.encoder.sample(x)
            if not refine:
                return ChainResult(z_enc, what="the encoder q(z|x)")
            z0 = z_enc
        chain = chain or self.inference
        z0 = self.prior.chain_start(len(x), x.device) if z0 is None else z0
        return langevin(lambda z: self.log_joint(x, z), z0, chain.steps, chain.effective_step_size(), noise=chain.noise,
                        freeze=[self], record_every=record_every, what=what)

    # --- the verbs ----------------------------------------------------------------------------
    def sample(self, n: int, *, steps=None, step_size=None, sampler=None, record_every: int = 0):
        if self.prior.is_base and (steps is not None or step_size is not None or sampler is not None):
            given = "/".join(o for o, v in (("--steps", steps), ("--step-size", step_size), ("--sampler", sampler))
                             if v is not None)
            what = "its Gaussian hierarchy" if getattr(self.prior, "layers", 1) > 1 else "N(0, I)"
            raise UserError(f"{given}: a {self.method} model's prior is {what}, drawn exactly "
                            "(there is no prior chain)")
        ch = self.sampling.override(steps, step_size)
        res = self.prior.sample(n, steps=ch.steps, step_size=ch.effective_step_size(), sampler=sampler or self.sampler,
                                device=_device_of(self), record_every=record_every)
        z, traj = res.checked(), res.trajectory
        with torch.no_grad():
            x = self.generator(bottom(z))
        return SampleOutput(x, z, traj)

    def reconstruct(self, x, *, steps=None, step_size=None, noise=None):
        # an explicit chain (--steps/--step-size/--noise) refines an encoder's z instead of being ignored
        refine = steps is not None or step_size is not None or noise is not None
        z = self.infer(x, self.inference.override(steps, step_size, noise), refine=refine).checked()
        with torch.no_grad():
            return self.generator(bottom(z)), z

    def anomaly_score(self, x, *, steps=None, step_size=None, noise=None):
        """-log p(x, z) at a posterior sample z (docs/design.md §5): higher = more anomalous."""
        return sum(self.score_terms(x, steps=steps, step_size=step_size, noise=noise).values())

    def score_chain(self, steps=None, step_size=None, noise=None):
        if self.encoder is not None and steps is None and step_size is None and noise is None:
            return {"inference": "encoder"}
        ch = self.inference.override(steps, step_size, noise)
        return {"inference": "encoder + posterior Langevin" if self.encoder is not None else "posterior Langevin",
                **ch.model_dump(), "effective_step_size": ch.effective_step_size()}

    def score_terms(self, x, *, steps=None, step_size=None, noise=None):
        """-log p(x, z) at one posterior sample z, up to constants, as three (B,) terms that sum to it:
        ``recon`` = ||x - g(z)||^2 / (2 sigma^2) (= -log p(x|z)), ``tilt`` = -f(z) (or -sum_k log r_k(z)),
        ``base`` = -log p0(z) (||z||^2/2 under N(0, I))."""
        refine = steps is not None or step_size is not None or noise is not None
        z = self.infer(x, self.inference.override(steps, step_size, noise), refine=refine).checked()
        with torch.no_grad():
            return {"recon": -self.log_lik(x, z), "tilt": -self.prior.tilt(z), "base": -self.prior.base_log_prob(z)}

    # --- serialisation ------------------------------------------------------------------------
    def spec(self):
        g = self.generator
        return {
            "type": self.type_name, "method": self.method, "sigma": self.sigma, "image_shape": list(self.image_shape),
            "generator": g.spec(),
            "prior": self.prior.spec(),
            "inference": self.inference.model_dump(), "sampling": self.sampling.model_dump(), "sampler": self.sampler,
            "encoder": self.encoder.spec() if self.encoder is not None else None,
        }

    @classmethod
    def from_spec(cls, spec):
        g = Generator(**spec["generator"])
        if not 0 < float(spec["sigma"]) < float("inf"):
            raise ValueError(f"sigma must be a positive number, got {spec['sigma']!r}")
        prior = prior_from_spec(spec["prior"])
        encoder = encoder_from_spec(spec["encoder"]) if spec.get("encoder") else None
        shape = check_spec(spec["image_shape"], {})
        parts = {"prior.nz": (prior.nz, g.nz), "generator.channels": (g.channels, shape[0]),
                 f"the {g.arch} generator's image size": (g.size, shape[1]), "image_shape width": (shape[2], shape[1])}
        if encoder is not None and hasattr(encoder, "dims"):
            parts["encoder.dims"] = (list(encoder.dims), list(getattr(prior, "dims", [prior.nz])))
            parts["encoder.image_shape"] = (list(encoder.image_shape), list(shape))
        check_spec(shape, parts)
        return cls(g, prior, spec["sigma"], shape,
                   inference=Langevin.stored(**spec["inference"]), sampling=Langevin.stored(**spec["sampling"]),
                   sampler=spec.get("sampler", "langevin"), encoder=encoder, method=spec.get("method", "?"))



def _device_of(m: nn.Module) -> torch.device:
    return next(m.parameters()).device


def hierarchical_sample(model: LatentModel, n: int, keep: int, *, group: int = 8, steps: int | None = None,
                        step_size: float | None = None, sampler: str | None = None) -> SampleOutput:
    """``sample --layer-resample K``: n images in groups of ``group`` consecutive samples (one grid row each);
    a group shares one prior sample of layer K (drawn by ``sampler``, default the model's) and resamples the other
    layers by Langevin (:meth:`JointPrior.resample_layers`). Chains use the model's sampling settings unless
    ``steps`` / ``step_size`` are given."""
    prior = getattr(model, "prior", None)
    if not isinstance(prior, JointPrior):
        raise UserError(f"--layer-resample: needs a multi-layer (joint-mle / joint-vi) model, "
                        f"not a {model.method} model")
    if not 1 <= keep <= prior.layers:
        raise UserError(f"--layer-resample {keep}: the model has {prior.layers} latent layers "
                        f"(1 = bottom .. {prior.layers} = top)")
    # no energy terms (ebm=false): the heads are drawn exactly, and given the top layer so is the rest
    if prior.is_base:
        exact = [o for o, v in (("--sampler", sampler),) + ((("--steps", steps), ("--step-size", step_size))
                                                           if keep == prior.layers else ()) if v is not None]
        if exact:
            raise UserError(f"{'/'.join(exact)}: a {model.method} model without energy terms draws these layers "
                            "exactly (there is no prior chain)")
    ch = model.sampling.override(steps, step_size)
    device = next(model.parameters()).device
    heads = prior.sample(math.ceil(n / group), steps=ch.steps, step_size=ch.effective_step_size(),
                         sampler=sampler or model.sampler, device=device).checked()
    rows = _take(heads, torch.arange(n, device=device) // group)  # (n, d_i) per layer, row r = head r // group
    z = prior.resample_layers(rows, keep, ch.steps, ch.effective_step_size()).checked()
    with torch.no_grad():
        return SampleOutput(model.generator(z[0]), z)



# ------------------------------------------------------------------------------------------------
# builders shared by the training methods
# ------------------------------------------------------------------------------------------------
def generator_for(spec: GeneratorSpec, image_shape, init: Optional[Model], init_path=None) -> Generator:
    """A fresh generator for the data's image shape, or the one of ``--init`` (its saved spec wins)."""
    if init is not None:
        if not isinstance(init, LatentModel):
            raise UserError(f"--init {init_path}: a {init.method} model has no latent generator to start from")
        if tuple(init.image_shape) != tuple(image_shape):
            raise UserError(f"--init {init_path}: model makes {tuple(init.image_shape)} images but --data holds "
                            f"{tuple(image_shape)}")
        return init.generator
    arch = resolve_arch(spec.arch, image_shape)
    return Generator(arch, spec.nz, spec.ngf, image_shape[0], spec.slope,
                     size=image_shape[1] if GENERATORS[arch].general else None)


def latent_model(gen: Generator, prior: Prior, sigma: float, image_shape, *, posterior: Langevin,
                 sampling: Langevin, sampler: str = "langevin", method: str, encoder=None) -> LatentModel:
    return LatentModel(gen, prior, sigma, image_shape, inference=posterior, sampling=sampling,
                       sampler=sampler, encoder=encoder, method=method)
