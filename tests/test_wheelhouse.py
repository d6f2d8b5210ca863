"""Issue 22, item 7: a GPU node with no internet whose Python already holds torch. `make wheelhouse` (for this
machine's Python) gives wheels of every dependency but torch/torchvision; they install with `--no-index --no-deps
--target SITE` beside a Python that holds only torch (and torch's own dependencies), and with PYTHONPATH=SITE that
Python imports ebmtool, runs the CLI, and passes benchmarks/gpu_check.py's package check; without SITE, gpu_check.py
names the first missing package (pydantic: torchvision brings numpy and pillow) in one line.

The node's Python is simulated by a fresh venv (no pip, nothing installed) whose site-packages holds symlinks to this
venv's torch, torchvision and their dependencies. Needs the package index (skipped where `pip download` cannot reach
it) and Linux. The wheels stay in wheelhouse/cpXY-PLATFORM/ (ignored): later runs only re-resolve (~30 s)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import venv
from importlib import metadata
from pathlib import Path

import pytest
import torch

from conftest import REPO

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the wheelhouse test runs on Linux only")


def _pip(*args: str, timeout: float, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=timeout, **kw)


@pytest.fixture(scope="module")
def wheelhouse(tmp_path_factory) -> Path:
    probe = tmp_path_factory.mktemp("probe")
    try:
        p = _pip("download", "--no-deps", "--only-binary=:all:", "--retries", "0", "--timeout", "15", "-q", "-d",
                 str(probe), "iniconfig", timeout=90)
    except subprocess.TimeoutExpired:
        pytest.skip("pip download cannot reach the package index (timed out)")
    if p.returncode != 0:
        last = [ln for ln in p.stderr.splitlines() if ln.strip()][-1:] or ["no output"]
        pytest.skip(f"pip download cannot reach the package index: {last[0][:200]}")
    cmd = (["make", "-s", "wheelhouse", f"WHEEL_PY={sys.executable}"] if shutil.which("make")
           else [sys.executable, "scripts/wheelhouse.py"])
    absent = [n for n in ("build", "ebmtool.egg-info") if not (REPO / n).exists()]
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout + p.stderr
    # ebmtool's wheel is built from a copy: nothing is written into the checkout other workers import from
    assert not [n for n in absent if (REPO / n).exists()], "make wheelhouse built in the source tree"
    m = re.search(r"wheelhouse: \d+ wheels .* in (\S+)$", p.stdout.strip())
    assert m, p.stdout
    dest = Path(m.group(1))
    assert dest.parent == REPO / "wheelhouse" and (dest / "requirements.txt").is_file()
    return dest


def _closure(name: str, seen: set[str]) -> None:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    key = canonicalize_name(name)
    if key in seen:
        return
    seen.add(key)
    for r in metadata.distribution(name).requires or []:
        req = Requirement(r)
        if req.marker is None or req.marker.evaluate({"extra": ""}):
            _closure(req.name, seen)


@pytest.fixture(scope="module")
def node_python(tmp_path_factory) -> Path:
    """A Python whose site-packages holds torch, torchvision and their dependencies, and nothing else."""
    root = tmp_path_factory.mktemp("node") / "py"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(root)
    py = root / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    dists: set[str] = set()
    for name in ("torch", "torchvision"):
        _closure(name, dists)
    for name in dists:
        d = metadata.distribution(name)
        base = Path(d.locate_file(""))
        for top in {Path(f).parts[0] for f in d.files or [] if not str(f).startswith("..")}:
            if (base / top).exists() and not (site / top).exists():
                (site / top).symlink_to(base / top)
    return py


def test_wheelhouse_installs_offline_beside_the_nodes_torch(wheelhouse, node_python, tmp_path):
    reqs = (wheelhouse / "requirements.txt").read_text()
    names = {ln.split("==")[0].lower() for ln in reqs.splitlines() if ln and not ln.startswith("#")}
    assert {"ebmtool", "pydantic", "pydantic_core", "pytorch-fid", "typer", "pytest"} <= names
    assert not {n for n in names if n in ("torch", "torchvision", "triton") or n.startswith("nvidia")}
    target = tmp_path / "site"
    # the node-side install (docs/gpu_node.md), --no-compile only to keep the test short
    p = _pip("install", "--no-index", "--no-deps", "--no-compile", "-q", "--find-links", str(wheelhouse), "--target",
             str(target), "-r", str(wheelhouse / "requirements.txt"), timeout=300)
    assert p.returncode == 0, p.stderr
    assert not (target / "torch").exists() and (target / "ebmtool").is_dir()

    env = dict(os.environ, PYTHONPATH=str(target), PYTHONDONTWRITEBYTECODE="1")
    env.pop("PYTHONHOME", None)

    def run(*args: str, timeout: float = 120, **kw) -> subprocess.CompletedProcess:
        return subprocess.run([str(node_python), *args], capture_output=True, text=True, timeout=timeout,
                              cwd=tmp_path, **{"env": env, **kw})

    p = run("-c", "import ebmtool, pydantic, torch; print(ebmtool.__file__); print(pydantic.__file__); "
                  "print(torch.__file__)")
    assert p.returncode == 0, p.stderr
    eb, pd, th = p.stdout.split()
    assert eb.startswith(str(target)) and pd.startswith(str(target)) and not th.startswith(str(target))
    p = run("-m", "ebmtool", "--version")
    assert p.returncode == 0 and p.stdout.strip() == "ebmtool 0.1.0", p.stdout + p.stderr
    out = tmp_path / "digits.safetensors"
    p = run("-m", "ebmtool", "data", "prepare", "--dataset", "digits", "--limit", "20", "-o", str(out), "--json")
    assert p.returncode == 0 and out.is_file(), p.stderr

    gpu_check = str(REPO / "benchmarks" / "gpu_check.py")
    results = tmp_path / "g.json"
    p = run(gpu_check, "--out", str(results), timeout=180)
    if torch.cuda.is_available():
        assert "missing package" not in p.stderr, p.stderr
    else:  # every package importable: it goes on to the CUDA test, one line
        assert p.returncode == 2 and "no CUDA device" in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr
    bare = {k: v for k, v in env.items() if k != "PYTHONPATH"}
    p = run(gpu_check, "--out", str(results), env=bare)
    assert p.returncode == 2 and p.stdout == "", p.stdout + p.stderr
    assert p.stderr.strip() == "gpu_check: missing package pydantic (install the wheelhouse: see docs/gpu_node.md)", p.stderr
