"""ebmtool: energy-based priors in the latent space of generator models.

Stages chain through safetensors artifacts (see :mod:`ebmtool.artifacts`); every
training method shares one Langevin sampler (:mod:`ebmtool.sampling`) and one
Prior interface (:mod:`ebmtool.priors`).
"""

from importlib.metadata import PackageNotFoundError, version

try:  # the installed distribution's version (pyproject.toml), the one `ebmtool --version` prints
    __version__ = version("ebmtool")
except PackageNotFoundError:  # a source tree on sys.path without an install
    __version__ = "0+unknown"
