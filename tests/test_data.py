"""data: loaders, filters, the hold-one-class anomaly protocol, resizing, limits, MNIST from IDX files."""

from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest
import torch

from ebmtool import artifacts, stages
from ebmtool.data import DataConfig, load_images, prepare, protocol_split
from ebmtool.data.sources import ring_means, synthetic_generator
from ebmtool.errors import UserError

from conftest import MNIST_TEST_COUNTS, SHARED_MNIST, need_shared_mnist, run_cli


@pytest.fixture(scope="module")
def digits():
    t, meta = prepare(DataConfig(dataset="digits"))
    return t, meta


def test_digits_shapes_and_range(digits):
    t, meta = digits
    x, y = t["images"], t["labels"]
    assert x.shape == (1797, 1, 8, 8) and x.dtype == torch.uint8
    assert y.shape == (1797,) and y.dtype == torch.int64
    assert int(x.min()) == 0 and int(x.max()) == 255
    assert sorted(y.unique().tolist()) == list(range(10))
    assert meta["image_shape"] == [1, 8, 8] and meta["n"] == 1797 and meta["classes"] == list(range(10))
    assert meta["content_sha256"] == artifacts.tensor_sha256(x, y)


@pytest.mark.parametrize("k", [0, 1, 9])
def test_protocol_split_properties(digits, k):
    y = digits[0]["labels"]
    train, test = protocol_split(y, k)
    train2, test2 = protocol_split(y.clone(), k)
    assert torch.equal(train, train2) and torch.equal(test, test2)  # identical across calls
    assert set(train.tolist()).isdisjoint(test.tolist())  # no leak
    normals = set(torch.nonzero(y != k).squeeze(1).tolist())
    anomalous = set(torch.nonzero(y == k).squeeze(1).tolist())
    assert anomalous <= set(test.tolist())  # every image of class K is in the test part
    assert not (anomalous & set(train.tolist()))
    test_normals = set(test.tolist()) - anomalous
    assert set(train.tolist()) | test_normals == normals  # union of normal parts = all normals
    assert abs(len(test_normals) / len(normals) - 0.2) < 0.01  # ~20% of normals held out
    assert len(set(train.tolist())) == len(train)  # no duplicates


def test_protocol_parts_through_prepare(digits):
    x, y = digits[0]["images"], digits[0]["labels"]
    tr, mtr = prepare(DataConfig(dataset="digits", anomaly_protocol=3, part="train"))
    te, mte = prepare(DataConfig(dataset="digits", anomaly_protocol=3, part="test"))
    i_tr, i_te = protocol_split(y, 3)
    assert torch.equal(tr["images"], x[i_tr]) and torch.equal(te["labels"], y[i_te])
    assert 3 not in tr["labels"].tolist()
    assert int((te["labels"] == 3).sum()) == int((y == 3).sum())
    assert mtr["protocol"]["anomaly_class"] == 3 and mte["protocol"]["part"] == "test"
    assert mtr["protocol"]["seed"] == mte["protocol"]["seed"]
    # every training image appears in exactly one part
    assert len(tr["labels"]) + len(te["labels"]) == len(y)


def test_exclude_and_only_class():
    ex, m = prepare(DataConfig(dataset="digits", exclude_class=4))
    assert 4 not in ex["labels"].tolist() and 4 not in m["classes"]
    only, m = prepare(DataConfig(dataset="digits", only_class=4))
    assert set(only["labels"].tolist()) == {4} and m["classes"] == [4]
    assert len(ex["labels"]) + len(only["labels"]) == 1797
    with pytest.raises(UserError, match="class 12 does not occur"):
        prepare(DataConfig(dataset="digits", only_class=12))


@pytest.mark.parametrize("kw,msg", [
    (dict(exclude_class=1, only_class=2), "exclusive"),
    (dict(anomaly_protocol=1), "--part"),
    (dict(part="train"), "--anomaly-protocol"),
    (dict(anomaly_protocol=1, part="test", exclude_class=2), "cannot be combined"),
])
def test_inconsistent_options_are_refused(kw, msg):
    from ebmtool.config import build

    with pytest.raises(UserError, match=msg):
        build(DataConfig, {"dataset": "digits", **kw}, where="data prepare")


