"""Model artifacts: write a model's tensors, open one through its saved spec (which wins over presets)."""

from __future__ import annotations

import torch

from ebmtool import artifacts
from ebmtool.errors import UserError
from ebmtool.models.base import MODELS, Model, SpecError


def model_tensors(model: Model) -> dict[str, torch.Tensor]:
    return {k: v for k, v in model.state_dict().items()}


def load_model(path, what: str = "--model", device: str | torch.device = "cpu") -> tuple[Model, artifacts.Artifact]:
    """Open a model artifact through its saved spec (which wins over presets) and validate its tensors."""
    art = artifacts.load(path, "model", what=what)
    spec = art.meta.get("model")
    if not isinstance(spec, dict) or spec.get("type") not in MODELS:
        raise UserError(f"{art.path}: model artifact has no valid model spec")
    try:
        model = MODELS[spec["type"]].from_spec(spec)
    except SpecError as e:  # parts that contradict each other (prior.nz against generator.nz, ...)
        raise UserError(f"{art.path}: model spec is invalid: {e}") from None
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
