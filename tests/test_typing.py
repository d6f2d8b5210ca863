"""mypy finds ebmtool after the README's editable install and checks the docs' examples against its type hints
(issue 32 §4). The cause of 'Cannot find implementation or library stub for module named "ebmtool"' was the
editable install: setuptools wrote an import hook into the .pth file, which a type checker does not run;
pyproject.toml's ``package-dir`` makes it write the repository's path instead.

The test builds the editable wheel as ``pip install -e .`` does (the PEP 660 hook of the build backend), installs it
into a fresh virtual environment whose dependencies are this one's, and runs mypy from a folder outside the
repository, so the package can only be found through the install."""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.test_api_docs import python_blocks

REPO = Path(__file__).resolve().parents[1]
MYPY_INI = """[mypy]
plugins = pydantic.mypy
[mypy-torch.*]
follow_imports = skip
[mypy-sklearn.*]
ignore_missing_imports = True
"""
# pydantic's plugin reads the config classes' defaults (DataConfig(dataset="digits"), as docs/api.md says);
# torch's own sources are skipped (minutes to analyse; its types are then Any); scikit-learn ships no hints


def editable_install(tmp: Path) -> Path:
    """A virtual environment in ``tmp`` holding ebmtool as ``pip install -e REPO`` installs it; its python."""
    wheels = tmp / "wheels"
    wheels.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    subprocess.run([sys.executable, "-c", "import sys, setuptools.build_meta as b; b.build_editable(sys.argv[1])",
                    str(wheels)], cwd=REPO, env=env, check=True, capture_output=True, timeout=120)
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(tmp / "venv")], check=True, timeout=120)
    python = tmp / "venv" / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True, env=env).stdout.strip())
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # torch, numpy, ... of this venv
    (wheel,) = wheels.glob("ebmtool-*.whl")
    with zipfile.ZipFile(wheel) as z:
        z.extractall(site)
    return python


@pytest.mark.skipif(subprocess.run([sys.executable, "-c", "import mypy"], capture_output=True).returncode != 0,
                    reason="mypy is not installed (pip install -e '.[dev]')")
def test_mypy_finds_the_installed_package_and_checks_the_docs_examples(tmp_path):
    python = editable_install(tmp_path)
    site = python.parent.parent
    (pth,) = site.rglob("__editable__.ebmtool-*.pth")
    assert not pth.read_text().startswith("import"), "an import hook: type checkers cannot follow it"
    work = tmp_path / "outside"
    work.mkdir()
    (work / "mypy.ini").write_text(MYPY_INI)
    code = "\n".join(block for _, block in python_blocks())
    wrong = 'ebmtool.sample(model, "many")  # a str where the signature says int\n'
    (work / "api_examples.py").write_text(code + "\n" + wrong)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MYPYPATH")}
    r = subprocess.run([sys.executable, "-m", "mypy", "--python-executable", str(python), "--config-file", "mypy.ini",
                        "--cache-dir", str(tmp_path / "cache"), "api_examples.py"],
                       cwd=work, env=env, capture_output=True, text=True, timeout=300)
    lines = [ln for ln in r.stdout.splitlines() if ": error:" in ln]
    assert "Cannot find implementation" not in r.stdout, r.stdout
    n = code.count("\n") + 2
    assert lines == [f'api_examples.py:{n}: error: Argument 2 to "sample" has incompatible type "str"; expected '
                     '"int"  [arg-type]'], r.stdout + r.stderr
