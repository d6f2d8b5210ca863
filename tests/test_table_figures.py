"""recipes/table.py render writes each results/<table>.md with its matplotlib figure beside it (fabricated run
records: seconds, no training; the smoke recipes in test_recipes.py check the same on real runs)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def _w(p: Path, d: dict) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(d))


def _render(tmp_path: Path, *args: str) -> dict:
    r = subprocess.run([sys.executable, str(REPO / "recipes" / "table.py"), "render", *args], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def _check(tmp_path: Path, md: str) -> str:
    md_p = tmp_path / md
    png = md_p.with_suffix(".png")
    text = md_p.read_text()
    assert f"]({png.name})" in text.splitlines()[2]  # linked right under the title
    with Image.open(png) as im:
        assert "matplotlib" in im.info.get("Software", "").lower()
    assert png.stat().st_size < 400_000
    return text


def test_anomaly_table_figure(tmp_path):
    runs = tmp_path / "runs"
    for k in (1, 4):
        for s in (0, 1):
            for m in ("mle", "pretrain", "pca"):
                _w(runs / "anomaly" / f"d{k}-s{s}" / f"{m}.anomaly.json",
                   {"auprc": 0.3 + 0.1 * s, "average_precision": 0.4, "auroc": 0.7, "n": 500, "n_anomalous": 100})
    out = _render(tmp_path, "lebm-table4", "-o", "res/lebm-table4.md", "--scale", "smoke", "--runs", str(runs),
                  "--digits", "1", "4", "--seeds", "0", "1")
    assert out["figure"] == "res/lebm-table4.png"
    _check(tmp_path, "res/lebm-table4.md")


def test_figure_data_is_the_tables(tmp_path):
    """The figure's numbers are the table's: AUPRC lists per digit and method, random = anomaly fraction."""
    sys.path.insert(0, str(REPO / "recipes"))
    import table

    runs = tmp_path / "runs"
    for s, v in ((0, 0.5), (1, 0.7)):
        _w(runs / "anomaly" / f"d1-s{s}" / "mle.anomaly.json", {"auprc": v, "n": 400, "n_anomalous": 100})
    ctx = table.Ctx(type("A", (), {"runs": str(runs), "col": [], "digits": [1], "seeds": [0, 1], "scale": "smoke"})())
    fig = table.anomaly_figure(ctx, table.papers.LEBM_T4, ["mle"])
    results, random, reference = fig["auprc"]
    assert results == {"ebmtool mle": {1: [0.5, 0.7]}} and random == {1: 0.25}
    assert all(set(v) <= {1} for v in reference.values()) and any(v for v in reference.values())


@pytest.mark.parametrize("tbl", ["lebm-table1", "bidvl-table4", "ance-table3"])
def test_generation_tables_have_paper_and_ebmtool_panels(tmp_path, tbl):
    runs = tmp_path / "runs"
    for stem in ("mle", "pretrain", "ance1", "ance2", "ance4", "ance8", "tre1", "tre2", "tre4", "tre8"):
        _w(runs / "d32" / f"{stem}.fid.json", {"value": 30.0, "extractor": "classifier f.safetensors"})
        _w(runs / "d32" / f"{stem}.recon.json", {"mse": 0.05})
    for ood in ("random", "svhn", "celeba"):
        _w(runs / "d32" / f"bidvl-r0.05.ood-{ood}.json", {"auroc": 0.8, "auprc": 0.7, "n": 100, "n_anomalous": 50,
                                                          "ood_data": "x"})
    cols = [f"--col={c}=d32" for c in ("svhn", "cifar10", "celeba", "ood-svhn", "ood-celeba")]
    _render(tmp_path, tbl, "-o", f"res/{tbl}.md", "--scale", "smoke", "--runs", str(runs), *cols)
    _check(tmp_path, f"res/{tbl}.md")
