"""The README's "Your own images" section, run verbatim: its shell commands, taken from the block between
``<!-- own-images:start -->`` and ``<!-- own-images:end -->``, run in a temporary folder on folders of PNGs this
test writes (scikit-learn's 8x8 digits: the 7s are left out of ``my_images/``, a few are among ``new_images/``)."""

from __future__ import annotations

import csv
import re
import shlex
from pathlib import Path

import numpy as np
from PIL import Image

from conftest import REPO, run_cli


def own_images_block() -> str:
    text = (REPO / "README.md").read_text()
    assert text.count("<!-- own-images:start -->") == 1 and text.count("<!-- own-images:end -->") == 1
    return text.split("<!-- own-images:start -->", 1)[1].split("<!-- own-images:end -->", 1)[0]


def own_images_commands() -> list[list[str]]:
    """The block's ``ebmtool`` commands (a line ending in a backslash continues on the next), split as a POSIX
    shell splits them."""
    blocks = re.findall(r"```\n(.*?)```", own_images_block(), flags=re.S)
    assert len(blocks) == 1, "the section shows its commands in one code block"
    lines = blocks[0].replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


def test_section_is_short_and_shows_every_step():
    text = (REPO / "README.md").read_text()
    assert "## Your own images\n<!-- own-images:start -->" in text  # the heading the README's order test expects
    assert len(own_images_block().strip().splitlines()) <= 40
    cmds = own_images_commands()
    assert all(c[0] == "ebmtool" for c in cmds)
    steps = [c[1] for c in cmds]
    for step in ("data", "pretrain-generator", "fit-prior", "sample", "score"):
        assert step in steps, step
    assert any("--dataset" in c and c[c.index("--dataset") + 1] == "folder" for c in cmds)


def _write(folder: Path, images: np.ndarray, prefix: str) -> list[str]:
    folder.mkdir()
    names = [f"{prefix}{i:03d}.png" for i in range(len(images))]
    for name, im in zip(names, images):
        Image.fromarray(im).save(folder / name)
    return names


def test_readme_own_images_commands_verbatim(tmp_path):
    from sklearn.datasets import load_digits

    d = load_digits()
    x, y = np.round(d.images * (255 / 16)).astype(np.uint8), d.target
    _write(tmp_path / "my_images", x[:400][y[:400] != 7], "img")
    new = np.concatenate([x[400:430][y[400:430] != 7], x[400:][y[400:] == 7][:5]])
    names = _write(tmp_path / "new_images", new, "new")
    for argv in own_images_commands():
        run_cli(argv[1:], cwd=tmp_path).ok()
    rows = list(csv.DictReader((tmp_path / "scores.csv").open()))
    assert [r["name"] for r in rows] == names
    assert {"index", "name", "score", "recon", "tilt", "base", "flagged"} <= set(rows[0])
    assert (tmp_path / "top.png").is_file() and (tmp_path / "samples.png").is_file()
