"""The README and the docs pages: the README stays a ten-minute read in its order, both quick starts run as written,
its headline table is the results page's verdict table, and every relative link of README.md and docs/ resolves
(file and anchor)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from conftest import REPO, ebmtool_command

README = REPO / "README.md"
V3_PAGE = REPO / "docs" / "results" / "mnist_anomaly_v3.md"
SECTIONS = ["Set-up: two commands", "CLI quick start", "Your own images", "Python quick start", "Commands",
            "Headline result", "Documentation", "Safety", "Tests"]  # issue 34's order
OWN_IMAGES = "## Your own images\n<!-- own-images:start -->\n"
FENCED = re.compile(r"^```.*?^```", re.S | re.M)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def markdown_files() -> list[Path]:
    return [README, *sorted((REPO / "docs").rglob("*.md"))]


def section(text: str, title: str) -> str:
    return text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]


def code_block(text: str, title: str, lang: str) -> str:
    blocks = re.findall(rf"^```{lang}\n(.*?)^```", section(text, title), flags=re.S | re.M)
    assert len(blocks) == 1, f"the README's '{title}' shows one {lang} block"
    return blocks[0]


def slug(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped (hyphens and underscores kept), spaces -> -."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = FENCED.sub("", path.read_text())
    seen: dict[str, int] = {}
    out = set()
    for h in re.findall(r"^#{1,6} (.+)$", text, flags=re.M):
        s = slug(h)
        out.add(s if s not in seen else f"{s}-{seen[s]}")
        seen[s] = seen.get(s, 0) + 1
    return out


def broken_links(path: Path) -> list[str]:
    """Every relative link of the markdown file ``path`` (outside code) whose file or ``#anchor`` does not exist."""
    text = re.sub(r"`[^`\n]*`", "", FENCED.sub("", path.read_text()))
    bad = []
    for target in LINK.findall(text):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file, _, anchor = target.partition("#")
        dst = (path.parent / file).resolve() if file else path
        if not dst.exists():
            bad.append(f"{path.relative_to(REPO)}: {target} (no such file)")
        elif anchor and dst.suffix == ".md" and anchor not in anchors(dst):
            bad.append(f"{path.relative_to(REPO)}: {target} (no such heading in {dst.name})")
        elif anchor and dst.suffix != ".md":
            bad.append(f"{path.relative_to(REPO)}: {target} (an anchor into a file that is not markdown)")
    return bad


def test_readme_is_a_ten_minute_read_in_the_issues_order():
    text = README.read_text()
    assert len(text.splitlines()) <= 250, "README.md grew past 250 lines: move the detail to docs/"
    titles = re.findall(r"^## (.+)$", FENCED.sub("", text), flags=re.M)
    assert titles == SECTIONS, titles
    assert OWN_IMAGES in text and "\n<!-- own-images:end -->\n" in text  # the own-data work fills this place
    assert "```\nmake demo " in text and "\nmake test " in text  # the two set-up commands, and CI's (.ci/run)
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_every_relative_link_of_readme_and_docs_resolves():
    files = markdown_files()
    assert len(files) >= 10 and V3_PAGE in files
    bad = [b for p in files for b in broken_links(p)]
    assert not bad, "\n".join(bad)


def test_the_link_check_finds_a_missing_file_and_a_missing_anchor(tmp_path, monkeypatch):
    monkeypatch.setattr(f"{__name__}.REPO", tmp_path)
    (tmp_path / "b.md").write_text("# Title\n\n## Two words, and (more)\n\n```\n# not a heading\n```\n")
    page = tmp_path / "a.md"
    page.write_text("[ok](b.md) [ok](b.md#two-words-and-more) ![missing](c.png) [bad](b.md#not-a-heading)\n"
                    "`[in code](nowhere.md)` [web](https://example.org/x.md) [self](#here)\n\n## Here\n")
    assert broken_links(page) == ["a.md: c.png (no such file)", "a.md: b.md#not-a-heading (no such heading in b.md)"]


def test_the_headline_table_is_the_results_pages_verdict_table():
    """Every row of the README's headline table is a verdict row of docs/results/mnist_anomaly_v3.md (generated
    from the committed CSV by python -m benchmarks.anomaly_report), with ", published" left out of its first cell."""
    head = section(README.read_text(), "Headline result")
    readme_rows = [ln for ln in head.splitlines() if ln.startswith("| ") and not ln.startswith("| published")]
    assert sum(1 for ln in head.splitlines() if ln.strip()) <= 10, "the headline result in at most 10 lines"
    page = V3_PAGE.read_text().split("\nVerdicts (", 1)[1].split("\n\n", 2)[1]
    page_rows = [ln.replace(", published vs ebmtool", " vs ebmtool") for ln in page.splitlines()
                 if ln.startswith("| ") and not ln.startswith("| published cell")]
    assert readme_rows == page_rows
    assert [r.split(" | ")[0] for r in readme_rows if not r.startswith("| ---")] == [
        "| LEBM vs ebmtool `mle`", "| adaptive CE vs ebmtool `adaptive-nce`", "| joint EBM prior vs ebmtool `joint-mle`",
        "| joint EBM prior vs ebmtool `joint-vi`", "| ABP vs ebmtool `pretrain`"]


def test_readme_python_quick_start_runs_as_written(tmp_path, monkeypatch, capsys):
    code = code_block(README.read_text(), "Python quick start", "python")
    monkeypatch.chdir(tmp_path)
    t0 = time.process_time()  # CPU time of this process (the example runs in it): not inflated by other busy processes
    exec(compile(code, str(README), "exec"), {"__name__": "__readme__"})  # noqa: S102 - the README's own example
    assert time.process_time() - t0 < 90, "the README's Python quick start must stay quick (smoke preset, digits)"
    assert capsys.readouterr().out.startswith("mle torch.Size([64, 1, 8, 8]) torch.Size([100, 1, 8, 8]) "
                                              "torch.Size([100])")
    assert (tmp_path / "lebm.safetensors").is_file()


def test_readme_cli_quick_start_runs_verbatim(tmp_path):
    """The block runs in bash (-euo pipefail) with ``ebmtool`` on PATH as the entry point under test."""
    block = code_block(README.read_text(), "CLI quick start", "bash")
    assert "--force" not in block and "--preset smoke" in block
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "ebmtool").write_text("#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in ebmtool_command()) + ' "$@"\n')
    (bin_dir / "ebmtool").chmod(0o755)
    work = tmp_path / "work"
    work.mkdir()
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1", COLUMNS="200")
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=work, env=env, capture_output=True, text=True,
                       timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(next(ln for ln in p.stdout.splitlines() if ln.startswith("{")))
    assert res["anomaly_classes"] == [1] and 0.0 < res["auprc"] <= 1.0
    for name in ("digits-no1", "digits-test1", "gen", "model", "samples"):
        assert (work / f"{name}.safetensors").is_file(), name
    assert (work / "samples.png").is_file() and (work / "recon.png").is_file()


@pytest.mark.parametrize("name", ["usage.md", "performance.md", "gpu_node.md", "reproducing.md"])
def test_the_docs_pages_the_readme_maps_exist_and_are_linked(name):
    assert f"](docs/{name})" in README.read_text() and (REPO / "docs" / name).is_file()