def test_resize_and_limit():
    t, meta = prepare(DataConfig(dataset="digits", size=32, limit=10))
    assert t["images"].shape == (10, 1, 32, 32) and t["images"].dtype == torch.uint8
    assert meta["image_shape"] == [1, 32, 32] and meta["n"] == 10
    full, _ = prepare(DataConfig(dataset="digits"))
    assert torch.equal(t["labels"], full["labels"][:10])  # --limit keeps the first N
    # resizing preserves the picture: back down to 8x8 it is close to the original
    down = torch.nn.functional.interpolate(t["images"].float(), size=(8, 8), mode="area")
    assert float((down - full["images"][:10].float()).abs().mean()) < 40
    assert float(t["images"].float().std()) > 10


def test_synthetic_has_latents():
    t, meta = prepare(DataConfig(dataset="synthetic", split="test"))
    assert t["images"].shape == (500, 1, 8, 8)
    z = t["latents"]
    assert z.shape == (500, 2) and z.dtype == torch.float32
    # latents sit near their mode's mean, images are the fixed generator of the latents (+ small noise)
    d = (z - ring_means()[t["labels"]]).norm(dim=1)
    assert float(d.mean()) < 0.5
    x = synthetic_generator()(z)
    xr = t["images"].float() / 127.5 - 1
    assert float((x - xr).abs().mean()) < 0.1
    tr, _ = prepare(DataConfig(dataset="synthetic", limit=7))
    assert tr["latents"].shape == (7, 2)


def test_dataset_artifact_and_load_images(tmp_path):
    out = tmp_path / "d.safetensors"
    res = stages.data_prepare(DataConfig(dataset="digits", limit=20), str(out))
    assert res["n"] == 20
    x, y, art = load_images(out)
    assert x.shape == (20, 1, 8, 8) and x.dtype == torch.float32
    assert float(x.min()) >= -1 and float(x.max()) <= 1 and float(x.min()) == -1.0
    assert art.kind == "dataset" and art.config["dataset"] == "digits" and art.config["limit"] == 20
    with pytest.raises(UserError, match="output exists"):
        stages.data_prepare(DataConfig(dataset="digits", limit=20), str(out))


# ----------------------------------------------------------------------------------------------------------
# MNIST: the shared gz files, and IDX files written here
# ----------------------------------------------------------------------------------------------------------
@need_shared_mnist
def test_mnist_shared_test_set():
    t, meta = prepare(DataConfig(dataset="mnist", root=str(SHARED_MNIST), split="test"))
    assert t["images"].shape == (10000, 1, 28, 28) and t["images"].dtype == torch.uint8
    assert torch.bincount(t["labels"], minlength=10).tolist() == MNIST_TEST_COUNTS
    assert meta["n"] == 10000 and int(t["images"].max()) == 255


def _idx_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8), rng.integers(0, 10, size=n, dtype=np.uint8)


def write_idx(path, arr: np.ndarray, gz: bool = False) -> None:
    """IDX format: magic (0, 0, type 0x08 = ubyte, ndim), big-endian dims, then the bytes."""
    head = struct.pack(">BBBB", 0, 0, 0x08, arr.ndim) + b"".join(struct.pack(">I", d) for d in arr.shape)
    data = head + arr.astype(np.uint8).tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    if gz:
        with gzip.open(path.with_name(path.name + ".gz"), "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)


def _write_split(folder, split: str, n: int, seed: int, gz: bool):
    imgs, labs = _idx_images(n, seed)
    stem = "train" if split == "train" else "t10k"
    write_idx(folder / f"{stem}-images-idx3-ubyte", imgs, gz)
    write_idx(folder / f"{stem}-labels-idx1-ubyte", labs, gz)
    return imgs, labs


@pytest.mark.parametrize("layout", ["torchvision-both-splits", "torchvision-test-only", "torchvision-gz",
                                    "flat", "flat-gz"])
def test_mnist_from_written_idx_files(tmp_path, layout):
    raw = tmp_path / "MNIST" / "raw" if layout.startswith("torchvision") else tmp_path
    gz = layout.endswith("gz")
    imgs, labs = _write_split(raw, "test", 12, seed=1, gz=gz)
    if layout == "torchvision-both-splits":
        _write_split(raw, "train", 20, seed=2, gz=gz)
    t, meta = prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="test"))
    assert t["images"].shape == (12, 1, 28, 28)
    assert np.array_equal(t["images"][:, 0].numpy(), imgs)
    assert np.array_equal(t["labels"].numpy(), labs.astype(np.int64))
    t2, _ = prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="test", size=32, limit=5))
    assert t2["images"].shape == (5, 1, 32, 32)
    if layout == "torchvision-both-splits":
        tr, _ = prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="train"))
        assert tr["images"].shape == (20, 1, 28, 28)


