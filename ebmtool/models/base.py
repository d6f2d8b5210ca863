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


MODELS: Registry[type[Model]] = Registry("model", Model)
register_model = MODELS.register


def bottom(z: Latent) -> torch.Tensor:
    """The latent the generator reads: z itself, or z_1 of a multi-layer latent (z_1, ..., z_L)."""
    return z[0] if isinstance(z, tuple) else z


