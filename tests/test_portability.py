"""Python 3.10 (the declared minimum) and every device string torch takes.

Python: pyproject declares >= 3.10, so the package may use nothing newer. Its syntax is parsed as 3.10, the
3.11-only ``tomllib`` is only imported with the ``tomli`` fallback (a dependency below 3.11), and TOML configs
are read through that fallback when ``tomllib`` is missing (as on 3.10).

Devices: the ``device`` config field takes auto, cpu, cuda, cuda:N and mps (what ``resolve_device`` takes);
a device this machine lacks is one line, exit 2, when the stage runs."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import torch

from conftest import REPO, run_cli

SOURCES = sorted([*(REPO / "ebmtool").rglob("*.py"), *(REPO / "tests").rglob("*.py")])


def test_requires_python_and_tomli_fallback_are_declared():
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    proj = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert proj["requires-python"] == ">=3.10"
    deps = [d.replace(" ", "").replace('"', "'") for d in proj["dependencies"]]
    assert any(d.startswith("tomli") and "python_version<'3.11'" in d for d in deps), deps


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(REPO)))
def test_sources_parse_as_python_3_10_and_guard_tomllib(path):
    tree = ast.parse(path.read_text(), filename=str(path), feature_version=(3, 10))
    guarded = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(isinstance(h.type, ast.Name) and h.type.id in ("ModuleNotFoundError", "ImportError")
                                             for h in node.handlers):
            guarded.update(id(n) for n in node.body)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import) and any(a.name == "tomllib" for a in node.names):
            assert id(node) in guarded, f"{path}:{node.lineno}: 'import tomllib' without the tomli fallback (3.11+ only)"


def test_toml_config_is_read_without_tomllib(tmp_path):
    """As on Python 3.10: ``tomllib`` cannot be imported; a TOML config is still read (through tomli)."""
    pytest.importorskip("tomli")
    cfg = tmp_path / "c.toml"
    cfg.write_text("epochs = 3\n[posterior]\nsteps = 7\n")
    code = ("import sys; sys.modules['tomllib'] = None\n"
            "from ebmtool.config import read_toml, tomllib\n"
            f"assert tomllib.__name__ == 'tomli'\nprint(read_toml({str(cfg)!r}))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "{'epochs': 3, 'posterior': {'steps': 7}}"


# ------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("dev", ["auto", "cpu", "cuda", "cuda:0", "cuda:3", "mps"])
def test_config_accepts_every_device_form(dev):
    from ebmtool.config import resolve
    from ebmtool.methods import METHODS

    cfg = resolve(METHODS["pretrain"].config, method="pretrain", preset="smoke", toml=None, flags={"device": dev})
    assert cfg.device == dev


@pytest.mark.parametrize("dev", ["tpu", "cuda:", "cuda:x", "cuda:-1", "gpu", "CPU", ""])
def test_config_refuses_other_device_strings_in_one_line(dev):
    from ebmtool.config import resolve
    from ebmtool.errors import UserError
    from ebmtool.methods import METHODS

    with pytest.raises(UserError) as e:
        resolve(METHODS["pretrain"].config, method="pretrain", preset="smoke", toml=None, flags={"device": dev})
    msg = str(e.value)
    assert "\n" not in msg and f"unknown device '{dev}'" in msg and "cuda:N" in msg, msg


def test_absent_cuda_index_is_one_line(tmp_path, digits_ds):
    n = torch.cuda.device_count()
    out = tmp_path / "g.safetensors"
    r = run_cli(["pretrain-generator", "--data", digits_ds, "--preset", "smoke", "--device", f"cuda:{n + 3}",
                 "-o", out])
    assert r.code == 2, r.err
    assert len(r.err_lines) == 1 and "Traceback" not in r.err
    assert "CUDA device" in r.err and f"cuda:{n + 3}" in r.err, r.err
    assert not out.exists()
