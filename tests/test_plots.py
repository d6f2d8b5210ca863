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
    assert {"stage 1", "stage 2"} <= set(_legend(ax))  # stages counted from 1, as the CLI counts them
    chance = [ln for ln in ax.get_lines() if ln.get_label().startswith("chance")]
    assert len(chance) == 1 and np.allclose(chance[0].get_ydata(), 2 * math.log(2))
    # epochs are whole numbers: no tick at 5.75
    assert all(float(t).is_integer() for t in ax.get_xticks())
    # epochs continue across stages, on one line through all of them
    stage2 = [ln for ln in ax.get_lines() if ln.get_label() == "stage 2"][0]
    assert list(stage2.get_xdata()) == [4, 5, 6]
    every = [ln for ln in ax.get_lines() if ln.get_label() == "all epochs"][0]
    assert list(every.get_xdata()) == [1, 2, 3, 4, 5, 6]


def test_nce_chart_with_one_epoch_per_stage_draws_a_line(tmp_path):
    """issue 32 §5: one epoch per stage showed isolated dots, numbered from 0."""
    fig = plots.nce_curves_png({0: [1.30], 1: [1.35], 2: [1.37]}, str(tmp_path / "nce.png"), title="t")
    ax = fig.axes[0]
    every = [ln for ln in ax.get_lines() if ln.get_label() == "all epochs"][0]
    assert list(every.get_xdata()) == [1, 2, 3] and list(every.get_ydata()) == [1.30, 1.35, 1.37]
    assert every.get_linestyle() == "-" and _legend(ax)[1:4] == ["stage 1", "stage 2", "stage 3"]
    legend = ax.get_legend().get_window_extent(fig.canvas.get_renderer())
    assert legend.x0 >= ax.get_window_extent(fig.canvas.get_renderer()).x1  # beside the axes, over no curve


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
    fig = plots.loss_curves_png({"loss_g": [1030, 1010, 1000], "loss_e": [.52, .5, .49], "grad_norm": [5, 3, 2]},
                                str(tmp_path / "l.png"), title="mle")
    # issue 32 §5: loss_e (~0.5) and loss_g (~1000) each on its own axis, named by the panel's title, no legend
    assert [ax.get_title() for ax in fig.axes] == ["loss_g", "loss_e", "grad_norm"]
    assert all(ax.get_legend() is None and ax.get_xlabel() == "epoch" for ax in fig.axes)
    lo, hi = fig.axes[1].get_ylim()
    assert lo > 0.4 and hi < 0.6  # loss_e's own scale, not a flat line under loss_g's
    assert fig.axes[0].get_ylabel().startswith("loss (nats") and fig.get_suptitle() == "mle"


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


def test_plot_titles_name_model_data_and_anomaly_class(tmp_path, mle_model, nce_model, digits_ds, monkeypatch):
    from conftest import run_cli

    from ebmtool import artifacts, stages
    from ebmtool.eval.plots import plot_artifact

    fig_of = {}
    orig = plots.save_figure

    def keep(fig, path, dpi=150, force=True):
        fig_of[path.rsplit("/", 1)[-1]] = fig
        orig(fig, path, dpi, force)

    monkeypatch.setattr(plots, "save_figure", keep)
    plot_artifact(artifacts.load(mle_model), str(tmp_path / "m.png"))
    plot_artifact(artifacts.load(nce_model), str(tmp_path / "n.png"))
    stages.anomaly(str(mle_model), str(digits_ds), positive=[3], out=str(tmp_path / "a.safetensors"), steps=2,
                   device="cpu", quiet=True)
    plot_artifact(artifacts.load(tmp_path / "a.safetensors"), str(tmp_path / "a.png"))
    monkeypatch.undo()
    assert fig_of["m.png"].get_suptitle() == f"training: mle model {mle_model.name} on {digits_ds.name}"
    assert fig_of["n.png"].axes[0].get_title() == \
        f"NCE loss per stage: adaptive-nce model {nce_model.name} on {digits_ds.name}"
    assert fig_of["a.png"].get_suptitle() == f"{mle_model.name} on {digits_ds.name}: anomaly class 3 (joint score)"
    assert run_cli(["plot", str(tmp_path / "a.safetensors"), "-o", str(tmp_path / "a2.svg")]).code == 0
    assert "anomaly class 3" in (tmp_path / "a2.svg").read_text()


def test_plot_of_a_trajectory_draws_the_chains_image_grid(tmp_path, mle_model):
    """issue 32 §5: ``plot`` of ``sample --trajectory`` drew a 3-point energy profile, not the promised grid."""
    from conftest import run_cli

    from ebmtool import artifacts
    from ebmtool.images import tile

    s = tmp_path / "t.safetensors"
    run_cli(["sample", "--model", mle_model, "-n", "8", "--steps", "6", "--trajectory", "2", "-o", s,
             "--device", "cpu", "--quiet"]).ok()
    r = run_cli(["plot", s, "-o", tmp_path / "t.png"]).ok()
    assert "images and energy" in r.out
    fig = plots.trajectory_figure([0, 2, 4, 6], artifacts.load(s).tensors["trajectory.images"],
                                  artifacts.load(s).tensors["trajectory.log_prob"].numpy(), str(tmp_path / "u.png"))
    grid_ax, energy_ax = fig.axes
    t = artifacts.load(s).tensors["trajectory.images"]  # (T, chains, C, H, W)
    shown = grid_ax.get_images()[0].get_array()
    expect = tile(t.transpose(0, 1).reshape(-1, *t.shape[2:]), nrow=t.shape[0]).permute(1, 2, 0).numpy()
    assert np.array_equal(np.asarray(shown), expect)  # one row per chain, time left to right
    assert [x.get_text() for x in grid_ax.get_xticklabels()] == ["0", "2", "4", "6"]
    assert energy_ax.get_xlabel() == "Langevin step"


def test_reconstruction_grid_has_a_header_naming_real_and_reconstructed(tmp_path, mle_model, digits_ds):
    from conftest import run_cli

    run_cli(["reconstruct", "--model", mle_model, "--data", digits_ds, "--steps", "2", "--grid", tmp_path / "r.png",
             "--device", "cpu", "--quiet"]).ok()
    with Image.open(tmp_path / "r.png") as im:
        a = np.asarray(im.convert("L"))
    k = a.shape[1] // (16 * 9 + 1)  # 16 columns (8 pairs) of 8x8 images, scaled by k
    grid_h = k * (4 * 9 + 1)  # 32 pairs: 4 rows
    strip = a[: a.shape[0] - grid_h]
    assert strip.shape[0] >= 8 and (strip == 255).mean() > 0.8 and (strip < 100).any()  # white, with black text
    assert a.shape[1] == k * (16 * 9 + 1)