@need_shared_mnist
def test_read_idx_is_torchvisions_reader_on_mnists_own_files(tmp_path):
    """Ground truth: read_idx gives torchvision's arrays for the real MNIST files (.gz as shipped, and unpacked)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    from ebmtool.data.sources import mnist_file, read_idx

    for name, reader in (("t10k-images-idx3-ubyte", read_image_file), ("t10k-labels-idx1-ubyte", read_label_file)):
        src = mnist_file(SHARED_MNIST, name)
        plain = tmp_path / name
        with (gzip.open if src.suffix == ".gz" else open)(src, "rb") as f:
            plain.write_bytes(f.read())
        want = reader(str(plain)).numpy()
        assert np.array_equal(read_idx(src), want) and np.array_equal(read_idx(plain), want)


def test_read_idx_is_torchvisions_reader_on_hand_made_files(tmp_path):
    """The same ground truth on files written here (every clone runs it, with or without the shared MNIST)."""
    from torchvision.datasets.mnist import read_image_file, read_label_file

    from ebmtool.data.sources import read_idx

    imgs, labs = _write_split(tmp_path, "test", 9, seed=5, gz=False)
    got_i, got_l = read_idx(tmp_path / "t10k-images-idx3-ubyte"), read_idx(tmp_path / "t10k-labels-idx1-ubyte")
    assert np.array_equal(got_i, read_image_file(str(tmp_path / "t10k-images-idx3-ubyte")).numpy())
    assert np.array_equal(got_l, read_label_file(str(tmp_path / "t10k-labels-idx1-ubyte")).numpy())
    assert np.array_equal(got_i, imgs) and np.array_equal(got_l, labs)


@pytest.mark.parametrize("raw,why", [(b"", "magic missing"), (b"\x00\x00\x0d\x03", "magic 00000d03"),
                                     (b"\x00\x00\x08\x03\x00\x00", "truncated header"),
                                     (b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "3 data bytes for shape (5,)")])
def test_read_idx_refuses_what_is_not_idx_in_one_line(tmp_path, raw, why):
    from ebmtool.data.sources import read_idx

    p = tmp_path / "t10k-labels-idx1-ubyte"
    p.write_bytes(raw)
    with pytest.raises(UserError, match="not a valid IDX file") as e:
        read_idx(p)
    assert why in str(e.value) and "\n" not in str(e.value)


def test_mnist_errors(tmp_path):
    with pytest.raises(UserError, match="--root"):
        prepare(DataConfig(dataset="mnist", split="test"))
    with pytest.raises(UserError, match="does not exist"):
        prepare(DataConfig(dataset="mnist", root=str(tmp_path / "nope"), split="test"))
    with pytest.raises(UserError, match="no MNIST test file"):
        prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="test"))
    _write_split(tmp_path, "test", 3, seed=0, gz=False)
    with pytest.raises(UserError, match="no MNIST train file"):
        prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="train"))
    # images and labels that disagree in length
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(5, np.uint8))
    with pytest.raises(UserError, match="disagree"):
        prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="test"))
    # files that declare no images
    write_idx(tmp_path / "t10k-images-idx3-ubyte", np.zeros((0, 28, 28), np.uint8))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(0, np.uint8))
    with pytest.raises(UserError, match="hold no images"):
        prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="test"))


def test_digits_refuse_a_test_split_instead_of_ignoring_it(tmp_path):
    """scikit-learn's digits have one split: --split test would silently write the training images again."""
    from conftest import run_cli

    out = tmp_path / "d.safetensors"
    r = run_cli(["data", "prepare", "--dataset", "digits", "--split", "test", "-o", out])
    assert r.code == 2 and len(r.err_lines) == 1 and "single split" in r.err and not out.exists()


# train+test: the 70,000-image protocol of the papers (protocol v3), on a tiny hand-made IDX set
# ----------------------------------------------------------------------------------------------------------
def _both_splits(tmp_path):
    tr = _write_split(tmp_path, "train", 60, seed=3, gz=True)
    te = _write_split(tmp_path, "test", 25, seed=4, gz=False)
    return tr, te


