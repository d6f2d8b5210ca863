"""Charts come from matplotlib (PNG metadata names it), carry the labels asked for, honour the extension's format;
image grids are large enough to judge by eye."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from ebmtool.errors import UserError
from ebmtool.eval import plots


def _software(path) -> str:
    with Image.open(path) as im:
        return im.info.get("Software", "")


def _legend(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_nce_chart_marks_chance_and_is_matplotlib(tmp_path):
    p = tmp_path / "nce.png"
    fig = plots.nce_curves_png({0: [1.30, 1.20, 1.15], 1: [1.38, 1.33, 1.31]}, str(p))
    assert "matplotlib" in _software(p).lower()
    ax = fig.axes[0]
    assert ax.get_xlabel().startswith("epoch") and ax.get_ylabel() == "NCE loss (nats)"
    assert {"stage 0", "stage 1"} <= set(_legend(ax))
    chance = [ln for ln in ax.get_lines() if ln.get_label().startswith("chance")]
    assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), 2 * math.log(2))
    # epochs are whole numbers: no tick at 5.75
    assert all(float(t).is_integer() for t in ax.get_xticks())
    # epochs continue across stages
    assert list(ax.get_lines()[1].get_xdata()) == [4, 5, 6]


def test_pr_and_roc_with_random_baseline(tmp_path):
    rng = np.random.default_rng(0)
    y = (rng.random(300) < 0.2).astype(int)
    s = y + rng.normal(size=300)
    fig = plots.pr_curve_png(y, s, str(tmp_path / "pr.png"))
    pr, roc = fig.axes[:2]
    assert pr.get_xlabel().startswith("recall") and pr.get_ylabel().startswith("precision")
    assert roc.get_xlabel().startswith("false-positive rate") and roc.get_ylabel().startswith("true-positive rate")
    assert pr.get_ylim() == (0, 1.01) and pr.get_xlim() == (0, 1)
    base = [ln for ln in pr.get_lines() if ln.get_label().startswith("random")]
    assert len(base) == 1 and np.allclose(base[0].get_ydata(), y.mean())
    diag = [ln for ln in roc.get_lines() if ln.get_label().startswith("random")]
    assert len(diag) == 1 and list(diag[0].get_xdata()) == [0, 1] and list(diag[0].get_ydata()) == [0, 1]
    assert "matplotlib" in _software(tmp_path / "pr.png").lower()


def test_auprc_per_digit_bars_errorbars_and_baseline(tmp_path):
    results = {"mle": {0: [0.5, 0.7], 1: [0.2, 0.4]}, "adaptive-nce": {0: [0.6, 0.6], 1: [0.3]}}
    random = {0: 0.1, 1: 0.12}
    fig = plots.auprc_per_digit(results, random, str(tmp_path / "auprc.png"), title="t")
    ax = fig.axes[0]
    assert ax.get_ylabel() == "AUPRC" and ax.get_ylim() == (0, 1) and ax.get_title() == "t"
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0", "1"]
    heights = sorted(round(b.get_height(), 6) for b in ax.patches)
    assert heights == sorted([0.6, 0.3, 0.6, 0.3])  # the means
    # error bars: the std over the list (mle digit 0: std of 0.5, 0.7 with ddof=1 = 0.1414)
    segs = [c for c in ax.collections if c.get_label() != "random (anomaly fraction)"]
    spans = sorted(round(float(abs(s[1][1] - s[0][1])) / 2, 4) for c in segs for s in c.get_segments())
    assert 0.1414 in spans
    lines = [c for c in ax.collections if c.get_label() == "random (anomaly fraction)"]
    assert lines, "random baseline not marked"
    ys = sorted(round(float(s[0][1]), 4) for c in lines for s in c.get_segments())
    assert ys == [0.1, 0.12]
    assert "mle (n=2)" in _legend(ax) and "adaptive-nce (n=1-2)" in _legend(ax)
    assert "matplotlib" in _software(tmp_path / "auprc.png").lower()


def test_energy_profile_and_loss_curves_labels(tmp_path):
    lp = -np.linspace(100, 20, 11)[:, None] + np.zeros((11, 6))
    fig = plots.energy_profile_png(list(range(0, 33, 3)), lp, str(tmp_path / "e.png"))
    ax = fig.axes[0]
    assert ax.get_xlabel() == "Langevin step" and ax.get_ylabel().startswith("energy")
    mean = [ln for ln in ax.get_lines() if ln.get_label().startswith("mean")][0]
    assert np.allclose(mean.get_ydata(), -lp.mean(1))  # energy = -log p
    fig = plots.loss_curves_png({"loss_gen": [3, 2, 1], "loss_ebm": [1, .5, .4], "grad_norm": [5, 3, 2]},
                                str(tmp_path / "l.png"), title="mle")
    left, right = fig.axes[:2]
    assert left.get_xlabel() == "epoch" and left.get_ylabel().startswith("loss (nats")
    assert set(_legend(left)) == {"loss_gen", "loss_ebm"} and _legend(right) == ["grad_norm"]


@pytest.mark.parametrize("ext,magic", [("pdf", b"%PDF"), ("svg", b"<?xml")])
def test_format_from_extension(tmp_path, ext, magic):
    p = tmp_path / f"nce.{ext}"
    plots.nce_curves_png({0: [1.3, 1.2]}, str(p))
    assert p.read_bytes().startswith(magic)
    if ext == "svg":
        text = p.read_text()
        assert "NCE loss (nats)" in text and "Matplotlib" in text


def test_unknown_extension_is_one_line(tmp_path):
    with pytest.raises(UserError, match=r"\.png, \.pdf or \.svg"):
        plots.nce_curves_png({0: [1.3]}, str(tmp_path / "x.jpg"))
    assert not (tmp_path / "x.jpg").exists()


@pytest.mark.parametrize("shape,nrow", [((5, 1, 8, 8), 3), ((1, 1, 4, 6), 4), ((7, 3, 5, 5), 2),
                                        ((16, 1, 28, 28), 4), ((3, 1, 8, 8), 8), ((10, 3, 4, 4), 10)])
def test_tile_is_torchvisions_make_grid(shape, nrow):
    """Ground truth: ebmtool's grid layout is torchvision's make_grid (padding 1, grey 128), without its import."""
    from torchvision.utils import make_grid

    from ebmtool.images import tile

    x = torch.randint(0, 256, shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(tile(x, nrow), make_grid(x, nrow=nrow, padding=1, pad_value=128))


def test_a_grid_of_no_images_is_one_line(tmp_path):
    from ebmtool.images import save_grid

    with pytest.raises(UserError, match="there are no images to draw"):
        save_grid(torch.zeros(0, 1, 8, 8, dtype=torch.uint8), str(tmp_path / "g.png"))
    assert not (tmp_path / "g.png").exists()


def test_grid_8x8_at_least_256px_and_square(tmp_path):
    from ebmtool.images import save_grid

    imgs = torch.randint(0, 256, (64, 1, 8, 8), dtype=torch.uint8)
    save_grid(imgs, str(tmp_path / "g.png"))
    with Image.open(tmp_path / "g.png") as im:
        assert im.width >= 256 and im.height >= 256 and im.width == im.height
        w1 = im.width
        # nearest neighbour: every pixel of a cell is one value (no smoothing)
        a = np.asarray(im.convert("L"))
    k = w1 // (8 * 9 + 1)
    assert k * (8 * 9 + 1) == w1
    cell = a[k: k + 8 * k, k: k + 8 * k]  # first image (after the 1-px, k-times padding)
    blocks = cell.reshape(8, k, 8, k)
    assert (blocks == blocks[:, :1, :, :1]).all()
    assert np.array_equal(blocks[:, 0, :, 0], imgs[0, 0].numpy())
    # explicit --scale; 10 images -> 4 per row (ceil sqrt)
    save_grid(imgs[:10], str(tmp_path / "s.png"), scale=2)
    with Image.open(tmp_path / "s.png") as im:
        assert im.size == ((4 * 9 + 1) * 2, (3 * 9 + 1) * 2)
    with pytest.raises(UserError, match="--scale"):
        save_grid(imgs, str(tmp_path / "z.png"), scale=0)


def test_trajectory_png_one_row_per_chain(tmp_path, mle_model):
    from ebmtool import artifacts, stages

    stages.sample(str(mle_model), 8, out=str(tmp_path / "t.safetensors"), steps=6, trajectory_every=2,
                  trajectory_png=str(tmp_path / "t.png"), device="cpu")
    t = artifacts.load(tmp_path / "t.safetensors").tensors["trajectory.images"]  # (T, chains, C, H, W)
    T, chains, _, h, w = t.shape
    assert (T, chains) == (4, 8)
    with Image.open(tmp_path / "t.png") as im:
        a = np.asarray(im.convert("L"))
    k = a.shape[0] // (chains * (h + 1) + 1)
    assert k >= 2 and a.shape == (k * (chains * (h + 1) + 1), k * (T * (w + 1) + 1))  # >= 256 px tall
    a = a[::k, ::k]
    for c in (0, 5):  # row c is chain c, time runs left to right
        row = [a[1 + c * (h + 1):][:h, 1 + j * (w + 1):][:, :w] for j in range(T)]
        assert all(np.array_equal(row[j], t[j, c, 0].numpy()) for j in range(T))


def test_plot_command_figures(tmp_path, nce_model, mle_model, digits_ds):
    from conftest import run_cli

    r = run_cli(["plot", str(nce_model), "-o", str(tmp_path / "nce.svg")]).ok()
    svg = (tmp_path / "nce.svg").read_text()
    assert "NCE loss (nats)" in svg and "chance 2 ln 2" in svg, r.out
    run_cli(["plot", str(mle_model), "-o", str(tmp_path / "mle.png")]).ok()
    assert "matplotlib" in _software(tmp_path / "mle.png").lower()
    run_cli(["plot", str(digits_ds), "-o", str(tmp_path / "d.png"), "--scale", "3"]).ok()
    with Image.open(tmp_path / "d.png") as im:
        assert im.size == (3 * (10 * 9 + 1), 3 * (10 * 9 + 1))  # 100 digits, 10 per row
    bad = run_cli(["plot", str(mle_model), "-o", str(tmp_path / "x.gif")])
    assert bad.code == 2 and len(bad.err_lines) == 1 and ".png, .pdf or .svg" in bad.err
    bad = run_cli(["plot", str(digits_ds), "-o", str(tmp_path / "d.svg")])
    assert bad.code == 2 and len(bad.err_lines) == 1 and ".png" in bad.err


@pytest.mark.parametrize("shape", [(0, 1, 4, 4), (1, 4, 4), (4, 4)])
def test_tile_refuses_what_is_not_a_batch_of_images(shape):
    from ebmtool.images import tile

    with pytest.raises(ValueError, match=r"expected images \(N >= 1, C, H, W\)"):
        tile(torch.zeros(shape), 2)
