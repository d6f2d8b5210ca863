"""The user's own images (issue 32 §1 and §3): ``data prepare --dataset folder|array`` and ``ebmtool score``.

Every image here is written by the test (scikit-learn's digits, drawn shapes) except in the MNIST test, which
writes MNIST's own test images as PNG files and takes them through the folder path end to end.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ebmtool import artifacts

from conftest import SHARED_MNIST, need_shared_mnist, run_cli, refused as _refused




def _digits(n: int = 120) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    d = load_digits()
    return np.round(d.images[:n] * (255 / 16)).astype(np.uint8), d.target[:n]


def _write_classes(root: Path, images: np.ndarray, labels: np.ndarray, names=None, ext: str = "png") -> Path:
    for i, (im, y) in enumerate(zip(images, labels)):
        d = root / (names[y] if names else str(y))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(im).save(d / f"{i:04d}.{ext}")
    return root


_count = iter(range(10**6))


def _prepare(tmp_path: Path, *args, name: str | None = None):
    out = tmp_path / (name or f"d{next(_count)}.safetensors")
    return run_cli(["data", "prepare", *map(str, args), "-o", out, "--quiet", "--json"]), out


def _bad(tmp_path: Path, args: list, *words: str) -> None:
    """data prepare ARGS is refused in one line holding every word, and writes nothing."""
    r, out = _prepare(tmp_path, *args)
    _refused(r, *words)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def _load(path: Path) -> artifacts.Artifact:
    return artifacts.load(path)


# ----------------------------------------------------------------------------------------------------------
# folders
# ----------------------------------------------------------------------------------------------------------
def test_class_folders_labels_names_and_paths(tmp_path):
    """The command the issue quotes (`data prepare --dataset folder --root mydata/`) reads an ImageFolder layout:
    labels index the sorted class names, whose names and every file's path are stored and shown by inspect."""
    x, y = _digits(60)
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    _write_classes(tmp_path / "mydata", x, y, names)
    r, out = _prepare(tmp_path, "--dataset", "folder", "--root", tmp_path / "mydata/")
    res = json.loads(r.ok().out)
    art = _load(out)
    order = sorted(names)  # eight, five, four, nine, one, ...
    assert res["class_names"] == order and art.meta["class_names"] == order
    imgs, labs = art.tensors["images"], art.tensors["labels"]
    assert imgs.shape == (60, 1, 8, 8) and imgs.dtype == torch.uint8
    for k, (path, lab) in enumerate(zip(art.meta["paths"], labs.tolist())):
        cls, file = path.split("/")
        assert order[lab] == cls
        i = int(file.split(".")[0])
        assert names[y[i]] == cls and torch.equal(imgs[k, 0], torch.from_numpy(x[i]))
    shown = run_cli(["inspect", out]).ok().out
    assert "0: eight, 1: five" in shown and "60 (eight/" in shown


def test_flat_folder_is_unlabelled(tmp_path):
    x, _ = _digits(12)
    (tmp_path / "flat").mkdir()
    for i, im in enumerate(x):
        Image.fromarray(im).save(tmp_path / "flat" / f"img{i:02d}.png")
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    r, out = _prepare(tmp_path, "--dataset", "folder", "--root", tmp_path / "flat")
    r.ok()
    art = _load(out)
    assert art.tensors["labels"].tolist() == [-1] * 12 and "class_names" not in art.meta
    assert art.meta["paths"] == [f"img{i:02d}.png" for i in range(12)]
    assert "1 file(s) that are not .png/.jpg/.jpeg/.bmp/.webp left out, e.g. notes.txt" in art.meta["source"]
    assert torch.equal(art.tensors["images"][:, 0], torch.from_numpy(x))
    _refused(run_cli(["data", "prepare", "--dataset", "folder", "--root", tmp_path / "flat", "--anomaly-protocol",
                      "1", "--part", "test", "-o", tmp_path / "e.safetensors"]), "no labels", "class folders")
    assert not (tmp_path / "e.safetensors").exists()


