"""`make <table> SCALE=paper DOWNLOAD=1` fetches the datasets it lacks (`ebmtool data prepare --download`) and the
pytorch-fid Inception weights (into the torch hub cache) before any work; a failed fetch (no network) stops with
one line, exit 2. The downloaders are replaced by fakes (FETCH / FETCH_INCEPTION): nothing here uses the network."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO

FAKE = r'''#!/bin/sh
echo "$@" >> "$FAKE_LOG"
[ -n "$FAKE_FAIL" ] && exit 1
ds=""; root=""
while [ $# -gt 0 ]; do case "$1" in --dataset) ds=$2; shift;; --root) root=$2; shift;; esac; shift; done
case "$ds" in
  svhn) mkdir -p "$root"; touch "$root/train_32x32.mat" "$root/test_32x32.mat";;
  cifar10) mkdir -p "$root/cifar-10-batches-py"; touch "$root/cifar-10-batches-py/test_batch";;
  celeba) mkdir -p "$root/celeba/img_align_celeba";;
  mnist) mkdir -p "$root/MNIST/raw"; touch "$root/MNIST/raw/train-images-idx3-ubyte";;
esac
'''
FAKE_INCEPTION = '#!/bin/sh\necho "inception $@" >> "$FAKE_LOG"\n[ -n "$FAKE_FAIL" ] && exit 1\nmkdir -p "$(dirname "$1")" && touch "$1"\n'

GEN = {"svhn", "cifar10", "celeba", "inception"}
NEEDS = {  # target -> what a paper-scale run fetches into an empty DATA_ROOT and torch hub
    "lebm-table1": GEN, "ance-table1": GEN, "joint-table1": GEN, "ance-table3": {"celeba", "inception"},
    "bidvl-table1": {"cifar10", "celeba", "inception"}, "bidvl-table3": {"cifar10", "celeba"},
    "bidvl-table4": {"cifar10", "svhn", "celeba"}, "bidvl-table5": {"cifar10", "inception"},
    "lebm-table4": {"mnist"}, "ance-table2": {"mnist"}, "joint-table4": {"mnist"}, "anomaly-table": {"mnist"},
    "tables": GEN | {"mnist"},
}


def paper_make(tmp: Path, target: str, *extra: str, fail: bool = False, download: bool = True):
    for name, text in (("fetch", FAKE), ("fetch-inception", FAKE_INCEPTION)):
        (tmp / name).write_text(text)
        (tmp / name).chmod(0o755)
    env = dict(os.environ, FAKE_LOG=str(tmp / "log"), TORCH_HOME=str(tmp / "torch"), PYTHONDONTWRITEBYTECODE="1")
    env.pop("XDG_CACHE_HOME", None)
    env.pop("MAKEFLAGS", None)
    if fail:
        env["FAKE_FAIL"] = "1"
    args = ["make", "-C", str(REPO), "--no-print-directory", *extra, target, "SCALE=paper",
            f"DATA_ROOT={tmp / 'data'}", f"RUNS={tmp / 'runs'}", f"RESULTS={tmp / 'res'}",
            f"FETCH={tmp / 'fetch'} data prepare", f"FETCH_INCEPTION={tmp / 'fetch-inception'}"]
    if download:
        args.append("DOWNLOAD=1")
    return subprocess.run(args, capture_output=True, text=True, env=env, timeout=120)


def fetched(tmp: Path) -> list[str]:
    log = tmp / "log"
    return log.read_text().splitlines() if log.exists() else []


@pytest.mark.parametrize("target", list(NEEDS))
def test_download_fetches_what_each_paper_table_lacks_then_plans_the_work(tmp_path, target):
    r = paper_make(tmp_path, target, "-n")
    assert r.returncode == 0, r.stderr
    calls = fetched(tmp_path)
    got = {c.split()[0] if c.startswith("inception") else c.split("--dataset ")[1].split()[0] for c in calls}
    assert got == NEEDS[target], calls
    for c in calls:
        if not c.startswith("inception"):
            assert c.startswith("data prepare --dataset") and "--download" in c and f"--root {tmp_path / 'data'}" in c
    if "inception" in got:
        hub = tmp_path / "torch" / "hub" / "checkpoints" / "pt_inception-2015-12-05-6726825d.pth"
        assert f"inception {hub}" in calls and hub.exists()
    if "svhn" in got:  # both splits
        assert sum("--dataset svhn" in c for c in calls) == 2
    assert "ebmtool " in r.stdout  # the plan of the table's work follows
    # a second make finds everything and fetches nothing
    (tmp_path / "log").unlink()
    assert paper_make(tmp_path, target, "-n").returncode == 0 and fetched(tmp_path) == []


@pytest.mark.parametrize("target,first", [("lebm-table1", "svhn"), ("lebm-table4", "mnist"), ("bidvl-table5", "cifar10")])
def test_a_failed_fetch_stops_with_one_line_and_exit_2(tmp_path, target, first):
    r = paper_make(tmp_path, target, fail=True)
    assert r.returncode == 2
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, r.stderr
    assert f"{first}: DOWNLOAD=1 could not fetch it (no network?)" in lines[0] and "--download" in lines[0]
    assert not (tmp_path / "runs").exists() and not (tmp_path / "res").exists()


def test_without_download_the_missing_data_line_stays_and_nothing_is_fetched(tmp_path):
    r = paper_make(tmp_path, "lebm-table1", download=False)
    assert r.returncode == 2 and fetched(tmp_path) == []
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "SVHN is missing" in lines[0]
