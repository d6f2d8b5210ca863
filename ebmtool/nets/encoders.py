"""Inference networks (encoders) q(z|x). Each answers ``sample(x) -> latents`` and ``spec()``;
the registry rebuilds one from its saved spec."""

from __future__ import annotations

from typing import Any

from torch import nn

ENCODERS: dict[str, type[nn.Module]] = {}


def register_encoder(name: str):
    def deco(cls):
        if name in ENCODERS:
            raise ValueError(f"encoder {name!r} registered twice")
        cls.type_name = name
        ENCODERS[name] = cls
        return cls

    return deco


def encoder_from_spec(spec: dict[str, Any]) -> nn.Module:
    t = spec.get("type")
    if t not in ENCODERS:
        raise KeyError(f"unknown encoder type {t!r}")
    return ENCODERS[t].from_spec(spec)
