"""Model artifacts and the verbs every evaluation stage uses, whatever method trained the model.

A model answers ``sample``, ``reconstruct`` and ``anomaly_score``. :class:`LatentModel` is a generator
x = g(z) + N(0, sigma^2 I) with any :class:`~ebmtool.priors.Prior`; its posterior is inferred by the one
Langevin sampler (or by an inference network where the method trains one). Other model types (BiDVL)
register themselves in :data:`MODEL_TYPES`.

On disk: tensors ``generator.*``, ``prior.*``, ``encoder.*``, ... and meta ``model`` = the JSON spec that
rebuilds the modules (the saved spec wins over any preset on load).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ebmtool import artifacts
from ebmtool.errors import UserError
from ebmtool.nets.generators import Generator
from ebmtool.priors import Prior, prior_from_spec
from ebmtool.sampling import Latent, Trajectory, langevin

MODEL_TYPES: dict[str, type["Model"]] = {}


def register_model(name: str):
    def deco(cls):
        if name in MODEL_TYPES:
            raise ValueError(f"model type {name!r} registered twice")
        cls.type_name = name
        MODEL_TYPES[name] = cls
        return cls

    return deco


@dataclass
class Chain:
    """Langevin settings used at evaluation time (the one convention, see ebmtool.sampling)."""

    steps: int
    step_size: float
    noise: bool = True

    def override(self, steps: Optional[int] = None, step_size: Optional[float] = None) -> "Chain":
        return Chain(steps if steps is not None else self.steps,
                     step_size if step_size is not None else self.step_size, self.noise)


@dataclass
class SampleOutput:
    images: torch.Tensor  # (N, C, H, W) in [-1, 1]
    latents: Latent | None
    trajectory: Trajectory | None = None


class Model(nn.Module):
    type_name = "model"
    image_shape: tuple[int, int, int]
    method: str = "?"

    # The verbs take exactly the options the stages pass; a model honours each one or refuses it with a UserError
    # (never a **kwargs that swallows it).
    def sample(self, n: int, *, steps: Optional[int] = None, step_size: Optional[float] = None,
               sampler: Optional[str] = None, record_every: int = 0) -> SampleOutput:
        raise NotImplementedError

    def reconstruct(self, x: torch.Tensor, *, steps: Optional[int] = None, step_size: Optional[float] = None
                    ) -> tuple[torch.Tensor, Latent | None]:
        raise NotImplementedError

    def anomaly_score(self, x: torch.Tensor, *, steps: Optional[int] = None, step_size: Optional[float] = None
                      ) -> torch.Tensor:
        raise NotImplementedError

    def score_terms(self, x: torch.Tensor, *, steps: Optional[int] = None, step_size: Optional[float] = None
                    ) -> dict[str, torch.Tensor]:
        """The anomaly score split into its terms, each (B,), summing to ``anomaly_score`` (one term here)."""
        return {"score": self.anomaly_score(x, steps=steps, step_size=step_size)}

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Model":
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        return {"type": self.type_name, "method": self.method}


def bottom(z: Latent) -> torch.Tensor:
    """The latent the generator reads: z itself, or z_1 of a multi-layer latent (z_1, ..., z_L)."""
    return z[0] if isinstance(z, tuple) else z


@register_model("latent")
class LatentModel(Model):
    """x = g(z_1) + N(0, sigma^2 I), z ~ prior. log p(x, z) = -||x - g(z)||^2 / (2 sigma^2) + log p(z)."""

    def __init__(self, generator: Generator, prior: Prior, sigma: float, image_shape, *,
                 inference: Chain, sampling: Chain, sampler: str = "langevin",
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
    def infer(self, x: torch.Tensor, chain: Chain | None = None, z0: Latent | None = None,
              record_every: int = 0, what: str = "posterior Langevin", refine: bool = False
              ) -> tuple[Latent, Trajectory | None]:
        """Posterior samples: short-run Langevin on log p(x, z) from p0 (or z0), or the encoder if trained;
        ``refine``: with an encoder, run the chain from the encoder's sample (``--steps``/``--step-size``)."""
        if self.encoder is not None and z0 is None:
            with torch.no_grad():
                z_enc = self.encoder.sample(x)
            if not refine:
                return z_enc, None
            z0 = z_enc
        chain = chain or self.inference
        z0 = self.prior.base_sample(len(x), x.device) if z0 is None else z0
        return langevin(lambda z: self.log_joint(x, z), z0, chain.steps, chain.step_size, noise=chain.noise,
                        freeze=[self], record_every=record_every, what=what)

    # --- the verbs ----------------------------------------------------------------------------
    def sample(self, n: int, *, steps=None, step_size=None, sampler=None, record_every: int = 0):
        if self.prior.is_base and (steps is not None or step_size is not None or sampler is not None):
            given = "/".join(o for o, v in (("--steps", steps), ("--step-size", step_size), ("--sampler", sampler))
                             if v is not None)
            raise UserError(f"{given}: a {self.method} model's prior is N(0, I), drawn exactly (there is no prior chain)")
        ch = self.sampling.override(steps, step_size)
        z, traj = self.prior.sample(n, steps=ch.steps, step_size=ch.step_size, sampler=sampler or self.sampler,
                                    device=_device_of(self), record_every=record_every)
        with torch.no_grad():
            x = self.generator(bottom(z))
        return SampleOutput(x, z, traj)

    def reconstruct(self, x, *, steps=None, step_size=None):
        # an explicit chain (--steps/--step-size) refines an encoder's z instead of being ignored
        refine = steps is not None or step_size is not None
        z, _t = self.infer(x, self.inference.override(steps, step_size), refine=refine)
        with torch.no_grad():
            return self.generator(bottom(z)), z

    def anomaly_score(self, x, *, steps=None, step_size=None):
        """-log p(x, z) at a posterior sample z (DESIGN §5): higher = more anomalous."""
        return sum(self.score_terms(x, steps=steps, step_size=step_size).values())

    def score_terms(self, x, *, steps=None, step_size=None):
        """-log p(x, z) at one posterior sample z, up to constants, as three (B,) terms that sum to it:
        ``recon`` = ||x - g(z)||^2 / (2 sigma^2) (= -log p(x|z)), ``tilt`` = -f(z) (or -sum_k log r_k(z)),
        ``base`` = -log p0(z) (||z||^2/2 under N(0, I))."""
        refine = steps is not None or step_size is not None
        z, _t = self.infer(x, self.inference.override(steps, step_size), refine=refine)
        with torch.no_grad():
            return {"recon": -self.log_lik(x, z), "tilt": -self.prior.tilt(z), "base": -self.prior.base_log_prob(z)}

    # --- serialisation ------------------------------------------------------------------------
    def spec(self):
        g = self.generator
        return {
            "type": self.type_name, "method": self.method, "sigma": self.sigma, "image_shape": list(self.image_shape),
            "generator": {"arch": g.arch, "nz": g.nz, "ngf": g.ngf, "channels": g.channels, "slope": g.slope},
            "prior": self.prior.spec(),
            "inference": vars(self.inference), "sampling": vars(self.sampling), "sampler": self.sampler,
            "encoder": self.encoder.spec() if self.encoder is not None else None,
        }

    @classmethod
    def from_spec(cls, spec):
        from ebmtool.nets.encoders import encoder_from_spec

        g = Generator(**spec["generator"])
        if not 0 < float(spec["sigma"]) < float("inf"):
            raise ValueError(f"sigma must be a positive number, got {spec['sigma']!r}")
        return cls(g, prior_from_spec(spec["prior"]), spec["sigma"], spec["image_shape"],
                   inference=Chain(**spec["inference"]), sampling=Chain(**spec["sampling"]),
                   sampler=spec.get("sampler", "langevin"),
                   encoder=encoder_from_spec(spec["encoder"]) if spec.get("encoder") else None,
                   method=spec.get("method", "?"))

    def describe(self):
        d = super().describe()
        d.update(generator=self.generator.arch, nz=self.generator.nz, prior=self.prior.spec())
        return d


