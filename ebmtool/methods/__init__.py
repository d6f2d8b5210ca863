"""Method registry (fairseq style): each training method registers its name, pydantic config and fit function.

``fit-prior --method`` choices and help are built from :data:`METHODS`; a new method touches one file.
Every fit function has the same contract::

    fit(cfg, data: TrainData, init: Model | None, init_art: Artifact | None, ctx: RunContext) -> FitResult
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from pydantic import BaseModel

from ebmtool.methods.common import History

METHODS: dict[str, "MethodSpec"] = {}


@dataclass
class FitResult:
    model: Any  # ebmtool.models.Model
    history: History
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)  # extra tensors (memory, per-stage losses)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass
class MethodSpec:
    name: str
    config: type[BaseModel]
    fit: Callable[..., FitResult]
    description: str
    fit_prior: bool = True  # listed under fit-prior --method


def register_method(name: str, config: type[BaseModel], description: str, fit_prior: bool = True):
    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise TypeError(f"method {name!r}: config must be a pydantic model class")

    def deco(fn):
        if name in METHODS:
            raise ValueError(f"method {name!r} registered twice")
        METHODS[name] = MethodSpec(name, config, fn, description, fit_prior)
        return fn

    return deco


for _m in ("pretrain", "mle", "adaptive_nce", "joint", "bidvl"):
    try:
        importlib.import_module(f"ebmtool.methods.{_m}")
    except ModuleNotFoundError as e:  # a method file not written yet must not break the others
        if e.name != f"ebmtool.methods.{_m}":
            raise
