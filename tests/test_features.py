"""train-features: a LeNet-style classifier trained with early stopping; its held-out accuracy is recorded in the
features artifact and in every FID JSON, and ``fid --features`` warns in one line when it is below 0.9."""

from __future__ import annotations

import json
import time

import pytest
import torch

from ebmtool import artifacts
from ebmtool.eval import fid as F

from conftest import SHARED_MNIST, _prepare, need_shared_mnist, run_cli


@pytest.fixture(scope="module")
def digits_full(tmp_path_factory):
    return _prepare(tmp_path_factory.mktemp("features") / "digits.safetensors", dataset="digits")


@need_shared_mnist
def test_default_reaches_097_on_mnist_32(tmp_path):
    """The defaults (LeNet, early stopping) on the 10,000 MNIST test images at 32x32: 8,100 train, 900 for early
    stopping, 1,000 held out. Measured with every default: 0.982 (seed 0; seeds 1, 2: 0.971, 0.982); seed 0 keeps
    epoch 4 and stops after epoch 6 (20-35 s on 1 thread). Training is deterministic and the learning rate changes
    only after a plateau, so capping at 4 epochs keeps exactly the default's weights for a third of the time."""
    data = _prepare(tmp_path / "mnist32.safetensors", dataset="mnist", root=str(SHARED_MNIST), split="test", size=32)
    t0 = time.process_time()  # CPU time of this process: a budget that other busy processes do not inflate
    res = F.train_features(data, tmp_path / "f.safetensors", seed=0, epochs=4)
    seconds = time.process_time() - t0
    assert res.accuracy >= 0.97, res
    assert res.n_test == 1000 and res.n_val == 900 and res.n_train == 8100
    assert res.best_epoch == 4
    meta = artifacts.load(tmp_path / "f.safetensors", kind="features").meta
    assert meta["arch"] == "lenet" and meta["accuracy"] == res.accuracy and meta["feature_dim"] == 128
    assert seconds < 120, seconds


def test_early_stopping_keeps_the_best_validation_epoch(digits_full, tmp_path):
    res = F.train_features(digits_full, tmp_path / "f.safetensors", epochs=40, patience=1, seed=0)
    assert res.epochs < 40 and res.epochs == res.best_epoch + 1
    meta = artifacts.load(tmp_path / "f.safetensors", kind="features").meta
    assert meta["best_epoch"] == res.best_epoch and meta["epochs_run"] == res.epochs
    assert meta["val_accuracy"] == res.val_accuracy and 0.9 < res.accuracy <= 1.0
    # the artifact holds the best epoch's weights: its test accuracy is the one recorded
    ex = F.ClassifierExtractor(tmp_path / "f.safetensors")
    d = artifacts.load(digits_full, kind="dataset")
    g = torch.Generator(device="cpu").manual_seed(0)
    test_idx = torch.randperm(len(d.tensors["labels"]), generator=g, device="cpu")[:res.n_test]
    with torch.no_grad():
        pred = ex.model(F.images_to_float(d.tensors["images"][test_idx])).argmax(1)
    assert float((pred == d.tensors["labels"][test_idx]).float().mean()) == pytest.approx(res.accuracy)


def test_fid_warns_in_one_line_when_the_classifier_is_weak(digits_full, tmp_path):
    d = artifacts.load(digits_full, kind="dataset")
    g = torch.Generator(device="cpu").manual_seed(1)
    shuffled = artifacts.save(tmp_path / "shuffled.safetensors", "dataset", {
        "images": d.tensors["images"], "labels": d.tensors["labels"][torch.randperm(len(d.tensors["labels"]), generator=g)]})
    weak = F.train_features(shuffled, tmp_path / "weak.safetensors", epochs=2, seed=0)
    strong = F.train_features(digits_full, tmp_path / "strong.safetensors", epochs=3, seed=0)
    assert weak.accuracy < 0.5 and strong.accuracy > 0.9

    r = run_cli(["fid", "--samples", digits_full, "--ref", digits_full, "--features", tmp_path / "weak.safetensors",
                 "--json", "--cache-dir", tmp_path / "cache"]).ok()
    acc_lines = [ln for ln in r.err_lines if "held-out accuracy" in ln]
    assert len(acc_lines) == 1 and acc_lines[0].startswith("ebmtool: warning:") and "< 0.9" in acc_lines[0], r.err
    assert "Traceback" not in r.err
    res = json.loads(r.out)
    assert res["classifier_accuracy"] == pytest.approx(weak.accuracy)
    assert any("held-out accuracy" in w for w in res["warnings"])

    r = run_cli(["fid", "--samples", digits_full, "--ref", digits_full, "--features", tmp_path / "strong.safetensors",
                 "--json", "--cache-dir", tmp_path / "cache"]).ok()
    assert not [ln for ln in r.err_lines if "held-out accuracy" in ln], r.err
    assert json.loads(r.out)["classifier_accuracy"] == pytest.approx(strong.accuracy)
