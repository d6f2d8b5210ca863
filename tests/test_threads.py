"""--threads: auto by default (the CPUs idle at the start, at most the physical cores), honoured before or after
the command, a wrong value refused in one line."""

from __future__ import annotations

import pytest
import torch

from ebmtool import runtime
from ebmtool.cli import hoist_threads

from conftest import run_cli


@pytest.fixture
def fresh_auto(monkeypatch):
    """auto_threads measures once per process: forget the measurement, and restore the thread count after."""
    before = torch.get_num_threads()
    monkeypatch.setattr(runtime, "_AUTO_THREADS", None)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    yield
    runtime._AUTO_THREADS = None
    torch.set_num_threads(before)


@pytest.mark.parametrize("usable,phys,busy,want", [
    (2, 2, 0.05, 2),   # idle 2-core machine: both cores (no worse than before)
    (2, 2, 1.0, 1),    # one core held by another program: one thread, not two that wait on each other
    (2, 2, 1.9, 1),    # everything busy: still one
    (8, 4, 0.0, 4),    # SMT: never more than the physical cores
    (8, 4, 5.6, 2),    # a busy workstation: the idle CPUs, rounded
])
def test_auto_uses_the_idle_cpus_up_to_the_physical_cores(monkeypatch, fresh_auto, usable, phys, busy, want):
    monkeypatch.setattr(runtime, "usable_cpus", lambda: usable)
    monkeypatch.setattr(runtime, "physical_cores", lambda: phys)
    monkeypatch.setattr(runtime, "busy_cpus", lambda interval=0.2: busy)
    n, why = runtime.set_threads("auto")
    assert n == want and torch.get_num_threads() == want and f"{busy:.1f} busy" in why


def test_auto_honours_omp_num_threads(monkeypatch, fresh_auto):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setattr(runtime, "busy_cpus", lambda interval=0.2: 0.0)
    assert runtime.set_threads("auto") == (1, "auto: OMP_NUM_THREADS is set")
    assert runtime.set_threads("2")[0] == 2  # an explicit count wins


@pytest.mark.serial
def test_busy_cpus_sees_a_busy_loop(fresh_auto):
    """Ground truth: a process spinning on one core is counted as (about) one busy CPU."""
    import subprocess
    import sys

    if not __import__("os").path.exists("/proc/stat"):
        pytest.skip("no /proc/stat")
    idle = runtime.busy_cpus(0.3)
    if idle > runtime.usable_cpus() - 1:
        pytest.skip(f"{idle:.1f} CPUs already busy: no idle core to measure a busy loop on")
    # the loop says when it spins (no guess at how long a loaded machine takes to start Python)
    p = subprocess.Popen([sys.executable, "-c", "print('spinning', flush=True)\nwhile True: pass"],
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().strip() == "spinning"
        busy = runtime.busy_cpus(0.5)
    finally:
        p.kill()
        p.wait()
    # the baseline: the quieter of the measurements before and after the loop, so that other work that happened to
    # run in one of them (and not during the loop) does not pass for the loop's missing share
    after = runtime.busy_cpus(0.3)
    assert busy >= min(idle, after) + 0.6, (idle, busy, after)


def test_threads_after_the_command_is_honoured():
    assert hoist_threads(["inspect", "--threads", "1", "f.safetensors"]) == ["--threads", "1", "inspect", "f.safetensors"]
    assert hoist_threads(["--threads", "2", "inspect", "f"]) == ["--threads", "2", "inspect", "f"]
    assert hoist_threads(["data", "prepare", "--threads=1", "--dataset", "digits"]) == [
        "--threads=1", "data", "prepare", "--dataset", "digits"]


def test_threads_option_on_the_command_line(tmp_path, fresh_auto):
    out = tmp_path / "d.safetensors"
    r = run_cli(["data", "prepare", "--dataset", "digits", "--limit", "20", "--threads", "1", "-o", out])
    assert r.code == 0 and torch.get_num_threads() == 1 and out.exists()
    r = run_cli(["inspect", "x.safetensors", "--threads"])
    assert r.code == 2 and len(r.err_lines) == 1 and "--threads needs a value" in r.err
    for bad in ("0", "two"):
        r = run_cli(["--threads", bad, "methods"])
        assert r.code == 2 and len(r.err_lines) == 1 and "--threads" in r.err
