"""The Typer app, the options several commands share, and how results are printed."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ebmtool.config import PRECISIONS, PRESETS


app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="ebmtool: energy-based priors in the latent space of generator models. "
                       "Stages chain through safetensors artifacts. Langevin: z <- z + (s^2/2) grad log pi(z) + s*eps "
                       "(convention lebm; a chain with convention xiao-han reads s as z + (s/2) grad + sqrt(s)*eps).")


def _print_version(value: bool) -> None:
    if value:
        from ebmtool._version import __version__

        print(f"ebmtool {__version__}")
        raise typer.Exit()


@app.callback()
def _common(threads: str = typer.Option(
        "auto", "--threads", envvar="EBMTOOL_THREADS",
        help="CPU threads for torch's intra-op pool: N, or auto (default: the CPUs idle when the command starts, "
             "at most the physical cores; a thread that shares its core with another program slows every "
             "operation). Accepted before or after the command."),
        version: bool = typer.Option(False, "--version", is_eager=True, callback=_print_version,
                                     help="print the installed version and exit")) -> None:
    """Options for every command: ebmtool [--threads N|auto] [--version] COMMAND ..."""
    from ebmtool.runtime import set_threads

    set_threads(threads)


data_app = typer.Typer(no_args_is_help=True, help="Dataset artifacts.")
app.add_typer(data_app, name="data")

out_console = Console()

# ------------------------------------------------------------------------------------------------
# common options
# ------------------------------------------------------------------------------------------------
OutOpt = typer.Option(..., "-o", "--output", help="output artifact (.safetensors)")
ForceOpt = typer.Option(False, "--force", help="overwrite an existing output")
JsonOpt = typer.Option(False, "--json", help="print one JSON object on stdout")
QuietOpt = typer.Option(False, "--quiet", "-q", help="no progress bar or log lines on stderr (a bar is drawn only "
                        "when stderr is a terminal)")
SeedOpt = typer.Option(None, "--seed", help="random seed")
DeviceOpt = typer.Option(None, "--device", help="auto|cpu|cuda|cuda:N|mps")
_PRECISION_NOTES = {"fp32": "default, exact", "auto": "reduced only where native"}
PrecisionOpt = typer.Option(None, "--precision", help=" | ".join(
    f"{p} ({_PRECISION_NOTES[p]})" if p in _PRECISION_NOTES else p for p in sorted(PRECISIONS, key="fp32".__ne__)))
EvalPrecisionOpt = typer.Option("fp32", "--precision", help=" | ".join(
    f"{p} (default)" if p == "fp32" else p for p in sorted(PRECISIONS, key="fp32".__ne__)))
ModelOpt = typer.Option(..., "--model", help="model artifact")
EvalBatchOpt = typer.Option(500, "--batch-size", help="images run through the model at a time")
EvalSeedOpt = typer.Option(0, "--seed", help="random seed: the same seed, inputs and device give the same result "
                           "(under torchrun each rank draws its own stream from it)")
EvalDeviceOpt = typer.Option("auto", "--device", help="auto (CUDA if available, else CPU) | cpu | cuda | cuda:N | mps")
PresetOpt = typer.Option(None, "--preset", help=" | ".join(PRESETS) + " (see `ebmtool presets`)")
ConfigOpt = typer.Option(None, "--config", help="TOML file with config values (flags override it)")
SetOpt = typer.Option(None, "--set", help="any config field, e.g. --set posterior.steps=30 (repeatable)")
CkEveryOpt = typer.Option(0, "--checkpoint-every",
                          help="write a resumable checkpoint every N iterations (0: only on Ctrl-C/SIGTERM)")
CkOpt = typer.Option(None, "--checkpoint", help="checkpoint file (default: OUTPUT with .ckpt.safetensors)")
ResumeOpt = typer.Option(None, "--resume", help="continue from a checkpoint written by the same command")
TensorBoardOpt = typer.Option(None, "--tensorboard", help="DIR: TensorBoard scalars and a sample grid per epoch "
                              "(needs pip install -e '.\\[tensorboard]')")
SnapshotsOpt = typer.Option(None, "--snapshots", help="DIR: the model at each epoch end as DIR/epoch-NNN.safetensors "
                            "(learning curves; not for adaptive-nce/nce, whose stages are separate models)")
ScaleOpt = typer.Option(None, "--scale", help="upscale the PNG grid by this whole factor, nearest neighbour "
                        "(default: the least giving >= 256 px on the short side)")


def _finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by its name ("inf", "-inf", "nan"): strict JSON has no
    Infinity or NaN, and a value written by an older ebmtool (a config's ``sigma = 1e400``) may hold one."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def dumps(obj: Any) -> str:
    """The one JSON line of ``--json``: strict JSON (``allow_nan=False``; non-finite floats as strings)."""
    return json.dumps(_finite(obj), default=str, allow_nan=False)
def rounded(v: Any) -> Any:
    """``v`` with every float, also inside lists and dicts, to 4 significant digits (what the summary table shows;
    ``--json`` keeps full precision)."""
    if isinstance(v, float):
        return float(f"{v:.4g}")
    if isinstance(v, (list, tuple)):
        return type(v)(rounded(x) for x in v)
    if isinstance(v, dict):
        return {k: rounded(x) for k, x in v.items()}
    return v


def shown(v: Any) -> str:
    """A summary value as the table prints it: a float to 4 significant digits, a list or dict with its floats
    rounded alike (``nce_final_per_stage [1.398, 1.45]``, not ``1.398293823003769``)."""
    return f"{v:.4g}" if isinstance(v, float) else str(rounded(v))


def emit(result: dict[str, Any], as_json: bool, title: str) -> None:
    from ebmtool.distributed import world

    if not world().is_main:  # under torchrun rank 0 reports for all
        return
    if as_json:
        print(dumps(result))
        return
    t = Table(title=title, show_header=False)
    t.add_column("key", style="bold")
    t.add_column("value")
    for k, v in result.items():
        if v is None:
            continue
        t.add_row(k, shown(v))
    out_console.print(t)


def _s(p: Optional[Path]) -> Optional[str]:
    return None if p is None else str(p)