def _rgb_pattern(h: int = 12, w: int = 12) -> np.ndarray:
    a = np.zeros((h, w, 3), np.uint8)
    a[..., 0] = np.arange(w)[None] * 20
    a[..., 1] = np.arange(h)[:, None] * 20
    a[..., 2] = 200
    return a


@pytest.mark.parametrize("ext", ["png", "bmp", "webp"])
def test_modes_grey_rgb_rgba_palette_lossless(tmp_path, ext):
    """Grey, RGB, RGBA (alpha dropped) and palette images decode to their pixel values; any colour image makes
    the dataset RGB, a grey one repeated over the three channels."""
    rgb = _rgb_pattern()
    grey = rgb[..., 0]
    pal = Image.fromarray(rgb).quantize(colors=16)  # a palette image and the RGB it stands for
    root = tmp_path / "modes"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir()
    Image.fromarray(grey).save(root / "a" / f"grey.{ext}", **({"lossless": True} if ext == "webp" else {}))
    Image.fromarray(rgb).save(root / "a" / f"rgb.{ext}", **({"lossless": True} if ext == "webp" else {}))
    rgba = np.concatenate([rgb, np.full((12, 12, 1), 7, np.uint8)], 2)
    if ext != "bmp":
        Image.fromarray(rgba).save(root / "b" / f"rgba.{ext}", **({"lossless": True} if ext == "webp" else {}))
    if ext != "webp":
        pal.save(root / "b" / f"pal.{ext}")
    r, out = _prepare(tmp_path, "--dataset", "folder", "--root", root)
    r.ok()
    art = _load(out)
    got = dict(zip(art.meta["paths"], art.tensors["images"]))
    assert art.tensors["images"].shape[1] == 3
    assert torch.equal(got[f"a/grey.{ext}"], torch.from_numpy(grey)[None].expand(3, -1, -1))
    assert torch.equal(got[f"a/rgb.{ext}"], torch.from_numpy(rgb).permute(2, 0, 1))
    if ext != "bmp":
        assert torch.equal(got[f"b/rgba.{ext}"], torch.from_numpy(rgb).permute(2, 0, 1))
    if ext != "webp":
        assert torch.equal(got[f"b/pal.{ext}"], torch.from_numpy(np.array(pal.convert("RGB"))).permute(2, 0, 1))
    # --channels 1: every image as grey (ITU-R 601-2 luminance, PIL's convert("L"))
    r, out1 = _prepare(tmp_path, "--dataset", "folder", "--root", root, "--channels", "1", name="g.safetensors")
    r.ok()
    g = dict(zip(_load(out1).meta["paths"], _load(out1).tensors["images"]))
    assert torch.equal(g[f"a/rgb.{ext}"][0], torch.from_numpy(np.array(Image.fromarray(rgb).convert("L"))))


def test_grey_folder_stays_one_channel_and_jpeg_decodes(tmp_path):
    x, y = _digits(20)
    _write_classes(tmp_path / "jpg", x, y, ext="jpg")
    r, out = _prepare(tmp_path, "--dataset", "folder", "--root", tmp_path / "jpg")
    art = _load(out)
    assert json.loads(r.ok().out)["image_shape"] == [1, 8, 8]
    ref = np.stack([np.asarray(Image.open(tmp_path / "jpg" / p)) for p in art.meta["paths"]])
    assert torch.equal(art.tensors["images"][:, 0], torch.from_numpy(ref))  # what PIL decodes, in file order
    r, out3 = _prepare(tmp_path, "--dataset", "folder", "--root", tmp_path / "jpg", "--channels", "3",
                       name="rgb.safetensors")
    assert json.loads(r.ok().out)["image_shape"] == [3, 8, 8]


