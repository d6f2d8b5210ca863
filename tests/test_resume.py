"""Reliability: a run killed with SIGKILL at a random iteration and resumed from its last checkpoint writes
tensors byte-identical to an uninterrupted run's; same command + seed twice writes identical tensors;
divergence stops with a named quantity and writes nothing."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from ebmtool import artifacts
from ebmtool.data import DataConfig, prepare

EBM = [sys.executable, "-m", "ebmtool"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("resume")
    tensors, meta = prepare(DataConfig(dataset="digits", limit=256))
    artifacts.save(d / "d.safetensors", "dataset", tensors, meta=meta)
    subprocess.run(EBM + ["pretrain-generator", "--data", str(d / "d.safetensors"), "-o", str(d / "g.safetensors"),
                          "--preset", "smoke", "--epochs", "1", "--quiet"], check=True, env=ENV, cwd=d)
    return d


def _cmd(method_args, d, out):
    return EBM + ["fit-prior", *method_args, "--data", str(d / "d.safetensors"), "--init", str(d / "g.safetensors"),
                  "--preset", "smoke", "--batch-size", "32", "-o", str(out), "--quiet", "--checkpoint-every", "2"]


# The run to be killed, held at the write of its model (after its last checkpoint) until the kill: however slow or
# loaded the machine, it cannot finish before the test has seen a checkpoint at or past its target and killed it.
# The kill still lands wherever the run is then (any later iteration, a checkpoint write, or that hold).
HOLD_AT_MODEL_WRITE = (
    "import runpy, sys, time\n"
    "from pathlib import Path\n"
    "from ebmtool import files\n"
    "out, real = Path(sys.argv.pop(1)).resolve(), files.remove_stale_temps\n"
    "def hold(path):\n"
    "    while Path(path).resolve() == out:\n"
    "        time.sleep(1)\n"
    "    return real(path)\n"
    "files.remove_stale_temps = hold\n"
    "runpy.run_module('ebmtool', run_name='__main__', alter_sys=True)\n")


def _same(a: Path, b: Path) -> None:
    ta, tb = load_file(str(a)), load_file(str(b))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k


@pytest.mark.parametrize("method_args", [
    ["--method", "adaptive-nce", "--stages", "2"],
    ["--method", "mle", "--epochs", "3"],
], ids=["adaptive-nce", "mle"])
def test_sigkill_and_resume_is_byte_identical(small, method_args):
    d = small
    tag = method_args[1]
    ref, out = d / f"ref-{tag}.safetensors", d / f"run-{tag}.safetensors"
    ckpt = d / f"run-{tag}.ckpt.safetensors"
    subprocess.run(_cmd(method_args, d, ref), check=True, env=ENV)
    _same(ref, ref)
    rng = random.Random(zlib.crc32(" ".join(method_args).encode()))  # the same target in every run (not hash())
    target = rng.randint(3, 12)  # kill once the checkpoint has reached at least this iteration
    cmd = _cmd(method_args, d, out)
    assert cmd[:3] == EBM
    p = subprocess.Popen([sys.executable, "-c", HOLD_AT_MODEL_WRITE, str(out), *cmd[3:]], env=ENV)
    t0 = time.time()
    killed_at = None
    while p.poll() is None and time.time() - t0 < 600:
        if ckpt.exists():
            try:
                it = artifacts.load(ckpt, "checkpoint").meta["iteration"]
            except Exception:
                it = 0
            if it >= target:
                p.send_signal(signal.SIGKILL)
                killed_at = it
                break
        time.sleep(0.05)
    if p.poll() is None:  # no checkpoint reached the target in 10 minutes: the held run never ends by itself
        p.kill()
    p.wait()
    assert killed_at is not None, f"no checkpoint reached iteration {target} before the run ended (exit {p.returncode})"
    assert not out.exists()
    r = subprocess.run(_cmd(method_args, d, out) + ["--resume", str(ckpt)], env=ENV, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    _same(ref, out)
    assert not ckpt.exists(), "the checkpoint is removed once the model is written"


def test_resume_refuses_a_different_config(small):
    d = small
    p = subprocess.Popen(_cmd(["--method", "mle", "--epochs", "3"], d, d / "c.safetensors"), env=ENV)
    ck = d / "c.ckpt.safetensors"
    t0 = time.time()
    while not ck.exists() and time.time() - t0 < 120:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)  # checkpoints are written atomically: one that exists is whole
    p.wait()
    assert p.returncode == -signal.SIGKILL and not (d / "c.safetensors").exists(), "killed before it finished"
    r = subprocess.run(_cmd(["--method", "mle", "--epochs", "4"], d, d / "c.safetensors") + ["--resume", str(ck)],
                       env=ENV, capture_output=True, text=True)
    assert r.returncode == 2
    assert "different config" in r.stderr and "epochs" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_sigterm_writes_checkpoint_and_exits_130(small):
    d = small
    out = d / "t.safetensors"
    cmd = [c for c in _cmd(["--method", "mle", "--epochs", "500"], d, out) if c != "--quiet"]
    cmd[cmd.index("--checkpoint-every") + 1] = "0"
    p = subprocess.Popen(cmd, env=ENV, stderr=subprocess.PIPE, text=True)
    lines = []
    for line in p.stderr:  # wait until training runs (epoch lines), then ask it to stop
        lines.append(line)
        if line.startswith("[mle] epoch"):
            p.send_signal(signal.SIGTERM)
            break
    err = "".join(lines) + p.stderr.read()
    p.wait(timeout=120)
    assert p.returncode == 130, err
    assert (d / "t.ckpt.safetensors").exists()
    last = [ln for ln in err.splitlines() if ln.strip()][-1]
    assert "--resume" in last and "Traceback" not in err
    assert not out.exists()


def test_divergence_is_named_and_writes_nothing(small):
    d = small
    out = d / "div.safetensors"
    r = subprocess.run(EBM + ["fit-prior", "--method", "mle", "--data", str(d / "d.safetensors"), "--init",
                              str(d / "g.safetensors"), "--preset", "smoke", "--epochs", "1", "-o", str(out),
                              "--set", "prior.step_size=1e3", "--quiet"], env=ENV, capture_output=True, text=True)
    assert r.returncode == 3, r.stderr
    assert "non-finite" in r.stderr and "step size" in r.stderr and "iteration" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert not out.exists()


def test_resume_accepts_a_checkpoint_that_recorded_the_asked_generator(small):
    """Checkpoints written before a run from --init recorded the init's generator (they kept the preset's, e.g.
    arch "auto") still resume; the finished artifact records the generator really trained."""
    d = small
    out, ck = d / "old.safetensors", d / "old.ckpt.safetensors"
    p = subprocess.Popen(_cmd(["--method", "mle", "--epochs", "3"], d, out), env=ENV)
    t0 = time.time()
    while not ck.exists() and time.time() - t0 < 120:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL and not out.exists(), "killed before it finished"
    art = artifacts.load(ck, "checkpoint")
    asked = {**art.config, "generator": {**art.config["generator"], "arch": "auto"}}  # as an older release wrote it
    artifacts.save(ck, "checkpoint", art.tensors, config=asked, meta=art.meta, parents=art.parents)
    r = subprocess.run(_cmd(["--method", "mle", "--epochs", "3"], d, out) + ["--resume", str(ck)], env=ENV,
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert artifacts.load(out).config["generator"]["arch"] == artifacts.load(d / "g.safetensors").meta["model"]["generator"]["arch"] != "auto"


def test_a_checkpoint_older_than_an_option_says_it_cannot_be_resumed(tmp_path):
    """A checkpoint written before an option existed lacks it in its config: no command gives that config back, so
    the error says to start again instead of "resume with the same command"."""
    from ebmtool.checkpoint import open_resume
    from ebmtool.errors import UserError

    ck = tmp_path / "old.ckpt.safetensors"
    old = {"epochs": 3, "seed": 0}
    artifacts.save(ck, "checkpoint", {"x": torch.zeros(1)}, config=old,
                   meta={"iteration": 2, "structure": {}, "history": {}})
    with pytest.raises(UserError, match="predates the option.*chain_start.*start the run again"):
        open_resume(str(ck), {**old, "chain_start": "noise"}, {})
    with pytest.raises(UserError, match="different config .differs in epochs.; resume with the same command"):
        open_resume(str(ck), {**old, "epochs": 4}, {})


def test_a_checkpoint_of_another_method_says_which_method_wrote_it(tmp_path):
    """Resuming another method's checkpoint named the config keys the two methods do not share ("predates the
    option(s) ..."); it now names the method that wrote it. Checkpoints that do not record a method are checked as
    before."""
    from ebmtool.checkpoint import open_resume
    from ebmtool.errors import UserError

    ck = tmp_path / "mle.ckpt.safetensors"
    cfg = {"epochs": 3, "seed": 0}
    artifacts.save(ck, "checkpoint", {"x": torch.zeros(1)}, config=cfg,
                   meta={"iteration": 2, "structure": {}, "history": {}, "inputs": {"method": "mle"}})
    with pytest.raises(UserError, match="checkpoint was written by mle, not joint-vi; resume it with the command"):
        open_resume(str(ck), {**cfg, "chain_start": "noise"}, {"method": "joint-vi"})
    assert open_resume(str(ck), cfg, {"method": "mle"}).meta["iteration"] == 2
    artifacts.save(ck, "checkpoint", {"x": torch.zeros(1)}, config=cfg,
                   meta={"iteration": 2, "structure": {}, "history": {}})
    with pytest.raises(UserError, match="predates the option"):
        open_resume(str(ck), {**cfg, "chain_start": "noise"}, {"method": "joint-vi"})
