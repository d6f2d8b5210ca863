"""ebmtool: energy-based priors in the latent space of generator models.

Stages chain through safetensors artifacts (see :mod:`ebmtool.artifacts`); every
training method shares one Langevin sampler (:mod:`ebmtool.sampling`) and one
Prior interface (:mod:`ebmtool.priors`).
"""

__version__ = "0.1.0"