def test_size_on_non_square_images_matches_torchvision(tmp_path):
    """--size S: the shorter side to S (antialiased), then the centre crop: torchvision's Resize(S) +
    CenterCrop(S), on images of mixed, non-square sizes (RGB JPEGs and PNGs)."""
    from torchvision.transforms import v2

    rng = np.random.default_rng(0)
    root = tmp_path / "mixed"
    root.mkdir()
    shapes = {"wide.png": (20, 48), "tall.png": (50, 22), "square.png": (30, 30), "small.png": (9, 13)}
    arrays = {}
    for name, (h, w) in shapes.items():
        arrays[name] = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        Image.fromarray(arrays[name]).save(root / name)
    _bad(tmp_path, ["--dataset", "folder", "--root", root], "differ in size", "--size")
    r, out = _prepare(tmp_path, "--dataset", "folder", "--root", root, "--size", 16)
    art = _load(out)
    assert art.tensors["images"].shape == (4, 3, 16, 16)
    tf = v2.Compose([v2.Resize(16, antialias=True), v2.CenterCrop(16)])
    for path, img in zip(art.meta["paths"], art.tensors["images"]):
        ref = tf(torch.from_numpy(arrays[path]).permute(2, 0, 1).contiguous())
        assert (img.int() - ref.int()).abs().max() <= 1, path  # torchvision resizes uint8 with its own rounding


# ----------------------------------------------------------------------------------------------------------
# bad files
# ----------------------------------------------------------------------------------------------------------
def test_truncated_image_stops_naming_it_or_is_skipped(tmp_path):
    x, y = _digits(30)
    root = _write_classes(tmp_path / "d", x, y)
    victim = sorted((root / "3").iterdir())[0]
    victim.write_bytes(victim.read_bytes()[:40])  # truncated
    (root / "5" / "garbage.png").write_bytes(b"this is no png")
    r, out = _prepare(tmp_path, "--dataset", "folder", "--root", root)
    _refused(r, "3/", "cannot read image", "--skip-bad")
    assert not out.exists() and not list(tmp_path.glob("*.tmp*"))
    r, out = _prepare(tmp_path, "--dataset", "folder", "--root", root, "--skip-bad")
    res = json.loads(r.ok().out)
    assert res["skipped"] == 2 and res["n"] == 29 and "skipped 2 unreadable" in r.err
    art = _load(out)
    assert {s["path"] for s in art.meta["skipped"]} == {f"3/{victim.name}", "5/garbage.png"}
    assert f"3/{victim.name}" not in art.meta["paths"] and len(art.meta["paths"]) == 29


def test_bad_folders_one_line_each(tmp_path):
    (tmp_path / "empty").mkdir()
    _bad(tmp_path, ["--dataset", "folder", "--root", tmp_path / "empty"], "holds no images")
    _bad(tmp_path, ["--dataset", "folder", "--root", tmp_path / "nowhere"], "does not exist")
    _bad(tmp_path, ["--dataset", "folder"], "--root")
    x, y = _digits(10)
    one = _write_classes(tmp_path / "one", x[y == 0][:5], np.zeros(5, int), ["cats"])
    _bad(tmp_path, ["--dataset", "folder", "--root", one, "--anomaly-protocol", "cats", "--part",
                      "test"], "one class", "cats")
    mixed = _write_classes(tmp_path / "mixed", x, y)
    Image.fromarray(x[0]).save(mixed / "loose.png")
    _bad(tmp_path, ["--dataset", "folder", "--root", mixed], "beside class folders")
    (tmp_path / "emptyclass" / "a").mkdir(parents=True)
    (tmp_path / "emptyclass" / "b").mkdir()
    Image.fromarray(x[0]).save(tmp_path / "emptyclass" / "a" / "x.png")
    _bad(tmp_path, ["--dataset", "folder", "--root", tmp_path / "emptyclass"], "b holds no images")
    _bad(tmp_path, ["--dataset", "folder", "--root", mixed, "--layout", "nhwc"], "--layout")
    _bad(tmp_path, ["--dataset", "digits", "--skip-bad"], "--skip-bad")
    _bad(tmp_path, ["--dataset", "folder", "--root", one, "--split", "test"], "--split test")


