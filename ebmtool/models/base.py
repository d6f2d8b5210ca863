"""The Model interface: the verbs every evaluation stage uses, whatever method trained the model, and the
registry of model types (:data:`MODELS`). A model answers ``sample``, ``reconstruct`` and ``anomaly_score`` and
serialises itself as a JSON ``spec`` plus a state dict."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import nn

from ebmtool.registry import Registry
from ebmtool.sampling import Latent, Trajectory

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

    def reconstruct(self, x: torch.Tensor, *, steps: Optional[int] = None, step_size: Optional[float] = None,
                    noise: Optional[bool] = None) -> tuple[torch.Tensor, Latent | None]:
        raise NotImplementedError

    def anomaly_score(self, x: torch.Tensor, *, steps: Optional[int] = None, step_size: Optional[float] = None,
                      noise: Optional[bool] = None) -> torch.Tensor:
        raise NotImplementedError

    def score_terms(self, x: torch.Tensor, *, steps: Optional[int] = None, step_size: Optional[float] = None,
                    noise: Optional[bool] = None) -> dict[str, torch.Tensor]:
        """The anomaly score split into its terms, each (B,), summing to ``anomaly_score`` (one term here)."""
        return {"score": self.anomaly_score(x, steps=steps, step_size=step_size, noise=noise)}

    def score_chain(self, steps: Optional[int] = None, step_size: Optional[float] = None,
                    noise: Optional[bool] = None) -> Optional[dict[str, Any]]:
        """The chain settings :meth:`score_terms` / :meth:`reconstruct` run with these overrides, as recorded in an
        output artifact (None: the model runs no chain for them)."""
        return None

    def spec(self) -> dict[str, Any]:
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec: dict[str, Any]) -> "Model":
        raise NotImplementedError


class SpecError(ValueError):
    """A model spec whose parts contradict each other (raised by ``from_spec``; on load, one line naming the file)."""


def check_spec(image_shape: Any, parts: dict[str, tuple[Any, Any]]) -> tuple[int, int, int]:
    """``image_shape`` as (C, H, W) of positive ints, and every ``{what: (value, expected)}`` equal, else
    :class:`SpecError` naming the first contradiction."""
    if not (isinstance(image_shape, (list, tuple)) and len(image_shape) == 3
            and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in image_shape)):
        raise SpecError(f"image_shape {image_shape!r} is not [channels, height, width]")
    for what, (value, expected) in parts.items():
        if value != expected:
            raise SpecError(f"{what} is {value} but should be {expected}")
    return tuple(image_shape)  # type: ignore[return-value]


MODELS: Registry[type[Model]] = Registry("model", Model)
register_model = MODELS.register


def bottom(z: Latent) -> torch.Tensor:
    """The latent the generator reads: z itself, or z_1 of a multi-layer latent (z_1, ..., z_L)."""
    return z[0] if isinstance(z, tuple) else z


