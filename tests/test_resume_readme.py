"""The resume paragraph of docs/usage.md (once the README's), run verbatim: its first command is killed with SIGKILL once it has written a
checkpoint, its second command (the same plus --resume FILE, no --force) finishes the run, and the model equals
an uninterrupted run's tensor for tensor. The page's relative file names resolve in a temporary folder that
holds the session's tiny digits data and smoke generator under those names."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
import time

import torch
from safetensors.torch import load_file

from conftest import REPO, ebmtool_command, run_cli


def readme_resume_commands() -> list[list[str]]:
    text = (REPO / "docs" / "usage.md").read_text()
    section = text.split("\n## Long runs: checkpoints and resume\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the resume paragraph shows its commands in one code block"
    return [shlex.split(line) for line in blocks[0].splitlines() if line.startswith("ebmtool ")]


def test_readme_resume_commands_verbatim(tmp_path, digits_ds, gen_model):
    first, second = readme_resume_commands()
    assert first[0] == second[0] == "ebmtool"
    assert second[:len(first)] == first and second[len(first)] == "--resume", "the same command plus --resume FILE"
    assert "--force" not in second
    out = tmp_path / first[first.index("-o") + 1]
    ckpt = tmp_path / second[second.index("--resume") + 1]
    for a in first[1:]:  # the input files the page names
        if a.endswith(".safetensors") and a != out.name:
            shutil.copyfile({"digits.safetensors": digits_ds, "gen.safetensors": gen_model}[a], tmp_path / a)

    # an uninterrupted run of the same command (only the output name differs), in this process
    ref_dir = tmp_path / "ref"
    ref_dir.mkdir()
    for a in ("digits.safetensors", "gen.safetensors"):
        shutil.copyfile(tmp_path / a, ref_dir / a)
    run_cli(first[1:], cwd=ref_dir).ok()
    ref = ref_dir / out.name

    env = dict(os.environ, OMP_NUM_THREADS="1")
    p = subprocess.Popen(ebmtool_command() + first[1:], cwd=tmp_path, env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while p.poll() is None and not ckpt.exists() and time.time() - t0 < 120:
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert p.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    assert ckpt.exists() and not out.exists()

    r = subprocess.run(ebmtool_command() + second[1:], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    ta, tb = load_file(str(ref)), load_file(str(out))
    assert sorted(ta) == sorted(tb)
    for k in ta:
        assert ta[k].dtype == tb[k].dtype and torch.equal(ta[k], tb[k]), k
    assert not ckpt.exists(), "the checkpoint is removed once the model is written"
