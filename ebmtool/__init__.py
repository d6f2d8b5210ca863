"""ebmtool: energy-based priors in the latent space of generator models.

Stages chain through safetensors artifacts (see :mod:`ebmtool.artifacts`); every
training method shares one Langevin sampler (:mod:`ebmtool.sampling`) and one
Prior interface (:mod:`ebmtool.priors`).

The Python API (docs/api.md) is re-exported here: :func:`load_model`, :func:`sample`, :func:`reconstruct`,
:func:`score`, :func:`fit_prior` and :func:`pretrain` (defined in :mod:`ebmtool.stages.api`). They are imported
on first use (PEP 562), so ``import ebmtool`` stays light: it imports ``ebmtool._version`` and nothing else, not
torch. The root is the package's face, the top layer: it may import any module, and no module imports it
(docs/design.md §1).
"""

from typing import TYPE_CHECKING, Any

from ebmtool._version import __version__

__all__ = ["__version__", "load_model", "sample", "reconstruct", "score", "fit_prior", "pretrain"]
_API = tuple(__all__[1:])

if TYPE_CHECKING:  # for type checkers and IDEs; at run time __getattr__ imports them on first use
    from ebmtool.stages.api import fit_prior, load_model, pretrain, reconstruct, sample, score


def __getattr__(name: str) -> Any:
    if name in _API:
        from ebmtool.stages import api

        value = getattr(api, name)
        globals()[name] = value  # later lookups skip this function
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
