"""The command surface is consistent (issue 14, items 5 and 6): --version, --quiet on every command that can run
long, plot --json, one progress bar (drawn only on a terminal, silenced by --quiet), and help text that names the
papers instead of internal shorthand."""

from __future__ import annotations

import contextlib
import io
import json
import re
from importlib.metadata import version
from pathlib import Path

import numpy as np
import pytest
import torch

from ebmtool import progress

from conftest import run_cli

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def terminal(monkeypatch):
    """Pretend stderr is a terminal (rich's Console(stderr=True).is_terminal), as in an interactive shell."""
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)


# ------------------------------------------------------------------------------------------------ --version
def test_version_prints_the_installed_version():
    r = run_cli(["--version"]).ok()
    assert r.out.strip() == f"ebmtool {version('ebmtool')}"
    assert r.err == ""


# ------------------------------------------------------------------------------------------------ the helper
def _drawn(show: bool) -> str:
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        assert list(progress.track(range(3), 3, "counting sheep", show)) == [0, 1, 2]
    return err.getvalue()


def test_progress_bar_only_on_a_terminal(terminal):
    assert "counting sheep" in _drawn(True)
    assert _drawn(False) == ""  # --quiet


def test_no_progress_bar_when_stderr_is_not_a_terminal():
    assert not progress.stderr_is_terminal()  # pytest captures stderr
    assert _drawn(True) == ""


def test_a_bar_inside_a_bar_is_not_drawn(terminal):
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        for _ in progress.track(range(2), 2, "outer loop", True):
            list(progress.track(range(2), 2, "inner loop", True))
    assert "outer loop" in err.getvalue() and "inner loop" not in err.getvalue()


def test_fid_feature_extraction_draws_the_bar(terminal):
    from ebmtool.eval.features import FeatureExtractor
    from ebmtool.eval.fid import compute_statistics

    class Mean(FeatureExtractor):
        name = "mean"

        def forward_features(self, x):
            return x.flatten(2).mean(2)

    images = torch.randint(0, 256, (40, 3, 4, 4), dtype=torch.uint8)
    for show, drawn in ((True, True), (False, False)):
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            mu, _, n = compute_statistics(images, Mean(), batch_size=8, progress=show, what="toy")
        assert n == 40 and np.isfinite(mu).all()
        assert ("features (toy)" in err.getvalue()) == drawn


# ------------------------------------------------------------------------------------------------ --quiet
def _commands(model: Path, data: Path, out: Path) -> dict[str, list[str]]:
    return {
        "sample": ["sample", "--model", model, "-n", "12", "--batch-size", "4", "-o", out / "s.safetensors",
                   "--device", "cpu", "--force"],
        "reconstruct": ["reconstruct", "--model", model, "--data", data, "--limit", "12", "--batch-size", "4",
                        "--steps", "2", "-o", out / "r.safetensors", "--device", "cpu", "--force"],
        "anomaly": ["anomaly", "--model", model, "--data", data, "--anomaly-class", "3", "--batch-size", "64",
                    "--steps", "2", "-o", out / "a.safetensors", "--device", "cpu", "--force"],
    }


@pytest.mark.parametrize("command", ["sample", "reconstruct", "anomaly"])
def test_long_commands_draw_a_bar_on_a_terminal_and_none_with_quiet(command, mle_model, digits_ds, tmp_path,
                                                                     terminal):
    argv = _commands(mle_model, digits_ds, tmp_path)[command]
    shown = run_cli(argv).ok()
    assert command in shown.err and "━" in shown.err, shown.err  # the bar, labelled with the command
    quiet = run_cli(argv + ["--quiet"]).ok()
    assert quiet.err == ""
    assert "Traceback" not in shown.err + quiet.err


@pytest.mark.parametrize("command", ["sample", "reconstruct"])
def test_no_bar_when_stderr_is_not_a_terminal(command, mle_model, digits_ds, tmp_path):
    r = run_cli(_commands(mle_model, digits_ds, tmp_path)[command]).ok()
    assert r.err == ""


def test_batched_sampling_draws_every_sample(mle_model, tmp_path):
    """-n 10 in batches of 4 (4 + 4 + 2 chains) is 10 distinct samples."""
    out = tmp_path / "s.safetensors"
    res = json.loads(run_cli(["sample", "--model", mle_model, "-n", "10", "--batch-size", "4", "-o", out,
                              "--device", "cpu", "--quiet", "--json"]).ok().out)
    from ebmtool import artifacts

    art = artifacts.load(str(out))
    assert res["n"] == 10 and art.tensors["images"].shape[0] == 10 and art.tensors["latents"].shape[0] == 10
    assert len({tuple(z.tolist()) for z in art.tensors["latents"]}) == 10


def test_data_prepare_honours_quiet(monkeypatch, tmp_path, terminal):
    """data prepare hands --quiet to the dataset loader (CelebA's decoding loop and torchvision's downloads)."""
    from ebmtool.data import sources

    real = sources.SOURCES["digits"]
    seen = []

    def loader(root, split, download, show=False):
        seen.append(show)
        list(progress.track(range(3), 3, "decoding digits", show))
        return real(root, split, download, show)

    monkeypatch.setitem(sources.SOURCES, "digits", loader)
    argv = ["data", "prepare", "--dataset", "digits", "--limit", "20", "-o", tmp_path / "d.safetensors", "--force"]
    shown = run_cli(argv).ok()
    quiet = run_cli(argv + ["--quiet"]).ok()
    assert seen == [True, False]
    assert "decoding digits" in shown.err and quiet.err == ""


def test_torchvision_download_messages_stay_off_stdout(capsys):
    from ebmtool.data.sources import _torchvision_output

    for show in (True, False):
        with _torchvision_output(show):
            print("Downloading https://example.org/train.gz")
        out, err = capsys.readouterr()
        assert out == "" and ("Downloading" in err) == show


# ------------------------------------------------------------------------------------------------ plot --json
def test_plot_json(digits_ds, tmp_path):
    png = tmp_path / "grid.png"
    r = run_cli(["plot", digits_ds, "-o", png, "--json"]).ok()
    res = json.loads(r.out)
    assert res["output"] == str(png) and png.exists() and res["drew"]


# ------------------------------------------------------------------------------------------------ help text
PAPERS = ["Pang et al. 2020", "Xiao & Han 2022", "Cui, Wu & Han 2023", "Kan et al. 2022"]
SHORTHAND = re.compile(r"seed 0\d\d|\(seed \d|seeds'|seed's|seed method|the seeds\b", re.IGNORECASE)


def test_fit_prior_help_names_the_papers_and_every_method():
    from ebmtool.methods import METHODS

    r = run_cli(["fit-prior", "--help"]).ok()
    text = " ".join(r.out.split())
    for paper in PAPERS:
        assert paper in text, paper
    for k, m in METHODS.items():  # one line per method, from its registered description
        if m.fit_prior:
            assert f"{k}: {' '.join(m.description.split())}" in text, k
    assert not SHORTHAND.search(r.out)


def test_no_internal_shorthand_for_the_papers_where_users_read():
    files = [*sorted((REPO / "ebmtool").rglob("*.py")), REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")),
             *sorted((REPO / "recipes").glob("*"))]
    hits = [f"{p.relative_to(REPO)}:{i}: {line.strip()}" for p in files if p.is_file()
            for i, line in enumerate(p.read_text(errors="replace").splitlines(), 1) if SHORTHAND.search(line)]
    assert not hits, "\n".join(hits)
