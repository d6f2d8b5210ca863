"""The training methods, one file each. Importing this package imports every module in this folder (and every
``*.py`` file in the folders that the environment variable ``EBMTOOL_METHODS`` lists, separated like PATH), and
each registers itself in :data:`ebmtool.registry.METHODS` (its config class, fit function, presets and
``fit-prior`` flags), so a new method is one new file. Every fit function has the same contract::

    fit(cfg, data: TrainData, init: Model | None, init_art: Artifact | None, ctx: RunContext) -> FitResult
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import pkgutil
import sys
from pathlib import Path

from ebmtool.errors import UserError
from ebmtool.registry import METHODS, MethodSpec, register_method
from ebmtool.training import FitResult


def _import_folder(folder: Path) -> None:
    """Import every ``*.py`` file of an out-of-tree method folder as ``ebmtool_methods.<stem>``."""
    if not folder.is_dir():
        raise UserError(f"EBMTOOL_METHODS: {folder} is not a folder")
    for path in sorted(folder.glob("*.py")):
        name = f"ebmtool_methods.{path.stem}"
        if name in sys.modules:
            continue
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)


for _m in sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")):
    importlib.import_module(f"{__name__}.{_m}")
for _folder in filter(None, os.environ.get("EBMTOOL_METHODS", "").split(os.pathsep)):
    _import_folder(Path(_folder))

__all__ = ["METHODS", "MethodSpec", "FitResult", "register_method"]
