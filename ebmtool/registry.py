"""The one registry of ebmtool (fairseq style): named classes or entries of one kind, refused twice or of the
wrong type. Priors, models and encoders register their classes here; training methods register a
:class:`MethodSpec` (config class, fit function, presets, ``fit-prior`` flags) through :func:`register_method`.

Methods are found from their folder: importing :mod:`ebmtool.methods` imports every module in it, so a new
method is one new file (see ``docs/design.md``, "Adding a method").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Generic, Optional, TypeVar

T = TypeVar("T")


class Registry(dict, Generic[T]):
    """{name: entry} for one kind of thing; ``register(name)`` is a class decorator that sets ``type_name``."""

    def __init__(self, kind: str, base: Optional[type] = None):
        super().__init__()
        self.kind, self.base = kind, base

    def add(self, name: str, entry: T) -> T:
        if name in self:
            raise ValueError(f"{self.kind} {name!r} registered twice")
        if self.base is not None and isinstance(entry, type) and not issubclass(entry, self.base):
            raise TypeError(f"{self.kind} {name!r}: {entry.__name__} is not a {self.base.__name__}")
        self[name] = entry
        return entry

    def register(self, name: str) -> Callable[[type], type]:
        def deco(cls: type) -> type:
            self.add(name, cls)
            cls.type_name = name
            return cls

        return deco

    def from_spec(self, spec: dict[str, Any]) -> Any:
        """Rebuild an object from its saved JSON spec (``type`` names the registered class)."""
        t = spec.get("type")
        if t not in self:
            raise KeyError(f"unknown {self.kind} type {t!r}")
        return self[t].from_spec(spec)


@dataclass(frozen=True)
class Flag:
    """A ``fit-prior`` option that sets one config field of the methods that declare it, e.g.
    ``Flag("--stages", "stages", int, "adaptive-nce: stages to add")``; a bool flag is ``"--offset/--no-offset"``."""

    option: str
    field: str
    type: type
    help: str

    @property
    def param(self) -> str:
        return self.option.split("/")[0].lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Kept:
    """A config section that a run from ``--init`` takes from the init model instead of the config: its fields are
    read from the init's saved spec under ``spec_key`` (default: the section's name; a dotted key such as
    ``prior.energy`` reads a part nested in another). ``when``: only if that part of the init (for a dotted key,
    its outermost part) has this ``type`` (e.g. an LEBM prior is continued, a Gaussian one is replaced by a new
    energy); without it the section must be there, or the init is not a model this method continues."""

    section: str
    spec_key: Optional[str] = None
    when: Optional[str] = None


GENERATOR_KEPT = (Kept("generator"),)


@dataclass
class MethodSpec:
    name: str
    config: type
    fit: Callable[..., Any]
    description: str
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # {preset: overrides of this method}
    flags: tuple[Flag, ...] = ()
    fit_prior: bool = True  # listed under fit-prior --method
    # config sections a run from --init takes from the init model (see Kept)
    kept_from_init: tuple[Kept, ...] = GENERATOR_KEPT
    # whether the model tracked for checkpoints is the whole model at every epoch end (``--snapshots``); adaptive
    # NCE adds a stage's ratio only when the stage ends
    snapshots: bool = True


METHODS: Registry[MethodSpec] = Registry("method")
# generator architectures by name (ebmtool.nets.generators fills it; the config checks --arch against it)
GENERATORS: Registry[Any] = Registry("generator")


def register_method(name: str, config: type, description: str, *, presets: Optional[dict[str, dict]] = None,
                    flags: tuple[Flag, ...] = (), fit_prior: bool = True,
                    kept_from_init: tuple[Kept, ...] = GENERATOR_KEPT, snapshots: bool = True):
    """Decorator for a method's fit function: ``fit(cfg, data, init, init_art, ctx) -> FitResult``."""
    from pydantic import BaseModel

    if not (isinstance(config, type) and issubclass(config, BaseModel)):
        raise TypeError(f"method {name!r}: config must be a pydantic model class")

    def deco(fn):
        METHODS.add(name, MethodSpec(name, config, fn, description, dict(presets or {}), tuple(flags), fit_prior,
                                     tuple(kept_from_init), snapshots))
        return fn

    return deco
