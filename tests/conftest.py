"""Shared helpers and session fixtures: tiny artifacts built once (digits data, a smoke generator, a 1-stage
adaptive-NCE model, an mle model), and two ways to run the CLI — in-process through ``ebmtool.cli.main`` (fast)
and as a real subprocess of the installed entry point (what a user runs)."""

from __future__ import annotations

import contextlib
import io
import os
import shutil
import subprocess
import sys
import traceback
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

torch.set_num_threads(1)  # the CI machines are small and shared: one intra-op thread is much faster there
# and the same for every CLI command the tests run (in-process ones would otherwise apply --threads auto)
os.environ.setdefault("EBMTOOL_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]
# The MNIST test set's IDX files: $MNIST_ROOT, by default ../shared/data/mnist beside the repository (CI clones);
# the tests that need them are skipped where they are absent.
SHARED_MNIST = Path(os.environ.get("MNIST_ROOT") or Path(__file__).parents[1].parent / "shared" / "data" / "mnist")
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def have_shared_mnist() -> bool:
    return (SHARED_MNIST / "t10k-images-idx3-ubyte.gz").is_file() and (SHARED_MNIST / "t10k-labels-idx1-ubyte.gz").is_file()


need_shared_mnist = pytest.mark.skipif(not have_shared_mnist(), reason=f"shared MNIST test set absent ({SHARED_MNIST})")


@pytest.hookimpl(optionalhook=True)  # a hook of pytest-xdist: without xdist (`-p no:xdist`, a GPU node) it is unused
def pytest_xdist_auto_num_workers(config):
    """``pytest -n auto`` (``make test``): as many workers as ``--threads auto`` would use threads, i.e. the CPUs
    idle when the run starts, at most the physical cores; each worker runs one intra-op thread (above).
    ``PYTEST_XDIST_AUTO_NUM_WORKERS`` set by the user wins, as in xdist itself."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS", "").strip().isdigit():
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    from ebmtool.runtime import auto_threads

    return auto_threads()[0]


# The files that take longest (measured on a 2-core AMD EPYC, `pytest --durations`), started first so that the
# parallel workers of `make test` (pytest-xdist, whole files per worker, --no-loadscope-reorder) finish together.
# Only the order depends on this list.
SLOWEST_FIRST = ["test_recipes.py", "test_readme_scores.py", "test_distributed.py", "test_wheelhouse.py",
                 "test_cli.py", "test_resume.py", "test_features.py", "test_registry.py"]


def pytest_collection_modifyitems(config, items):
    """The slowest files first (a stable sort; the order within a file is kept). Tests marked ``cuda`` skip where
    there is no CUDA device (``pytest -m cuda`` selects only them)."""
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("cuda") is not None:
            item.add_marker(skip)


@dataclass
class Run:
    code: int
    out: str
    err: str

    @property
    def err_lines(self) -> list[str]:
        return [ln for ln in self.err.splitlines() if ln.strip()]

    def ok(self) -> "Run":
        assert self.code == 0, f"exit {self.code}\nstdout:\n{self.out}\nstderr:\n{self.err}"
        return self


def run_cli(argv: list[str], cwd: Path | None = None) -> Run:
    """Run ``ebmtool ARGV`` in this process. An exception escaping ``main`` is reported as a traceback in ``err``
    (exit 1), exactly as Python would print it, so tests can assert that none escapes."""
    from ebmtool.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    old = Path.cwd()
    try:
        if cwd is not None:
            os.chdir(cwd)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                main([str(a) for a in argv])
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:  # noqa: BLE001 - reported like an uncaught exception
                err.write(traceback.format_exc())
                code = 1
    finally:
        os.chdir(old)
    return Run(code, out.getvalue(), err.getvalue())


def ebmtool_command() -> list[str]:
    exe = Path(sys.executable).parent / "ebmtool"
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "ebmtool"]


def save_sealed(tensors: dict[str, torch.Tensor], path, metadata: dict[str, str]) -> Path:
    """A hand-made artifact (any tensors, any metadata, e.g. NaN weights or an edited spec) with a valid integrity
    hash, as ``safetensors.torch.save_file`` would write it had ebmtool sealed it: tests of the checks that come
    after the hash. An ``ebmtool.sha256`` in ``metadata`` is replaced."""
    from ebmtool import artifacts

    md = {**metadata, artifacts.HASH_KEY: "0" * 64}
    Path(path).write_bytes(artifacts.seal(artifacts.save_bytes(tensors, md)))
    return Path(path)


def refused(r: Run, *words: str) -> str:
    """A user mistake as the project promises it: exit 2, one line on stderr starting ``ebmtool: error:`` that holds
    every word, no traceback. Returns the line."""
    assert r.code == 2, f"exit {r.code}\n{r.out}\n{r.err}"
    assert "Traceback" not in r.err and len(r.err_lines) == 1, r.err
    line = r.err_lines[0]
    assert line.startswith("ebmtool: error:"), line
    for w in words:
        assert w in line, (w, line)
    return line


def run_sub(argv: list[str], cwd: Path | None = None, timeout: float = 300, env: dict | None = None) -> Run:
    """Run ``ebmtool ARGV`` as a real subprocess of the installed entry point (``env``: extra variables)."""
    env = dict(os.environ, COLUMNS="200", **(env or {}))
    env.setdefault("OMP_NUM_THREADS", "1")  # small shared CI machines: one intra-op thread is much faster
    p = subprocess.run(ebmtool_command() + [str(a) for a in argv], cwd=cwd, capture_output=True, text=True,
                       timeout=timeout, env=env)
    return Run(p.returncode, p.stdout, p.stderr)


# ----------------------------------------------------------------------------------------------------------
# session artifacts (library calls: the CLI itself is tested elsewhere)
# ----------------------------------------------------------------------------------------------------------
TINY = {"posterior": {"steps": 5}, "epochs": 1}


@pytest.fixture(scope="session")
def assets(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("assets")


def _prepare(path: Path, **kw) -> Path:
    from ebmtool import stages
    from ebmtool.data import DataConfig

    stages.data_prepare(DataConfig(**kw), str(path))
    return path


def _train(method: str, data: Path, out: Path, init: Path | None = None, **flags) -> Path:
    from ebmtool import stages
    from ebmtool.config import deep_merge, resolve
    from ebmtool.methods import METHODS

    cfg = resolve(METHODS[method].config, method=method, preset="smoke", toml=None,
                  flags=deep_merge({"device": "cpu"}, flags))
    stages.train(method, cfg, str(data), str(out), init_path=str(init) if init else None, quiet=True)
    return out


@pytest.fixture(scope="session")
def digits_ds(assets) -> Path:
    """192 scikit-learn digits, 1x8x8, all ten classes."""
    return _prepare(assets / "digits.safetensors", dataset="digits", limit=192)


@pytest.fixture(scope="session")
def digits_other_ds(assets) -> Path:
    """Another digits dataset (different content from ``digits_ds``)."""
    return _prepare(assets / "digits-other.safetensors", dataset="digits", exclude_class=0, limit=150)


@pytest.fixture(scope="session")
def digits32_ds(assets) -> Path:
    """Digits resized to 32x32 (an image shape the 8x8 models do not make)."""
    return _prepare(assets / "digits32.safetensors", dataset="digits", size=32, limit=64)


@pytest.fixture(scope="session")
def gen_model(assets, digits_ds) -> Path:
    """A smoke pretrained generator (Gaussian prior, nz 8) on ``digits_ds``."""
    return _train("pretrain", digits_ds, assets / "gen.safetensors", **TINY)


@pytest.fixture(scope="session")
def nce_model(assets, digits_ds, gen_model) -> Path:
    """One adaptive-NCE stage on top of ``gen_model`` (carries a memory of posterior samples)."""
    return _train("adaptive-nce", digits_ds, assets / "nce1.safetensors", init=gen_model, stages=1,
                  posterior={"steps": 5})


@pytest.fixture(scope="session")
def mle_model(assets, digits_ds, gen_model) -> Path:
    return _train("mle", digits_ds, assets / "mle.safetensors", init=gen_model,
                  prior={"steps": 5}, **TINY)


@pytest.fixture
def fresh_copy(tmp_path):
    def copy(p: Path, name: str | None = None) -> Path:
        dst = tmp_path / (name or p.name)
        shutil.copyfile(p, dst)
        return dst

    return copy