def _device_of(m: nn.Module) -> torch.device:
    return next(m.parameters()).device


# ------------------------------------------------------------------------------------------------
# artifact I/O
# ------------------------------------------------------------------------------------------------
def model_tensors(model: Model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


def load_model(path, what: str = "--model", device: str | torch.device = "cpu") -> tuple[Model, artifacts.Artifact]:
    """Open a model artifact through its saved spec (which wins over presets) and validate its tensors."""
    import ebmtool.methods  # noqa: F401  (registers every model type and prior)

    art = artifacts.load(path, "model", what=what)
    spec = art.meta.get("model")
    if not isinstance(spec, dict) or spec.get("type") not in MODEL_TYPES:
        raise UserError(f"{art.path}: model artifact has no valid model spec")
    try:
        model = MODEL_TYPES[spec["type"]].from_spec(spec)
    except (KeyError, TypeError, ValueError, RuntimeError, ArithmeticError) as e:  # e.g. a size < 1 in the spec
        first = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"{art.path}: model spec is invalid ({type(e).__name__}: {first})") from None
    sd = {k: v for k, v in art.tensors.items() if k.split(".")[0] in dict(model.named_children())}
    own = model.state_dict()
    for k, v in sd.items():  # load_state_dict would silently cast (an int32 or float16 weight is a damaged file)
        if k in own and v.dtype != own[k].dtype:
            raise UserError(f"{art.path}: tensor {k!r} is {v.dtype}, the model spec's is {own[k].dtype}")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise UserError(f"{art.path}: tensors do not fit the model spec ({first})") from None
    return model.to(device).eval(), art
