"""benchmarks/gpu_check.py on a CPU: --dry-run lists every check of issue 17 and runs nothing; without CUDA a real
run stops with one line; a failing check is one line naming its command and the repository file:line."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
import gpu_check  # noqa: E402

SCRIPT = [sys.executable, str(REPO / "benchmarks" / "gpu_check.py")]
EXPECTED = ["pytest-cuda", "pretrain", "fit-mle", "fit-adaptive-nce", "fit-nce", "fit-joint-mle", "fit-joint-vi",
            "fit-bidvl", "precision-auto", "precision-step", "resume-deterministic", "resume-default", "torchrun-1",
            "torchrun-2-nccl", "speed", "langevin-compile"]


def test_dry_run_lists_every_check_and_runs_nothing(tmp_path):
    out = tmp_path / "g.json"
    p = subprocess.run(SCRIPT + ["--dry-run", "--out", str(out)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    listed = [ln.split()[0] for ln in p.stdout.splitlines()[2:] if ln and not ln.startswith(" ")]
    assert listed[: len(listed)] and set(EXPECTED) <= set(listed)
    assert "--device cuda" in p.stdout and "-m cuda" in p.stdout and "speed.py --device cuda --sizes svhn32 cifar32" in p.stdout
    assert "torch.distributed.run --standalone --nproc_per_node 2" in p.stdout
    assert not out.exists() and p.stderr == ""
    assert sum(c.timeout_s for c in gpu_check.checks(1) if c.min_gpus <= 1) < 1800


def test_every_method_has_a_smoke_check():
    from ebmtool.methods import METHODS

    names = {c.name for c in gpu_check.checks(1)}
    assert {f"fit-{m}" for m in METHODS if m != "pretrain"} <= names


def test_only_pulls_in_what_a_check_needs_and_an_unknown_check_is_one_line():
    p = subprocess.run(SCRIPT + ["--dry-run", "--only", "resume-default"], capture_output=True, text=True, timeout=60)
    listed = [ln.split()[0] for ln in p.stdout.splitlines()[2:] if ln and not ln.startswith(" ")]
    assert listed == ["data", "pretrain", "resume-default"]
    p = subprocess.run(SCRIPT + ["--dry-run", "--only", "nope"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "unknown check 'nope'" in p.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_a_real_run_is_one_line_and_exit_2(tmp_path):
    p = subprocess.run(SCRIPT + ["--out", str(tmp_path / "g.json")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.strip().splitlines() == [p.stderr.strip()] and "no CUDA device" in p.stderr
    assert not (tmp_path / "g.json").exists()


def test_a_failing_check_is_one_line_naming_the_command_and_the_repo_frame(tmp_path):
    crash = gpu_check.Check("crash", "a traceback inside the repository", 30,
                            [sys.executable, "-c", "import runpy; runpy.run_path(%r)" % str(tmp_path / "x.py")])
    (tmp_path / "x.py").write_text("raise RuntimeError('cuDNN error: CUDNN_STATUS_NOT_SUPPORTED')\n")
    r = gpu_check.run_check(crash, tmp_path, {})
    assert r["status"] == "fail" and "\n" not in r["error"]
    assert r["error"].startswith("FAIL crash: ") and "CUDNN_STATUS_NOT_SUPPORTED" in r["error"]
    # a frame inside the repository is named by its path
    tb = (f'Traceback (most recent call last):\n  File "{REPO}/ebmtool/sampling.py", line 88, in langevin\n'
          f'  File "{REPO}/.venv/lib/python3.11/site-packages/torch/x.py", line 3, in f\nRuntimeError: boom\n')
    line = gpu_check.failure_line("fit-mle", ["ebmtool", "fit-prior"], 1, tb)
    assert line == "FAIL fit-mle: ebmtool fit-prior -> ebmtool/sampling.py:88: RuntimeError: boom"
    slow = gpu_check.Check("slow", "sleeps", 1, [sys.executable, "-c", "import time; time.sleep(5)"])
    r = gpu_check.run_check(slow, tmp_path, {})
    assert r["status"] == "fail" and "timed out after 1 s" in r["error"] and "\n" not in r["error"]


def test_a_worker_that_reports_not_ok_fails_with_its_reason(tmp_path, monkeypatch):
    ok = gpu_check.Check("ok", "prints a JSON result", 30, [sys.executable, "-c", "print('{\"ok\": true, \"summary\": \"fine\"}')"])
    r = gpu_check.run_check(ok, tmp_path, {})
    assert r["status"] == "ok" and gpu_check.summary(r) == "fine"
    bad = gpu_check.Check("resume-default", "reports not ok", 30,
                          [sys.executable, "-c", "import sys; print('{\"ok\": false, \"why\": \"differs: max rel. diff 3e-01\"}'); sys.exit(1)"])
    r = gpu_check.run_check(bad, tmp_path, {})
    assert r["status"] == "fail" and r["error"].endswith("differs: max rel. diff 3e-01")