# ----------------------------------------------------------------------------------------------------------
# classes by name, the hold-out split on any labelled source
# ----------------------------------------------------------------------------------------------------------
def test_classes_by_name_and_holdout_split(tmp_path):
    x, y = _digits(200)
    names = [f"digit-{k}" for k in range(10)]
    root = _write_classes(tmp_path / "named", x, y, names)
    parts = {}
    for part in ("fit", "calibration", "test"):
        r, out = _prepare(tmp_path, "--dataset", "folder", "--root", root, "--anomaly-protocol", "digit-7", "--part",
                          part, name=f"{part}.safetensors")
        r.ok()
        parts[part] = _load(out)
    seven = names.index("digit-7")  # the sorted names are the digits' order here
    fit_paths, cal_paths, test_paths = (set(parts[p].meta["paths"]) for p in ("fit", "calibration", "test"))
    assert not (fit_paths & cal_paths) and not (fit_paths & test_paths) and not (cal_paths & test_paths)
    assert seven not in parts["fit"].tensors["labels"].tolist() and seven in parts["test"].tensors["labels"].tolist()
    assert parts["test"].meta["protocol"]["anomaly_class"] == seven
    assert parts["test"].meta["protocol"]["anomaly_class_name"] == "digit-7"
    assert len(fit_paths | cal_paths | test_paths) == 200
    # the same split by index
    r, out = _prepare(tmp_path, "--dataset", "folder", "--root", root, "--anomaly-protocol", seven, "--part", "test",
                      name="test-index.safetensors")
    r.ok()
    assert _load(out).meta["paths"] == parts["test"].meta["paths"]
    r, out = _prepare(tmp_path, "--dataset", "folder", "--root", root, "--exclude-class", "digit-3",
                      name="ex.safetensors")
    assert 3 not in _load(out).tensors["labels"].tolist() and len(_load(out).meta["paths"]) == json.loads(r.out)["n"]
    r, out = _prepare(tmp_path, "--dataset", "folder", "--root", root, "--only-class", "digit-4",
                      name="only.safetensors")
    assert set(_load(out).tensors["labels"].tolist()) == {4}
    _bad(tmp_path, ["--dataset", "folder", "--root", root, "--only-class", "dog"], "'dog'",
             "digit-0")


# ----------------------------------------------------------------------------------------------------------
# array files
# ----------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nhw", "nhwc", "nchw"])
def test_npy_and_npz_in_each_layout(tmp_path, layout):
    rng = np.random.default_rng(1)
    c = 1 if layout == "nhw" else 3
    ref = rng.integers(0, 256, (6, c, 10, 10), dtype=np.uint8)  # N x C x H x W
    arr = {"nhw": ref[:, 0], "nhwc": ref.transpose(0, 2, 3, 1), "nchw": ref}[layout]
    np.save(tmp_path / "x.npy", arr)
    r, out = _prepare(tmp_path, "--dataset", "array", "--root", tmp_path / "x.npy")
    assert json.loads(r.ok().out)["image_shape"] == [c, 10, 10]
    assert np.array_equal(_load(out).tensors["images"].numpy(), ref)
    labels = np.arange(6) % 2
    np.savez(tmp_path / "x.npz", images=arr, labels=labels, class_names=np.array(["cat", "dog"]))
    r, out = _prepare(tmp_path, "--dataset", "array", "--root", tmp_path / "x.npz", "--exclude-class", "cat",
                      name="z.safetensors")
    art = _load(out)
    assert art.meta["class_names"] == ["cat", "dog"] and art.tensors["labels"].tolist() == [1, 1, 1]
    assert np.array_equal(art.tensors["images"].numpy(), ref[1::2])


