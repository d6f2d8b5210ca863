"""recipes/*.mk: `make -j2 tables SCALE=smoke` (through make, as a user runs it) builds every table of the seeds,
each in results/<table>.md with the paper's numbers beside a measured one, and leaves each table's target nothing to
do; artifacts chain through files (a second make does nothing, a touched input re-runs only what depends on it); a
missing download stops with one line.

Everything is written under a temporary RUNS/RESULTS, never into the repository. The targets share one RUNS
folder, so the whole module costs one smoke run of every recipe (`make -j2 tables`; a few minutes on a 2-core CPU).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, need_shared_mnist

# target -> (results file, strings of the paper's numbers that must appear in it)
TABLES = {
    "lebm-table1": ("lebm-table1.md", ["29.44", "0.008", "70.15", "0.013", "37.87", "106.37"]),
    "lebm-table4": ("lebm-table4.md", ["0.336 ± 0.008", "0.630 ± 0.017", "0.413 ± 0.010", "0.063"]),
    "ance-table1": ("ance-table1.md", ["26.19", "0.004", "35.38", "65.01", "0.008"]),
    "ance-table2": ("ance-table2.md", ["0.531 ± 0.02", "0.742 ± 0.01", "0.499 ± 0.01"]),
    "ance-table3": ("ance-table3.md", ["62.78", "44.17", "35.38", "35.84", "43.84", "42.48", "43.06"]),
    "joint-table1": ("joint-table1.md", ["26.81", "33.60", "66.32"]),
    "joint-table4": ("joint-table4.md", ["0.470 ± 0.009", "0.941 ± 0.001", "0.796 ± 0.004", "0.770 ± 0.024"]),
    "bidvl-table1": ("bidvl-table1.md", ["20.75", "17.24", "109.5"]),
    "bidvl-table3": ("bidvl-table3.md", ["0.168", "0.187"]),
    "bidvl-table4": ("bidvl-table4.md", ["0.76", "0.77", "0.83"]),
    "bidvl-table5": ("bidvl-table5.md", ["22.62", "20.75", "21.90", "26.82", "29.72"]),
    "anomaly-table": ("smoke-anomaly.md", ["0.336 ± 0.008", "0.531 ± 0.02", "0.941 ± 0.001"]),
}
ANOMALY_TABLES = {"lebm-table4", "ance-table2", "joint-table4", "anomaly-table"}
FID_TABLES = {"lebm-table1", "ance-table1", "ance-table3", "joint-table1", "bidvl-table1", "bidvl-table5"}
NUMBER = re.compile(r"(?<![\w.])\d+\.\d+(?![\w.])")


def make(*args: str, timeout: float = 1800) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("MAKEFLAGS", None)
    env.pop("MFLAGS", None)
    return subprocess.run(["make", "-C", str(REPO), "--no-print-directory", *args], capture_output=True, text=True,
                          env=env, timeout=timeout)


@pytest.fixture(scope="module")
def where(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("recipes")
    return {"RUNS": str(d / "runs"), "RESULTS": str(d / "results"), "root": str(d)}


def smoke(where, *args: str, **kw) -> subprocess.CompletedProcess:
    return make(*args, "SCALE=smoke", f"RUNS={where['RUNS']}", f"RESULTS={where['RESULTS']}", **kw)


@pytest.fixture(scope="module")
def all_tables(where) -> subprocess.CompletedProcess:
    """One `make -j2 tables SCALE=smoke`, as recipes/common.mk documents it: make sees every table's stages at once
    and keeps both job slots busy (twelve one-table makes ran their chains one stage at a time). -k: a table that
    fails leaves the others built, and its own test names it."""
    return smoke(where, "-k", "-j2", "tables")


def measured_cells(text: str) -> list[str]:
    """The cells of ebmtool's measurements: its rows, or the ebmtool column of the ablation table."""
    lines = text.splitlines()
    rows = [ln for ln in lines if ln.startswith("| **ebmtool") or ln.startswith("| **FID (ebmtool")]
    cells = [c.strip() for row in rows for c in row.strip("|").split("|")[1:]]
    if "| FID (ebmtool) |" in text:  # adaptive-NCE Table 3: one column per source, one row per stage count
        body = [ln for ln in lines if re.match(r"\| [\w-]* \| \d+ \|", ln)]
        cells += [ln.strip("|").split("|")[-1].strip() for ln in body]
    return cells


def test_make_tables_at_smoke_scale_succeeds(all_tables):
    assert all_tables.returncode == 0, f"make tables failed:\n{all_tables.stdout[-3000:]}\n{all_tables.stderr[-3000:]}"


