"""Pydantic configs shared by every stage, presets as data, and the layering rule.

A stage's resolved config is: class defaults < ``--preset`` < ``--config FILE.toml`` < command-line flags.
Unknown keys and wrong types are refused (``extra="forbid"``) with one line naming the key.
The resolved config is written into every artifact (``ebmtool.config``).
"""

from __future__ import annotations

import copy
import json
import math
import numbers
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import PydanticCustomError

from ebmtool.errors import UserError
from ebmtool.registry import GENERATORS

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli is the same parser (a dependency there)
    import tomli as tomllib


class Strict(BaseModel):
    """The base of every config: unknown keys refused, every value checked where the config is made (also on
    assignment), in strict mode (``true`` is not the integer 1, ``2.5`` or ``1e14`` not an integer, a string not a
    number) and finite (``1e400`` and ``Infinity`` are refused). Made directly (``DataConfig(dataset=...)`` in the
    Python API), a wrong value raises :class:`~ebmtool.errors.UserError` with the one line :func:`build` writes."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, strict=True, allow_inf_nan=False)

    def __init__(self, **data: Any) -> None:
        try:
            super().__init__(**data)
        except ValidationError as e:
            raise UserError(validation_line(e, type(self).__name__)) from None

    # pydantic's own mark of a base __init__: validation of nested configs does not go through this one (so a nested
    # error keeps its full location, opt_g.lr), only a config made directly does
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as e:
            raise UserError(validation_line(e, type(self).__name__)) from None


# ---------------------------------------------------------------------------------------------
# Limits (docs/usage.md, "Limits"): a value beyond them is refused in one line where it is given, before any memory is
# taken, instead of overflowing a C type or asking the machine for terabytes.
# ---------------------------------------------------------------------------------------------
MAX_SEED = 2**63 - 1  # --seed: 0 .. 2^63 - 1 (torch's generators take 64 bits; per-rank seeds are taken mod 2^63)
MAX_STEP_SIZE = 1e3  # a Langevin step s: 0 < s <= 1000 (the papers use 0.1 to 0.4; s^2/2 overflows fp32 near 2.6e19)
MAX_LATENT = 4096  # a latent layer's dimension (nz, nz_top): the papers use 100 to 200
MAX_HIDDEN = 8192  # width of an MLP layer (energy, ratio, conditional and encoder MLPs): the papers use 100 to 200
MAX_LAYERS = 64  # hidden layers of one MLP, and latent layers of a joint prior
MAX_CHANNELS = 1024  # base channel width of a convolutional net (ngf, nef, ndf): the papers use 32 to 128
MAX_SAMPLES = 1_000_000  # images per sample command or call (all are held in memory; FID takes 50,000)


# The two ways the papers write one Langevin step (docs/design.md §3). ebmtool has one sampler, in the LEBM form;
# a chain written in another form is converted to that sampler's step size by Langevin.effective_step_size().
LANGEVIN_CONVENTIONS: dict[str, str] = {
    "lebm": "z <- z + (s^2/2) grad log pi + s*eps (the LEBM code; ebmtool's sampler)",
    "xiao-han": "z <- z + (s/2) grad log pi + sqrt(s)*eps (adaptive-NCE paper, eq. 3): the LEBM form at sqrt(s)",
}
LangevinConvention = Literal["lebm", "xiao-han"]


class Langevin(Strict):
    """Short-run Langevin chain. ``step_size`` is read in ``convention``: "lebm" (default)
    z <- z + (s^2/2) grad log pi(z) + s * eps, or "xiao-han" z <- z + (s/2) grad log pi(z) + sqrt(s) * eps; both run
    on the one sampler at :meth:`effective_step_size`. Training chains and the chains a model stores for evaluation
    (its spec) are both this class."""

    steps: int = Field(20, ge=1, description="number of Langevin steps")
    step_size: float = Field(0.1, gt=0, le=MAX_STEP_SIZE, description="s, read in `convention`")
    noise: bool = True
    convention: LangevinConvention = Field(
        "lebm", description="how step_size is read: lebm = z + s^2/2 grad + s eps | "
                            "xiao-han = z + s/2 grad + sqrt(s) eps (the same sampler at step sqrt(s))")

    @classmethod
    def stored(cls, steps: int, step_size: float, noise: bool = True, convention: str = "lebm") -> "Langevin":
        """A chain a model keeps for evaluation (from its saved spec, or BiDVL's optional image-space refinement):
        0 steps, no chain, is allowed there, unlike in a training config. A spec without ``convention`` (written
        before the field existed) is "lebm"."""
        if convention not in LANGEVIN_CONVENTIONS:
            raise ValueError(f"unknown Langevin convention {convention!r} "
                             f"(choose from {', '.join(LANGEVIN_CONVENTIONS)})")
        return cls.model_construct(steps=int(steps), step_size=float(step_size), noise=bool(noise),
                                   convention=convention)

    def effective_step_size(self) -> float:
        """The step size of the one sampler (:func:`ebmtool.sampling.langevin`, LEBM form) that runs this chain:
        ``step_size`` for "lebm", sqrt(``step_size``) for "xiao-han" ((s/2) grad + sqrt(s) eps is
        (t^2/2) grad + t eps at t = sqrt(s)). The one place a convention is converted."""
        return math.sqrt(self.step_size) if self.convention == "xiao-han" else self.step_size

    def override(self, steps: Optional[int] = None, step_size: Optional[float] = None,
                 noise: Optional[bool] = None) -> "Langevin":
        """This chain with ``--steps`` / ``--step-size`` / ``--noise|--no-noise`` where given (``--step-size`` is
        read in this chain's convention)."""
        return self.model_copy(update={k: v for k, v in (("steps", steps), ("step_size", step_size), ("noise", noise))
                                       if v is not None})


class GeneratorSpec(Strict):
    arch: Annotated[str, registered(GENERATORS, also=("auto",))] = "auto"  # auto: by image size
    nz: int = Field(100, ge=1, le=MAX_LATENT)
    ngf: int = Field(64, ge=1, le=MAX_CHANNELS)
    slope: float = Field(0.2, ge=0)


class EnergySpec(Strict):
    """Energy / ratio MLP d -> hidden x layers -> 1 (returns f = -energy)."""

    hidden: int = Field(200, ge=1, le=MAX_HIDDEN)
    layers: int = Field(2, ge=1, le=MAX_LAYERS)
    slope: float = Field(0.2, ge=0)


class Optim(Strict):
    lr: float = Field(1e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    decay: float = Field(1.0, gt=0, le=1, description="learning-rate factor per epoch (ExponentialLR)")
    weight_decay: float = Field(0.0, ge=0, description="Adam L2 weight decay")


DEVICE_FORMS = "auto, cpu, cuda, cuda:N, mps"


def one_of(names) -> str:
    """``'a', 'b' or 'c'``: a list of choices in pydantic's words for a Literal."""
    q = [f"'{n}'" for n in names]
    return q[0] if len(q) == 1 else ", ".join(q[:-1]) + " or " + q[-1]


def registered(registry: dict, also: tuple[str, ...] = ()) -> AfterValidator:
    """A field's check: the value is a name of ``registry`` or one of ``also``. The registry is read when a value is
    checked, so every entry counts, also one registered after this module was imported (the one list is the
    registry). An empty registry (its module, in a higher layer, not imported yet) leaves the check to its users."""
    def check(v: str) -> str:
        if registry and v not in also and v not in registry:
            raise PydanticCustomError("literal_error", "Input should be {choices}",
                                      {"choices": one_of([*also, *registry])})
        return v

    return AfterValidator(check)


def _device_name(v: str) -> str:
    """Every device form torch takes here (whether the device exists is checked when a stage runs)."""
    if not re.fullmatch(r"auto|cpu|mps|cuda(:[0-9]+)?", v):
        raise PydanticCustomError("device", "unknown device '{v}' ({forms})", {"v": v, "forms": DEVICE_FORMS})
    return v


PRECISIONS = ("auto", "fp32", "bf16", "fp16", "tf32")  # the one list of --precision choices (runtime resolves them)


class StageCommon(Strict):
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Annotated[str, AfterValidator(_device_name)] = Field("auto", description=DEVICE_FORMS)
    precision: Literal[PRECISIONS] = Field(  # type: ignore[valid-type]
        "fp32", description="fp32 (exact, default) | auto (reduced only where native) | bf16 | fp16 | tf32")


class TrainCommon(StageCommon):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(100, ge=1)
    sigma: float = Field(0.3, gt=0, description="observation noise std of p(x|z)")
    log_every: int = Field(0, ge=0, description="print a loss line every N iterations (0: per epoch only)")


# ---------------------------------------------------------------------------------------------
# Presets as data: for each preset a one-line description and the settings common to every training method
# ("common"; keys a method lacks are skipped). A method's own overrides live with its registry entry.
# ---------------------------------------------------------------------------------------------

PRESETS: dict[str, dict[str, Any]] = {
    "smoke": {
        "description": "seconds on a CPU: tiny nets, 2 epochs, short chains (tests, demos of the plumbing)",
        "common": {
            "epochs": 2,
            "batch_size": 64,
            "generator": {"nz": 8, "ngf": 16},
            "energy": {"hidden": 32},
            "posterior": {"steps": 10},
            "prior": {"steps": 15},
            "opt_g": {"lr": 1e-3},
        },
    },
    "cpu": {
        "description": "a 2-core CPU in minutes per model: small nets (nz 16, ngf 32), 20 epochs, "
                       "10x the papers' learning rates (they run ~100x more iterations)",
        "common": {
            "epochs": 20,
            "batch_size": 100,
            "generator": {"nz": 16, "ngf": 32},
            "energy": {"hidden": 200},
            "opt_g": {"lr": 1e-3},
        },
    },
    "paper": {
        "description": "the papers' settings (GPU): full-size generators, paper epochs and chain lengths",
        "common": {"epochs": 100, "batch_size": 100, "generator": {"nz": 100, "ngf": 64}},
    },
}


def deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _only_known(cls: type[BaseModel], d: dict[str, Any]) -> dict[str, Any]:
    """Keep the keys of ``d`` that ``cls`` has (recursively for nested configs)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        f = cls.model_fields.get(k)
        if f is None:
            continue
        ann = f.annotation
        if isinstance(v, dict) and isinstance(ann, type) and issubclass(ann, BaseModel):
            out[k] = _only_known(ann, v)
        else:
            out[k] = v
    return out


def preset_overrides(preset: str | None, method: str, cls: type[BaseModel]) -> dict[str, Any]:
    if preset is None:
        return {}
    if preset not in PRESETS:
        raise UserError(f"--preset: unknown preset {preset!r} (choose from {', '.join(PRESETS)})")
    from ebmtool.registry import METHODS

    own = METHODS[method].presets.get(preset, {}) if method in METHODS else {}
    return deep_merge(_only_known(cls, PRESETS[preset].get("common", {})), own)


def read_toml(path: str | Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: config file not found")
    if not p.is_file():  # a folder, a FIFO (reading it would block), a device
        raise UserError(f"{p}: config path is not a regular file")
    try:
        return tomllib.loads(p.read_text())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UserError(f"{p}: not a valid TOML file ({str(e).splitlines()[0]})") from None


M = TypeVar("M", bound=BaseModel)


def validation_line(e: ValidationError, where: str) -> str:
    """A pydantic error as the one line of a :class:`UserError`, naming the key (the first error)."""
    err = e.errors()[0]
    loc = ".".join(str(x) for x in err["loc"]) or "(root)"
    if err["type"] == "extra_forbidden":
        return f"{where}: unknown key {loc!r}"
    if not err["loc"]:  # a check across fields (a model validator): its message says what; the input is the
        return f"{where}: {err['msg'].removeprefix('Value error, ')}"  # whole config, too long for the one line
    return f"{where}: {loc}: {err['msg']} (got {err.get('input')!r})"


def build(cls: type[M], *layers: dict[str, Any], where: str = "config") -> M:
    """Merge layers left to right and validate; errors become one line naming the key."""
    d: dict[str, Any] = {}
    for layer in layers:
        d = deep_merge(d, layer)
    try:
        return cls.model_validate(d)
    except ValidationError as e:
        raise UserError(validation_line(e, where)) from None


def nested_defaults(cls: type[BaseModel]) -> dict[str, Any]:
    """The defaults of ``cls``'s nested-config fields as dicts. Merged first, so that a layer setting one
    sub-field (``prior.steps``) keeps the method's own default for the others (mle's ``prior.step_size`` 0.4),
    not the sub-config class's default."""
    return {name: f.default.model_dump() for name, f in cls.model_fields.items() if isinstance(f.default, BaseModel)}


def resolve(
    cls: type[M], *, method: str, preset: str | None, toml: str | Path | None, flags: dict[str, Any],
    toml_values: Optional[dict[str, Any]] = None, toml_name: str | Path | None = None,
) -> M:
    """defaults < preset < TOML < flags (``toml_values``: the TOML file ``toml_name`` already read)."""
    name = toml if toml is not None else toml_name
    return build(
        cls,
        nested_defaults(cls),
        preset_overrides(preset, method, cls),
        read_toml(toml) if toml_values is None else toml_values,
        {k: v for k, v in flags.items() if v is not None},
        where=f"{method} config" if name is None else f"{method} config ({name})",
    )


def resolve_typed(cls: type[M], *, method: str, preset: str | None, toml: str | Path | None,
                  options: dict[str, tuple[Any, str]], sets: Optional[list[str]]
                  ) -> tuple[M, dict[str, dict[str, tuple[Any, str]]]]:
    """Resolve a config once from what the user typed: ``options`` {config field: (value or None, option name)},
    ``--set`` items and the ``--config`` TOML file (each read once). Returns the config (defaults < preset < TOML <
    options < --set) and the fields the user set, by section: {section: {field: (value, how it was set)}}, in the
    same order of precedence, for the checks a run from ``--init`` makes."""
    toml_vals, set_vals = read_toml(toml), parse_sets(sets)
    opt_vals = nested({k: v for k, (v, _) in options.items()})
    cfg = resolve(cls, method=method, preset=preset, toml=None, flags=deep_merge(opt_vals, set_vals),
                  toml_values=toml_vals, toml_name=toml)
    asked: dict[str, dict[str, tuple[Any, str]]] = {}
    for section, vals in toml_vals.items():
        for f, v in (vals.items() if isinstance(vals, dict) else ()):
            asked.setdefault(section, {})[f] = (v, f"{toml}: [{section}] {f} = {v}")
    for key, (v, opt) in options.items():
        if v is not None and "." in key:
            section, f = key.split(".", 1)
            asked.setdefault(section, {})[f] = (v, f"{opt} {v}")
    for section, vals in set_vals.items():
        for f, v in (vals.items() if isinstance(vals, dict) else ()):
            asked.setdefault(section, {})[f] = (v, f"--set {section}.{f}={v}")
    return cfg, asked


def parse_sets(items: Optional[list[str]]) -> dict[str, Any]:
    """--set a.b=value -> {"a": {"b": value}}; values parsed as JSON where possible (numbers, true/false)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set {item!r}: expected KEY=VALUE")
        key, raw = item.split("=", 1)
        try:
            val = json.loads(raw)
        except json.JSONDecodeError:
            val = raw
        d = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
            if not isinstance(d, dict):
                raise UserError(f"--set {item!r}: {p!r} was already set to a value, not a group of fields")
        d[parts[-1]] = val
    return out


def nested(flags: dict[str, Any]) -> dict[str, Any]:
    """{"posterior.steps": 30, "epochs": None} -> {"posterior": {"steps": 30}} (None = not given)."""
    out: dict[str, Any] = {}
    for key, v in flags.items():
        if v is None:
            continue
        d = out
        parts = key.split(".")
        for p in parts[:-1]:
            d = d.setdefault(p, {})
        d[parts[-1]] = v
    return out


# ---------------------------------------------------------------------------------------------
# The options of the evaluation stages (sample, reconstruct, anomaly) and of the Python API (ebmtool.sample,
# ebmtool.reconstruct, ebmtool.score): one check for both doors, so they cannot drift apart.
# ---------------------------------------------------------------------------------------------
SAMPLERS = ("langevin", "sir")

# how each option is named at each door: the CLI's flag, the API's keyword
OPTION_NAMES: dict[str, tuple[str, str]] = {
    "n": ("-n", "n"), "steps": ("--steps", "steps"), "step_size": ("--step-size", "step_size"),
    "noise": ("--noise/--no-noise", "noise"), "sampler": ("--sampler", "sampler"),
    "batch_size": ("--batch-size", "batch_size"), "seed": ("--seed", "seed"), "limit": ("--limit", "limit"),
    "scale": ("--scale", "scale"), "trajectory_every": ("--trajectory", "trajectory_every"),
    "layer_resample": ("--layer-resample", "layer_resample"), "precision": ("--precision", "precision"),
}
# the least value of each whole-number option (and the most, where there is one)
_WHOLE: dict[str, tuple[int, Optional[int]]] = {
    "n": (1, MAX_SAMPLES), "steps": (1, None), "batch_size": (1, None), "seed": (0, MAX_SEED), "limit": (1, None),
    "scale": (1, None), "trajectory_every": (0, None), "layer_resample": (1, None),
}

_REQUIRED = {"n", "batch_size", "trajectory_every"}  # the others' None means: not given


def _is_whole(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def check_options(door: Literal["cli", "api"] = "cli", **values: Any) -> None:
    """Refuse, in one line naming the option as this ``door`` spells it (``--step-size`` / ``step_size``), any
    evaluation option that is the wrong type or out of range. ``values``: the options given, by their API name
    (:data:`OPTION_NAMES`); None means not given (the model's own setting, no seed, every image), except for ``n``,
    ``batch_size`` and ``trajectory_every``, which have no default there. Whole numbers
    must be ints (not ``True``, not ``2.5``); ``step_size`` a finite number in (0, MAX_STEP_SIZE]; ``noise`` a
    bool; ``sampler`` one of :data:`SAMPLERS`; ``precision`` one of :data:`PRECISIONS`;
    ``n`` at most :data:`MAX_SAMPLES`; ``seed`` 0 .. :data:`MAX_SEED`."""
    for key, v in values.items():
        if key not in OPTION_NAMES:
            raise TypeError(f"check_options: unknown option {key!r}")
        name = OPTION_NAMES[key][0 if door == "cli" else 1]
        if v is None and key in _REQUIRED:
            raise UserError(f"{name}: expected a whole number, got None")
        if v is None:
            continue
        if key in _WHOLE:
            lo, hi = _WHOLE[key]
            if not _is_whole(v):
                raise UserError(f"{name}: expected a whole number, got {v!r}")
            if key == "n" and v < 1:
                raise UserError(f"{name}: the number of samples must be at least 1")
            if v < lo:
                raise UserError(f"{name} {v}: must be at least {lo}")
            if key == "n" and v > MAX_SAMPLES:
                more = ("per command (they are all held in memory; draw several files with different --seed for more)"
                        if door == "cli" else "per call (they are all held in memory; draw several batches with "
                        "different seeds for more)")
                raise UserError(f"{name} {v}: at most {MAX_SAMPLES:,} samples {more}")
            if hi is not None and v > hi:
                raise UserError(f"{name} {v}: must be at most {hi}")
        elif key == "step_size":
            if not isinstance(v, numbers.Real) or isinstance(v, bool):
                raise UserError(f"{name}: expected a number, got {v!r}")
            if not (math.isfinite(v) and 0 < v <= MAX_STEP_SIZE):
                raise UserError(f"{name} {v}: must be a number in (0, {MAX_STEP_SIZE:g}]")
        elif key == "noise":
            if not isinstance(v, bool):
                raise UserError(f"{name}: expected True or False, got {v!r}")
        elif key == "precision":
            if not isinstance(v, str) or v not in PRECISIONS:
                raise UserError(f"{name}: unknown precision {v!r} (choose from {', '.join(PRECISIONS)})")
        elif key == "sampler":
            if not isinstance(v, str) or v not in SAMPLERS:
                raise UserError(f"{name}: unknown sampler {v!r} ({' | '.join(SAMPLERS)})")
