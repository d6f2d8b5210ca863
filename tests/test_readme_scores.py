"""The label-free score workflow of docs/usage.md ("Anomaly scores and metrics") (prepare fit/calibration/test parts of the shared MNIST test set,
pretrain, fit an LEBM prior, score with --score dose --calibrate), run verbatim by bash in a temporary folder
whose data/mnist is the shared MNIST test set. About a minute on one core."""

from __future__ import annotations

import json
import os
import re
import subprocess

from conftest import REPO, SHARED_MNIST, ebmtool_command, need_shared_mnist


def readme_scores_block() -> str:
    text = (REPO / "docs" / "usage.md").read_text()
    blocks = [b for b in re.findall(r"```bash\n(.*?)```", text, flags=re.S) if "--calibrate" in b]
    assert len(blocks) == 1, "docs/usage.md shows one label-free score workflow"
    return blocks[0]


@need_shared_mnist
def test_readme_label_free_score_workflow_verbatim(tmp_path):
    block = readme_scores_block()
    assert "--force" not in block
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "mnist").symlink_to(SHARED_MNIST.resolve())
    bin_dir = tmp_path / "bin"  # `ebmtool` on PATH is the entry point under test
    bin_dir.mkdir()
    (bin_dir / "ebmtool").write_text("#!/bin/sh\nexec " + " ".join(f"'{a}'" for a in ebmtool_command()) + ' "$@"\n')
    (bin_dir / "ebmtool").chmod(0o755)
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}", OMP_NUM_THREADS="1", COLUMNS="200")
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-2000:]
    res = json.loads(p.stdout.strip().splitlines()[-1])
    assert res["score"] == "dose" and res["anomaly_classes"] == [1]
    assert res["n"] == 2908 and res["n_anomalous"] == 1135  # the clean hold-one-digit test part of MNIST's test set
    assert 0.0 < res["auprc"] <= 1.0 and res["calibration_mean_joint"] > 0
    for part in ("fit", "calibration", "test"):
        assert (tmp_path / f"mnist-no1-{part}.safetensors").is_file()
    assert (tmp_path / "lebm-fit.safetensors").is_file()
