"""Every list of datasets, generator architectures, methods, precisions and presets that the CLI shows or checks is
read from its registry: a toy dataset source, architecture and method, each registered in its one place, appear in
every help text and list, and are accepted by the checks (issue 34 §4)."""

from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

# A program that registers the toys where a new entry would be added (data/sources.py SOURCES, nets/generators.py
# GENERATORS, a method module's @register_method), then runs each command line of argv (split at "--next") through
# the CLI, as a user would with the toys in those files.
TOYS = r"""
import sys
import ebmtool.methods
from ebmtool.data.sources import SOURCES, load_digits
from ebmtool.nets.generators import GENERATORS
from ebmtool.registry import METHODS, register_method

SOURCES["toydigits"] = load_digits
GENERATORS.add("toy8", GENERATORS["digits8"])
register_method("toy-method", METHODS["mle"].config, "a toy method, registered at runtime")(METHODS["mle"].fit)

from ebmtool.cli import main

line = []
for a in sys.argv[1:] + ["--next"]:
    if a != "--next":
        line.append(a)
        continue
    print("=== " + " ".join(line), flush=True)
    try:
        main(line)
        code = 0
    except SystemExit as e:
        code = e.code
    print(f"(exit {code})", flush=True)
    line = []
"""


def run_toys(*lines: list[str], cwd) -> str:
    argv = [a for line in lines for a in [*line, "--next"]][:-1]
    env = dict(os.environ, COLUMNS="250", PYTHONPATH=str(REPO), EBMTOOL_THREADS="1")
    r = subprocess.run([sys.executable, "-c", TOYS, *argv], capture_output=True, text=True, cwd=cwd, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    return r.stdout + r.stderr


def test_a_registered_dataset_architecture_and_method_appear_in_every_list(tmp_path):
    out = run_toys(["data", "prepare", "--help"], ["fit-prior", "--help"], ["pretrain-generator", "--help"],
                   ["methods"], ["data", "prepare", "--dataset", "toydigits", "--limit", "200", "-o", "toy.safetensors"],
                   ["data", "prepare", "--dataset", "nope", "-o", "nope.safetensors"],
                   ["pretrain-generator", "--data", "toy.safetensors", "--preset", "smoke", "--arch", "vit", "-o",
                    "g.safetensors"],
                   ["fit-prior", "--method", "nope", "--data", "toy.safetensors", "-o", "m.safetensors"], cwd=tmp_path)
    part = dict(p.split("\n", 1) for p in out.split("=== ")[1:])
    assert "digits | mnist | svhn | cifar10 | celeba | synthetic | folder | array | toydigits" in part["data prepare --help"]
    for cmd in ("fit-prior --help", "pretrain-generator --help"):
        assert "| celeba64 | mnist28 | mnist28conv | general | toy8" in part[cmd]  # --arch
        assert "fp32 (default, exact) | auto (reduced only where native) | bf16 | fp16 | tf32" in part[cmd]
        assert "smoke | cpu | paper (see `ebmtool presets`)" in part[cmd]
    assert "toy-method" in part["fit-prior --help"] and "toy-method" in part["methods"]
    assert (tmp_path / "toy.safetensors").is_file() and "(exit 0)" in part[next(k for k in part if "toydigits" in k)]
    bad = {k: v for k, v in part.items() if "nope" in k or "vit" in k}
    assert len(bad) == 3 and all("(exit 2)" in v for v in bad.values())
    said = "\n".join(bad.values())
    assert "'array' or 'toydigits'" in said and "'general' or 'toy8'" in said  # the checks read them too
    assert "toy-method" in said.split("--method: unknown method")[1]
