"""Builders used by several methods: the generator (fresh or from ``--init``) and the latent model."""

from __future__ import annotations

from typing import Optional

from ebmtool.config import GeneratorSpec, Langevin
from ebmtool.errors import UserError
from ebmtool.models import Chain, LatentModel, Model
from ebmtool.nets.generators import Generator, resolve_arch
from ebmtool.priors import Prior


def generator_for(spec: GeneratorSpec, image_shape, init: Optional[Model], init_path=None) -> Generator:
    """A fresh generator for the data's image shape, or the one of ``--init`` (its saved spec wins)."""
    if init is not None:
        if not isinstance(init, LatentModel):
            raise UserError(f"--init {init_path}: a {init.method} model has no latent generator to start from")
        if tuple(init.image_shape) != tuple(image_shape):
            raise UserError(f"--init {init_path}: model makes {tuple(init.image_shape)} images but --data holds {tuple(image_shape)}")
        return init.generator
    arch = resolve_arch(spec.arch, image_shape)
    return Generator(arch, spec.nz, spec.ngf, image_shape[0], spec.slope)


def chain(c: Langevin) -> Chain:
    return Chain(c.steps, c.step_size, c.noise)


def latent_model(gen: Generator, prior: Prior, sigma: float, image_shape, *, posterior: Langevin,
                 sampling: Langevin, sampler: str = "langevin", method: str, encoder=None) -> LatentModel:
    return LatentModel(gen, prior, sigma, image_shape, inference=chain(posterior), sampling=chain(sampling),
                       sampler=sampler, encoder=encoder, method=method)