def test_train_plus_test_concatenates_training_images_first(tmp_path):
    (tri, trl), (tei, tel) = _both_splits(tmp_path)
    t, meta = prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="train+test"))
    assert t["images"].shape == (85, 1, 28, 28) and meta["split"] == "train+test" and meta["n"] == 85
    assert np.array_equal(t["images"][:60, 0].numpy(), tri) and np.array_equal(t["images"][60:, 0].numpy(), tei)
    assert np.array_equal(t["labels"].numpy(), np.concatenate([trl, tel]).astype(np.int64))
    assert "train first, then test" in meta["source"]


@pytest.mark.parametrize("k", [0, 3])
def test_train_plus_test_protocol_parts(tmp_path, k):
    """The v3 split: disjoint parts, the proportions, every K in the test part, the same bytes on two calls."""
    _both_splits(tmp_path)
    full, _ = prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="train+test"))
    labels = full["labels"]
    got = {}
    for part in ("train", "test", "fit", "calibration"):
        t, meta = prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="train+test", anomaly_protocol=k,
                                     part=part))
        again, _ = prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="train+test", anomaly_protocol=k,
                                      part=part))
        assert torch.equal(t["images"], again["images"]) and meta["content_sha256"] == artifacts.tensor_sha256(
            again["images"], again["labels"])
        got[part] = t
    train, test = protocol_split(labels, k)
    assert not set(train.tolist()) & set(test.tolist())
    n_normal, n_k = int((labels != k).sum()), int((labels == k).sum())
    assert len(train) == round(0.8 * n_normal) and len(test) == n_normal - len(train) + n_k
    assert int((labels[test] == k).sum()) == n_k and int((labels[train] == k).sum()) == 0
    assert torch.equal(got["train"]["images"], full["images"][train])
    assert torch.equal(got["test"]["images"], full["images"][test])
    assert len(got["fit"]["labels"]) + len(got["calibration"]["labels"]) == len(train)


def test_train_plus_test_names_the_missing_training_file(tmp_path):
    """A folder with only the test files: one line naming the missing file and the folder, exit 2, no output."""
    from conftest import run_cli

    _write_split(tmp_path, "test", 5, seed=0, gz=True)
    out = tmp_path / "d.safetensors"
    r = run_cli(["data", "prepare", "--dataset", "mnist", "--root", tmp_path, "--split", "train+test", "-o", out])
    assert r.code == 2 and len(r.err_lines) == 1 and not out.exists()
    assert "train-images-idx3-ubyte" in r.err and str(tmp_path) in r.err


def test_second_test_permutation_reproduces_the_original_loaders_leak(tmp_path):
    """--test-permutation second: the test normals come from a second draw, so about 80% of them were trained on
    (the ground truth of the original loader); the default keeps the parts disjoint."""
    labels = torch.arange(5000) % 10
    train, test = protocol_split(labels, 3, "second")
    same_train, _ = protocol_split(labels, 3)
    assert torch.equal(train, same_train)  # the training part is the same in both
    normals_in_test = set(test[labels[test] != 3].tolist())
    shared = len(normals_in_test & set(train.tolist())) / len(normals_in_test)
    assert 0.75 < shared < 0.85
    assert int((labels[test] == 3).sum()) == 500
    _both_splits(tmp_path)
    t, meta = prepare(DataConfig(dataset="mnist", root=str(tmp_path), split="train+test", anomaly_protocol=3,
                                 part="test", test_permutation="second"))
    assert meta["protocol"]["test_permutation"] == "second"
    with pytest.raises(UserError, match="--test-permutation needs --anomaly-protocol"):  # one line, as on the CLI
        DataConfig(dataset="digits", test_permutation="second")


@pytest.mark.parametrize("argv, said", [
    (["--dataset", "digits", "--root", "/nonexistent"], "--root/--download: the digits dataset is not read"),
    (["--dataset", "synthetic", "--download"], "--root/--download: the synthetic dataset is not read"),
    (["--dataset", "digits", "--anomaly-protocol", "3", "--part", "train", "--test-permutation", "second"],
     "draws the test part only"),
])
def test_data_prepare_refuses_options_it_would_not_use(argv, said, tmp_path):
    out = tmp_path / "q.safetensors"
    r = run_cli(["data", "prepare", *argv, "--limit", "8", "-o", out])
    assert r.code == 2 and len(r.err_lines) == 1 and said in r.err, r.err
    assert not out.exists()