@pytest.mark.parametrize("target", list(TABLES))
def test_smoke_recipe_writes_its_table(where, all_tables, target):
    name, paper = TABLES[target]
    md = Path(where["RESULTS"]) / name
    assert md.is_file(), f"make tables did not write {md}:\n{all_tables.stdout[-3000:]}\n{all_tables.stderr[-3000:]}"
    plan = smoke(where, "-n", target)  # the target alone has nothing left to do: `tables` built all it needs
    assert plan.returncode == 0 and "ebmtool" not in plan.stdout and "table.py" not in plan.stdout, plan.stdout
    text = md.read_text()
    for number in paper:
        assert number in text, f"{name}: paper number {number} missing"
    cells = measured_cells(text)
    measured = [c for c in cells if NUMBER.search(c)]
    assert measured, f"{name}: no measured number among ebmtool's cells {cells}"
    if target == "ance-table3":
        assert len(measured) == 10, cells  # 0/1/2/4/8 stages, adaptive and non-adaptive
    assert "Scale: **smoke**" in text and "Wall time:" in text and f"make {target} SCALE=smoke" in text
    assert "Data actually used" in text
    png = md.with_suffix(".png")  # the table's figure beside it, linked from it
    assert png.is_file() and f"]({png.name})" in text
    if target in FID_TABLES:
        assert "FID feature space" in text and "train-features" in text
        assert "not comparable with the papers' Inception FIDs" in text
    if target in ANOMALY_TABLES:
        assert "PCA" in text and "0-stage" in text  # the two same-split baselines
    for ln in text.splitlines():  # the run records live under RUNS, never in the repository
        assert str(REPO / "runs") not in ln


def test_second_make_does_nothing_and_a_touched_input_reruns_only_its_dependents(where, all_tables):
    for name, _ in TABLES.values():
        md = Path(where["RESULTS"]) / name
        if not md.exists():
            pytest.skip(f"make tables did not write {name} (test_smoke_recipe_writes_its_table says why)")
        q = smoke(where, "-q", str(md))
        assert q.returncode == 0, f"{md.name} is not up to date after make tables:\n{smoke(where, '-n', str(md)).stdout}"
    runs = Path(where["RUNS"]) / "smoke"
    feats = next(runs.glob("digits32/features.safetensors"))
    os.utime(feats)  # newer FID feature space: FIDs and tables re-run, no training, no sampling
    n = smoke(where, "-n", "lebm-table1")
    assert n.returncode == 0
    assert "ebmtool fid" in n.stdout and "table.py render lebm-table1" in n.stdout
    for stage in ("fit-prior", "pretrain-generator", "ebmtool sample", "data prepare", "reconstruct"):
        assert stage not in n.stdout, f"touching the features re-runs {stage}:\n{n.stdout}"
    assert smoke(where, "lebm-table1").returncode == 0
    assert smoke(where, "-q", str(Path(where["RESULTS"]) / "lebm-table1.md")).returncode == 0


@pytest.mark.parametrize("scale,target,missing", [
    ("cpu", "lebm-table1", "SVHN is missing"),
    ("cpu", "ance-table3", "CelebA is missing"),
    ("paper", "bidvl-table5", "CIFAR-10 is missing"),
    ("paper", "lebm-table4", "MNIST (train split) is missing"),
])
def test_missing_download_stops_with_one_line_and_exit_2(tmp_path, scale, target, missing):
    empty = tmp_path / "data"
    empty.mkdir()
    r = make(target, f"SCALE={scale}", f"DATA_ROOT={empty}", f"RUNS={tmp_path / 'runs'}", f"RESULTS={tmp_path / 'res'}")
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert missing in lines[0] and "--download" in lines[0] and "data prepare" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "res").exists()


@need_shared_mnist
def test_cpu_anomaly_plans_every_digit_seed_and_method(tmp_path):
    r = make("-n", "cpu-anomaly", f"RUNS={tmp_path / 'runs'}", f"RESULTS={tmp_path / 'res'}")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for k in (1, 4, 5, 7, 9):
        assert f"--anomaly-protocol {k} --part train" in out and f"--anomaly-protocol {k} --part test" in out
        for s in (0, 1, 2):
            for m in ("pretrain", "mle", "adaptive-nce", "joint-mle", "pca"):
                assert f"/cpu/anomaly/d{k}-s{s}/{m}.anomaly.json" in out
    assert "--preset cpu" in out and "cpu-anomaly.md" in out
    assert not (tmp_path / "runs").exists()


def test_tables_target_lists_every_table():
    r = make("-n", "-p", "tables", "RUNS=/nonexistent/runs", "RESULTS=/nonexistent/results")
    line = next(ln for ln in r.stdout.splitlines() if ln.startswith("tables: "))
    for name, _ in TABLES.values():
        assert f"/nonexistent/results/{name}" in line