def test_channels_last_array_is_read_not_misdiagnosed(tmp_path):
    """The issue's channels-last array (as numpy and PIL give it) was diagnosed as `images are 64x3`."""
    x = np.random.default_rng(2).integers(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    np.save(tmp_path / "hwc.npy", x)
    r, out = _prepare(tmp_path, "--dataset", "array", "--root", tmp_path / "hwc.npy")
    assert json.loads(r.ok().out)["image_shape"] == [3, 64, 64]
    assert np.array_equal(_load(out).tensors["images"].numpy(), x.transpose(0, 3, 1, 2))
    # one H x W x C image, or N x H x W? refused, naming --layout
    np.save(tmp_path / "one.npy", x[0])
    _bad(tmp_path, ["--dataset", "array", "--root", tmp_path / "one.npy"], "--layout nhw")
    amb = np.zeros((4, 3, 5, 3), np.uint8)
    np.save(tmp_path / "amb.npy", amb)
    _bad(tmp_path, ["--dataset", "array", "--root", tmp_path / "amb.npy"], "--layout nhwc",
             "--layout nchw")
    r, out = _prepare(tmp_path, "--dataset", "array", "--root", tmp_path / "amb.npy", "--layout", "nchw",
                      name="amb.safetensors")
    assert json.loads(r.ok().out)["image_shape"] == [3, 5, 3]


def test_float_arrays_need_a_stated_range(tmp_path):
    x = np.random.default_rng(3).integers(0, 256, (4, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "f01.npy", (x / 255).astype(np.float32))
    np.save(tmp_path / "fpm.npy", (x / 127.5 - 1).astype(np.float64))
    _bad(tmp_path, ["--dataset", "array", "--root", tmp_path / "f01.npy"], "--value-range 0,1")
    r, out = _prepare(tmp_path, "--dataset", "array", "--root", tmp_path / "f01.npy", "--value-range", "0,1")
    assert np.array_equal(_load(out).tensors["images"][:, 0].numpy(), x)
    r, out = _prepare(tmp_path, "--dataset", "array", "--root", tmp_path / "fpm.npy", "--value-range", "-1,1",
                      name="pm.safetensors")
    assert np.array_equal(_load(out).tensors["images"][:, 0].numpy(), x)
    _bad(tmp_path, ["--dataset", "array", "--root", tmp_path / "fpm.npy", "--value-range", "0,1"],
             "outside --value-range 0,1")
    np.save(tmp_path / "u8.npy", x)
    _bad(tmp_path, ["--dataset", "array", "--root", tmp_path / "u8.npy", "--value-range", "0,1"],
             "uint8")
    np.savez(tmp_path / "keys.npz", x=x, y=np.zeros(4))
    _bad(tmp_path, ["--dataset", "array", "--root", tmp_path / "keys.npz"], "'images'", "'labels'")
    np.savez(tmp_path / "lab.npz", images=x, labels=np.zeros(3, int))
    _bad(tmp_path, ["--dataset", "array", "--root", tmp_path / "lab.npz"], "'labels' must be 4")
    _bad(tmp_path, ["--dataset", "array", "--root", tmp_path / "u8.npy", "--skip-bad"], "--skip-bad")
    _bad(tmp_path, ["--dataset", "array", "--root", tmp_path], "is a folder")


def test_size_and_channels_serve_builtin_sources(tmp_path):
    r, out = _prepare(tmp_path, "--dataset", "digits", "--limit", 10, "--size", 16, "--channels", 3)
    assert json.loads(r.ok().out)["image_shape"] == [3, 16, 16]
    img = _load(out).tensors["images"]
    assert torch.equal(img[:, 0], img[:, 1]) and torch.equal(img[:, 1], img[:, 2])


# ----------------------------------------------------------------------------------------------------------
# score
# ----------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def digit_folder_parts(tmp_path_factory):
    """8x8 digits written as PNGs in class folders, split holding out class 1: calibration and test parts."""
    tmp = tmp_path_factory.mktemp("score")
    x, y = _digits(300)
    root = _write_classes(tmp / "digits", x, y)
    out = {}
    for part in ("calibration", "test"):
        r, p = _prepare(tmp, "--dataset", "folder", "--root", root, "--anomaly-protocol", 1, "--part", part,
                        name=f"{part}.safetensors")
        r.ok()
        out[part] = p
    (tmp / "new").mkdir()
    for i in range(12):  # new, unlabelled images: a flat folder
        Image.fromarray(x[200 + i]).save(tmp / "new" / f"new-{i:02d}.png")
    r, out["new"] = _prepare(tmp, "--dataset", "folder", "--root", tmp / "new", name="new.safetensors")
    r.ok()
    return out


def test_score_with_threshold_names_and_anomaly_metrics(tmp_path, mle_model, digit_folder_parts):
    """score: a CSV by file name with every term, a threshold from the calibration normals at --fpr flagging
    exactly the scores above it, the top images printed and drawn, and anomaly's metrics, equal to anomaly's."""
    test, cal = digit_folder_parts["test"], digit_folder_parts["calibration"]
    table = tmp_path / "scores.csv"
    r = run_cli(["score", "--model", mle_model, "--data", test, "--calibration", cal, "--fpr", "0.1", "-o", table,
                 "--top", "5", "--grid", tmp_path / "top.png", "--device", "cpu", "--quiet", "--json"]).ok()
    res = json.loads(r.out)
    rows = list(csv.DictReader(table.open()))
    art = _load(test)
    assert [row["name"] for row in rows] == art.meta["paths"] and len(rows) == res["n"]
    assert set(rows[0]) == {"index", "name", "label", "class", "score", "recon", "tilt", "base", "flagged"}
    for row in rows:
        s = float(row["score"])
        assert s == pytest.approx(float(row["recon"]) + float(row["tilt"]) + float(row["base"]), rel=1e-9)
        assert row["flagged"] == str(int(s > res["threshold"]))
    assert res["n_flagged"] == sum(int(row["flagged"]) for row in rows)
    assert 0 < res["calibration_fpr"] <= 0.1 and res["n_calibration"] == len(_load(cal).tensors["labels"])
    assert [t["name"] for t in res["top"]] == [row["name"] for row in
                                                sorted(rows, key=lambda q: -float(q["score"]))[:5]]
    assert Image.open(tmp_path / "top.png").size[0] > 5 * 8
    assert res["chain"]["steps"] >= 1 and res["anomaly_classes"] == [1]
    an = json.loads(run_cli(["anomaly", "--model", mle_model, "--data", test, "--anomaly-class", "1", "--device",
                             "cpu", "--quiet", "--json"]).ok().out)
    for k in ("auprc", "average_precision", "auroc", "n", "n_anomalous", "chain", "score_description"):
        assert res[k] == an[k], k
    shown = run_cli(["score", "--model", mle_model, "--data", test, "-o", tmp_path / "s.json", "--top", "3",
                     "--device", "cpu", "--quiet"]).ok().out
    assert res["top"][0]["name"] in shown and "auprc" in shown
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["summary"]["auprc"] == res["auprc"] and len(summary["rows"]) == res["n"]


def test_unlabelled_images_are_scored_and_anomaly_points_to_score(tmp_path, mle_model, digit_folder_parts):
    """The issue: `anomaly --anomaly-class 1` on unlabelled data said `anomaly class 1 does not occur in the data
    (classes [-1])`, and --ood-data gave scores without file names. Now anomaly points to score, which names them."""
    new = digit_folder_parts["new"]
    _refused(run_cli(["anomaly", "--model", mle_model, "--data", new, "--anomaly-class", "1", "--device", "cpu"]),
             "no labels", "ebmtool score")
    r = run_cli(["score", "--model", mle_model, "--data", new, "-o", tmp_path / "new.csv", "--device", "cpu",
                 "--quiet"]).ok()
    rows = list(csv.DictReader((tmp_path / "new.csv").open()))
    assert [row["name"] for row in rows] == [f"new-{i:02d}.png" for i in range(12)]
    assert "label" not in rows[0] and "new-" in r.out and "auprc" not in r.out
    for argv, words in [
        (["--fpr", "0.1"], ("--calibration",)),
        (["--calibration", digit_folder_parts["calibration"], "--fpr", "1.5"], ("--fpr 1.5",)),
        (["--score", "typicality"], ("anomaly --score typicality",)),
        (["--anomaly-class", "1"], ("no labels",)),
        (["--grid", tmp_path / "g.jpg"], (".png",)),
    ]:
        _refused(run_cli(["score", "--model", mle_model, "--data", new, "-o", tmp_path / "x.csv", "--device", "cpu",
                          *argv]), *words)
    _refused(run_cli(["score", "--model", mle_model, "--data", new, "-o", tmp_path / "x.txt"]), ".csv or .json")
    assert not (tmp_path / "x.csv").exists()


# ----------------------------------------------------------------------------------------------------------
# a real image set nobody here drew: MNIST's test images as PNG files, end to end
# ----------------------------------------------------------------------------------------------------------
@need_shared_mnist
def test_mnist_test_images_as_png_folder_end_to_end(tmp_path):
    """MNIST test images (the first 300) written as PNGs in class folders: the folder path gives back the IDX
    file's pixels and labels exactly, and they go through pretrain-generator and score."""
    from ebmtool.data.sources import read_idx

    x = read_idx(SHARED_MNIST / "t10k-images-idx3-ubyte.gz")[:300]
    y = read_idx(SHARED_MNIST / "t10k-labels-idx1-ubyte.gz")[:300]
    root = _write_classes(tmp_path / "mnist", x, y)
    r, fit = _prepare(tmp_path, "--dataset", "folder", "--root", root, "--anomaly-protocol", "1", "--part", "fit",
                      name="fit.safetensors")
    r.ok()
    r, test = _prepare(tmp_path, "--dataset", "folder", "--root", root, "--anomaly-protocol", "1", "--part", "test",
                       name="test.safetensors")
    art = _load(test)
    for path, img, lab in zip(art.meta["paths"], art.tensors["images"], art.tensors["labels"].tolist()):
        i = int(path.split("/")[1].split(".")[0])
        assert lab == y[i] and torch.equal(img[0], torch.from_numpy(x[i]))
    gen = tmp_path / "gen.safetensors"
    run_cli(["pretrain-generator", "--data", fit, "--preset", "smoke", "--epochs", "1", "-o", gen, "--device", "cpu",
             "--quiet"]).ok()
    res = json.loads(run_cli(["score", "--model", gen, "--data", test, "-o", tmp_path / "s.csv", "--device", "cpu",
                              "--quiet", "--json"]).ok().out)
    assert res["n"] == len(art.meta["paths"]) and res["anomaly_classes"] == [1] and 0 <= res["auprc"] <= 1


def test_fit_and_calibration_parts_without_a_held_out_class(tmp_path):
    """--part fit|calibration alone splits every image 90/10 (calibration normals for score's threshold); --part
    test still needs a held-out class."""
    x, _ = _digits(50)
    (tmp_path / "flat").mkdir()
    for i, im in enumerate(x):
        Image.fromarray(im).save(tmp_path / "flat" / f"{i:02d}.png")
    got = {}
    for part in ("fit", "calibration"):
        r, out = _prepare(tmp_path, "--dataset", "folder", "--root", tmp_path / "flat", "--part", part)
        r.ok()
        got[part] = set(_load(out).meta["paths"])
        assert _load(out).meta["holdout"]["part"] == part and "protocol" not in _load(out).meta
    assert len(got["calibration"]) == 5 and len(got["fit"]) == 45 and not got["fit"] & got["calibration"]
    _bad(tmp_path, ["--dataset", "folder", "--root", tmp_path / "flat", "--part", "test"], "--anomaly-protocol")


def test_converter_metadata_at_the_top_level_is_refused(tmp_path):
    """The issue: a hand-written converter put `n` and `image_shape` at the top level of the safetensors metadata;
    they were silently ignored and the file loaded. Now that is one line saying where they go; the required keys
    alone (ebmtool.kind, ebmtool.format, tensor images; a format-2 file also its ebmtool.sha256, a hand-written
    format-1 file none) make a dataset."""
    from safetensors.torch import save_file

    from conftest import save_sealed

    x = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8)
    bad = save_sealed({"images": x}, tmp_path / "conv.safetensors", {
        "ebmtool.kind": "dataset", "ebmtool.format": str(artifacts.FORMAT), "n": "6", "image_shape": "[1, 8, 8]"})
    _refused(run_cli(["inspect", bad]), "'image_shape'", "ebmtool.meta")
    good = tmp_path / "min.safetensors"
    save_file({"images": x}, str(good), metadata={"ebmtool.kind": "dataset", "ebmtool.format": "1"})
    assert "dataset" in run_cli(["inspect", good]).ok().out
    sealed = save_sealed({"images": x}, tmp_path / "sealed.safetensors",
                         {"ebmtool.kind": "dataset", "ebmtool.format": str(artifacts.FORMAT)})
    assert "dataset" in run_cli(["inspect", sealed]).ok().out
    named = save_sealed({"images": x, "labels": torch.arange(6)}, tmp_path / "named.safetensors", {
        "ebmtool.kind": "dataset", "ebmtool.format": str(artifacts.FORMAT),
        "ebmtool.meta": json.dumps({"class_names": ["a", "b"], "paths": ["x.png"] * 6})})
    _refused(run_cli(["inspect", named]), "label 5 has no name")


def test_folder_decoding_shows_a_bar_unless_quiet(tmp_path, monkeypatch):
    """Decoding a folder draws a progress bar on a terminal (ebmtool/progress.py), none under --quiet; the images
    come out the same with several decoding threads as with one."""
    from ebmtool import progress

    monkeypatch.setattr(progress, "stderr_is_terminal", lambda: True)
    x, y = _digits(80)
    root = _write_classes(tmp_path / "d", x, y)
    argv = ["data", "prepare", "--dataset", "folder", "--root", root, "-o", tmp_path / "a.safetensors"]
    shown = run_cli(argv).ok()
    assert "decode d" in shown.err
    quiet = run_cli(["--threads", "3", *argv[:-1], tmp_path / "b.safetensors", "--quiet"]).ok()
    assert quiet.err == ""
    assert torch.equal(_load(tmp_path / "a.safetensors").tensors["images"],
                       _load(tmp_path / "b.safetensors").tensors["images"])


def test_anomaly_and_score_take_class_names(tmp_path, mle_model):
    """anomaly --anomaly-class / --labels-positive and score --anomaly-class take a class-folder name as well as
    its index; an array file's class_names serve the hold-out split the same way."""
    x, y = _digits(150)
    names = [f"digit-{k}" for k in range(10)]
    root = _write_classes(tmp_path / "named", x, y, names)
    r, test = _prepare(tmp_path, "--dataset", "folder", "--root", root, "--anomaly-protocol", "digit-1", "--part",
                       "test")
    r.ok()
    run = ["--model", mle_model, "--data", test, "--device", "cpu", "--quiet", "--json"]
    by_name = json.loads(run_cli(["anomaly", *run, "--anomaly-class", "digit-1"]).ok().out)
    by_index = json.loads(run_cli(["anomaly", *run, "--anomaly-class", "1"]).ok().out)
    assert by_name["auprc"] == by_index["auprc"] and by_name["anomaly_classes"] == [1]
    two = json.loads(run_cli(["anomaly", *run, "--labels-positive", "digit-1,digit-2"]).ok().out)
    assert two["anomaly_classes"] == [1, 2]
    scored = json.loads(run_cli(["score", *run, "-o", tmp_path / "s.csv", "--anomaly-class", "digit-1"]).ok().out)
    assert scored["auprc"] == by_name["auprc"]
    _refused(run_cli(["anomaly", *run, "--anomaly-class", "digit-x"]), "'digit-x'", "digit-0")
    np.savez(tmp_path / "a.npz", images=x, labels=y, class_names=np.array(names))
    r, part = _prepare(tmp_path, "--dataset", "array", "--root", tmp_path / "a.npz", "--anomaly-protocol", "digit-1",
                       "--part", "test")
    art = _load(r.ok() and part)
    assert art.meta["protocol"]["anomaly_class_name"] == "digit-1"
    assert int((art.tensors["labels"] == 1).sum()) == int((y == 1).sum()) and len(art.tensors["labels"]) == len(
        _load(test).tensors["labels"])  # every 1, and as many normals as the folder's split (files in another order)


def test_score_of_a_training_part_needs_no_anomaly_class(tmp_path, gen_model):
    """`score --data fit.safetensors` (a part split by --anomaly-protocol K that holds no K): the table is written
    and the result says how to get metrics, instead of 'anomaly class K does not occur in the data'."""
    fit = tmp_path / "fit.safetensors"
    run_cli(["data", "prepare", "--dataset", "digits", "--anomaly-protocol", "1", "--part", "fit", "--limit", "60",
             "-o", fit, "-q"]).ok()
    r = run_cli(["score", "--model", gen_model, "--data", fit, "-o", tmp_path / "s.csv", "--json", "-q"]).ok()
    res = json.loads(r.out)
    assert res["n"] == 60 and "auprc" not in res and "--anomaly-class" in res["note"]
    assert len((tmp_path / "s.csv").read_text().splitlines()) == 61
