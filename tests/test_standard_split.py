"""The standard MNIST anomaly split (``data prepare --anomaly-split standard``, issue 35): the training file's
normals train (90% fit, 10% calibration), the whole test file is the test part. Checked on a tiny IDX set."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ebmtool import artifacts
from ebmtool.data import DataConfig, prepare

from conftest import run_cli
from test_data import _write_split

K = 3


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    w = tmp_path_factory.mktemp("std")
    train = _write_split(w, "train", 200, seed=11, gz=False)
    test = _write_split(w, "test", 60, seed=12, gz=True)
    return w, train, test


def _rows(images: np.ndarray) -> set[bytes]:
    return {r.tobytes() for r in images}


def test_parts_are_disjoint_and_have_the_standard_proportions(raw):
    w, (tr_img, tr_lab), (te_img, te_lab) = raw
    parts = {}
    for part in ("train", "fit", "calibration", "test"):
        t, meta = prepare(DataConfig(dataset="mnist", root=str(w), split="train+test", anomaly_protocol=K,
                                     part=part, anomaly_split="standard"))
        parts[part] = t
        assert meta["protocol"]["split"] == "standard" and meta["protocol"]["n_train_file"] == 200
    # the test part is the whole test file, in order, normals and class K alike
    assert np.array_equal(parts["test"]["images"][:, 0].numpy(), te_img)
    assert np.array_equal(parts["test"]["labels"].numpy(), te_lab.astype(np.int64))
    # the training part is every normal of the training file, and nothing else
    normal = tr_lab != K
    assert np.array_equal(parts["train"]["images"][:, 0].numpy(), tr_img[normal])
    assert (parts["train"]["labels"] != K).all()
    # fit + calibration partition the training part, 90/10
    n = int(normal.sum())
    assert len(parts["calibration"]["labels"]) == round(0.1 * n)
    assert len(parts["fit"]["labels"]) + len(parts["calibration"]["labels"]) == n
    fit, cal = _rows(parts["fit"]["images"][:, 0].numpy()), _rows(parts["calibration"]["images"][:, 0].numpy())
    assert not fit & cal and fit | cal == _rows(tr_img[normal])
    # no image of the test file is in a training piece (the random images are distinct with near certainty)
    assert not _rows(te_img) & (fit | cal)


def test_the_split_is_the_same_bytes_on_two_calls(raw, tmp_path):
    w = raw[0]
    outs = []
    for i in range(2):
        o = tmp_path / f"fit{i}.safetensors"
        r = run_cli(["data", "prepare", "--dataset", "mnist", "--root", str(w), "--split", "train+test",
                     "--anomaly-protocol", str(K), "--anomaly-split", "standard", "--part", "fit", "-o", str(o), "-q"])
        assert r.code == 0, r.err
        outs.append(artifacts.load(o).tensors)
    assert all(torch.equal(outs[0][k], outs[1][k]) for k in ("images", "labels"))


@pytest.mark.parametrize("argv, says", [
    (["--split", "train"], "--split train+test"),
    (["--split", "train+test", "--test-permutation", "second"], "no permutation"),
])
def test_misuse_is_one_line(raw, tmp_path, argv, says):
    o = tmp_path / "x.safetensors"
    r = run_cli(["data", "prepare", "--dataset", "mnist", "--root", str(raw[0]), "--anomaly-protocol", str(K),
                 "--anomaly-split", "standard", "--part", "test", *argv, "-o", str(o)])
    assert r.code == 2 and says in r.err and "Traceback" not in r.err and not o.exists()
