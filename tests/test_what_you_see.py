"""What a person sees while a command runs and when it ends (issue 32 §5): one progress bar over all of adaptive
NCE's stages with the run's ETA, a bar that counts epochs as the log lines do, a bar that stays readable at 80
columns, and a summary whose floats have 4 significant digits."""

from __future__ import annotations

import io
import re

import pytest
from rich.console import Console
from rich.progress import Progress

from ebmtool import progress
from ebmtool.cli.app import shown
from conftest import run_cli


@pytest.fixture
def terminal(monkeypatch):
    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)


def render(width: int, description: str, completed: float, total: float, msg: str) -> str:
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None)
    p = Progress(*progress.columns("epochs", len(description)), console=console, expand=True, auto_refresh=False)
    p.update(p.add_task(description, total=total, msg=msg), completed=completed)
    console.print(p.get_renderable())
    return buf.getvalue().rstrip("\n")


def significant_digits(text: str) -> list[int]:
    """The significant digits of every decimal number in ``text`` (0.09562 -> 4, 231.9 -> 4, 1.979034 -> 7)."""
    out = []
    for m in re.finditer(r"\d+\.\d+", text):
        out.append(len(m.group().replace(".", "").lstrip("0").rstrip("0")) or 1)
    return out


def test_an_80_column_bar_keeps_its_cells_count_and_times():
    """At 80 columns the bar shrank to 4 cells and its times were cut to '0:00…'."""
    line = render(80, "adaptive-nce stage 2/4", 5.4, 16, "loss_g=231.9 nce=1.444 log_r_pos=0.325 log_r_neg=0.3")
    assert len(line) <= 80 and line.startswith("adaptive-nce stage 2/4 ")
    assert len(re.search(r"[━╸╺ ]{20}", line).group()) == 20  # 20 cells of bar
    assert "5.4/16 epochs" in line and re.search(r"\d:\d\d:\d\d ETA -:--:--", line)
    assert "…" not in line.split("ETA")[0]  # only the running values after the times are cut


def test_the_count_is_in_epochs():
    assert progress.count_text(3, 10, "epochs") == "3/10 epochs"
    assert progress.count_text(2.4, 10, "epochs") == "2.4/10 epochs"


def test_the_summary_rounds_every_float_to_4_significant_digits():
    assert shown(1.979034185409546) == "1.979"
    assert shown([1.398293823003769, 1.450318843126297]) == "[1.398, 1.45]"
    assert shown({"steps": 20, "step_size": 0.10000000149}) == "{'steps': 20, 'step_size': 0.1}"
    assert shown("digits") == "digits" and shown(7) == "7"


def test_adaptive_nce_shows_one_bar_over_all_stages_counting_epochs(terminal, digits_ds, gen_model, tmp_path,
                                                                    monkeypatch):
    """It restarted the bar at each stage, with no overall progress or ETA."""
    opened, described = [], []
    real_bar, real_describe = progress.bar, progress.Bar.describe

    def counting_bar(description, total, show, unit="", width=None):
        opened.append((description, total, unit))
        return real_bar(description, total, show, unit, width)

    def recording_describe(self, text):
        described.append(text)
        real_describe(self, text)

    monkeypatch.setattr(progress, "bar", counting_bar)
    monkeypatch.setattr(progress.Bar, "describe", recording_describe)
    r = run_cli(["fit-prior", "--method", "adaptive-nce", "--init", gen_model, "--data", digits_ds, "--preset",
                 "smoke", "--stages", "2", "--epochs-per-stage", "1", "--set", "posterior.steps=2",
                 "-o", tmp_path / "n.safetensors"]).ok()
    err = r.err
    assert opened == [("adaptive-nce stage 1/2", 2, "epochs")]  # one bar, the whole run's epochs
    assert described == ["adaptive-nce stage 1/2", "adaptive-nce stage 2/2"]  # its description moves on
    assert "adaptive-nce stage 2/2" in err and "/1 epochs" not in err and re.search(r"\d(\.\d)?/2 epochs", err)
    # the log lines count the same unit, over the same total, stages from 1
    assert "[adaptive-nce stage 1] epoch 1/2" in err and "[adaptive-nce stage 2] epoch 2/2" in err
    assert max(significant_digits(r.out)) == 4, r.out  # the summary's floats: 4 significant digits
    assert re.search(r"nce_final_per_stage\s*│\s*\[\d\.\d{1,3}, \d\.\d{1,3}\]", r.out), r.out
