"""FID: the Fréchet distance against closed forms and pytorch-fid's formula, the whole samples -> score path with
an injected randomly initialised Inception (no weights exist offline), reference caching, error messages, and
the small classifier feature space trained on scikit-learn's 8×8 digits."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from ebmtool import artifacts
from ebmtool.errors import UserError
from ebmtool.eval import fid as F

# ------------------------------------------------------------------------------------ helpers


def _random_cov(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, 2 * d))
    return a @ a.T / (2 * d) + 0.05 * np.eye(d)


def _pytorch_fid_reference(mu1, sigma1, mu2, sigma2) -> float:
    """pytorch_fid.fid_score.calculate_frechet_distance's formula, with sqrtm called without ``disp``."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1.dot(sigma2))
    covmean = np.real(covmean)
    return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _smooth_images(n: int, size: int, seed: int, scale: float = 1.0, channels: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, channels, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 255 * scale).round().clamp(0, 255).to(torch.uint8)


def _save_images(path: Path, images: torch.Tensor, kind: str = "samples", labels: torch.Tensor | None = None) -> Path:
    tensors = {"images": images}
    if labels is not None:
        tensors["labels"] = labels
    return artifacts.save(path, kind, tensors)


class CountingInception(F.FIDInceptionV3):
    """Randomly initialised FID Inception (192-d block-1 features, resize to 75) that counts images seen."""

    def __init__(self) -> None:
        torch.manual_seed(0)
        super().__init__(None, output_block=1, resize_to=75)
        self.images_seen = 0

    def forward(self, x):
        self.images_seen += x.shape[0]
        return super().forward(x)


@pytest.fixture(scope="module")
def inception_model() -> CountingInception:
    return CountingInception()


@pytest.fixture()
def extractor(inception_model) -> F.InceptionExtractor:
    return F.InceptionExtractor(model=inception_model)


@pytest.fixture(scope="module")
def image_files(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("fid_images")
    real = _smooth_images(300, 16, seed=1)
    return {
        "ref": _save_images(d / "ref.safetensors", real, kind="dataset", labels=torch.zeros(300, dtype=torch.int64)),
        "same": _save_images(d / "same.safetensors", real),
        "other": _save_images(d / "other.safetensors", _smooth_images(300, 16, seed=2)),
        "shifted": _save_images(d / "shifted.safetensors", _smooth_images(300, 16, seed=2, scale=0.5)),
        "few": _save_images(d / "few.safetensors", _smooth_images(100, 16, seed=3)),
        "rgb": _save_images(d / "rgb.safetensors", _smooth_images(300, 16, seed=4, channels=3)),
        "big": _save_images(d / "big.safetensors", _smooth_images(300, 32, seed=5)),
    }


# -------------------------------------------------------------------------- (a) the distance


def test_frechet_diagonal_matches_closed_form():
    rng = np.random.default_rng(0)
    d = 7
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 3.0, size=d), rng.uniform(0.1, 3.0, size=d)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert F.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)
    # singular (rank-deficient) covariances are fine: no offset, no complex round-off
    s1[:3] = 0.0
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert F.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected, rel=1e-10)


def test_frechet_commuting_matches_closed_form():
    rng = np.random.default_rng(1)
    d = 12
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    a, b = rng.uniform(0.01, 2.0, size=d), rng.uniform(0.01, 2.0, size=d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(a + b - 2 * np.sqrt(a * b))
    assert F.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize("d", [3, 20, 64])
def test_frechet_full_covariance_matches_pytorch_fid_formula(d):
    rng = np.random.default_rng(d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d) * 0.1
    s1, s2 = _random_cov(rng, d), _random_cov(rng, d)
    ours = F.frechet_distance(mu1, s1, mu2, s2)
    assert ours == pytest.approx(_pytorch_fid_reference(mu1, s1, mu2, s2), rel=1e-6)
    assert F.frechet_distance(mu2, s2, mu1, s1) == pytest.approx(ours, rel=1e-9)  # symmetric
    assert F.frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)


def test_frechet_guards():
    mu, s = np.zeros(3), np.eye(3)
    with pytest.raises(UserError, match="mu1 has 3 dims but mu2 has 4"):
        F.frechet_distance(mu, s, np.zeros(4), np.eye(4))
    with pytest.raises(UserError, match="sigma2 has shape 4x4, expected 3x3"):
        F.frechet_distance(mu, s, mu, np.eye(4))
    with pytest.raises(UserError, match="mu2 holds non-finite"):
        F.frechet_distance(mu, s, np.array([0.0, np.nan, 0.0]), s)
    bad = np.eye(3)
    bad[0, 0] = np.inf
    with pytest.raises(UserError, match="sigma1 holds non-finite"):
        F.frechet_distance(mu, bad, mu, s)
    with pytest.raises(UserError, match="sigma1 is not positive semi-definite"):
        F.frechet_distance(mu, -np.eye(3), mu, s)
    asym = np.eye(3)
    asym[0, 1] = 0.5
    with pytest.raises(UserError, match="sigma2 is not symmetric"):
        F.frechet_distance(mu, s, mu, asym)


def test_images_to_float():
    u = torch.tensor([0, 255], dtype=torch.uint8).reshape(2, 1, 1, 1)
    x = F.images_to_float(u)
    assert x.shape == (2, 3, 1, 1) and x.dtype == torch.float32
    assert x[0].eq(0).all() and x[1].eq(1).all()
    f = torch.tensor([-1.0, 0.0, 1.0]).reshape(1, 3, 1, 1)
    assert torch.allclose(F.images_to_float(f).flatten(), torch.tensor([0.0, 0.5, 1.0]))
    assert F.images_to_float(np.zeros((2, 3, 4, 4), np.uint8)).shape == (2, 3, 4, 4)
    with pytest.raises(UserError, match="2 channels"):
        F.images_to_float(torch.zeros(1, 2, 4, 4, dtype=torch.uint8))
    with pytest.raises(UserError, match=r"\[-1, 1\]"):
        F.images_to_float(torch.full((1, 1, 2, 2), 3.0))
    with pytest.raises(UserError, match="non-finite"):
        F.images_to_float(torch.full((1, 1, 2, 2), float("nan")))
    with pytest.raises(UserError, match="uint8"):
        F.images_to_float(torch.zeros(1, 1, 2, 2, dtype=torch.int64))
    with pytest.raises(UserError, match="N×C×H×W"):
        F.images_to_float(torch.zeros(1, 2, 2, dtype=torch.uint8))


# ------------------------------------------------------------- (b) whole path, injected Inception


def test_fid_same_set_is_zero_and_shifted_set_is_positive(image_files, extractor):
    same = F.fid(image_files["same"], image_files["ref"], extractor)
    other = F.fid(image_files["other"], image_files["ref"], extractor)
    shifted = F.fid(image_files["shifted"], image_files["ref"], extractor)
    assert same.value == pytest.approx(0.0, abs=1e-8)
    assert other.value > 0.0
    assert shifted.value > 5 * other.value
    assert (same.n_samples, same.n_ref, same.feature_dim) == (300, 300, 192)
    assert same.ref_source == "computed" and same.cache_path is None
    line = shifted.protocol_line()
    for part in ("FID", "extractor", "weights", "n=300", "reference ref.safetensors", "resize bilinear to 75x75", "192-d"):
        assert part in line
    assert any("biased upward for small n" in w for w in shifted.warnings)
    assert shifted.to_dict()["protocol"] == line


def test_compute_statistics_shapes_and_small_n_warning(image_files, extractor):
    images = artifacts.load(image_files["ref"]).tensors["images"]
    mu, sigma, n = F.compute_statistics(images, extractor, batch_size=128)
    assert mu.shape == (192,) and sigma.shape == (192, 192) and n == 300
    assert mu.dtype == np.float64 and np.allclose(sigma, sigma.T)
    assert "n=300" in F.small_n_warning(n) and F.small_n_warning(10_000) is None


def test_own_inception_equals_pytorch_fid_inception(monkeypatch):
    """Same net as pytorch-fid's InceptionV3([3]) given the same weights (its download replaced by them)."""
    from pytorch_fid import inception as pfi

    torch.manual_seed(0)
    sd = F.build_fid_inception_net().state_dict()
    monkeypatch.setattr(pfi, "load_state_dict_from_url", lambda *a, **k: sd)
    theirs = pfi.InceptionV3([3]).eval()
    ours = F.FIDInceptionV3(sd).eval()
    x = torch.rand(2, 3, 20, 24)
    with torch.no_grad():
        a, b = theirs(x)[0], ours(x)[0]
    assert a.shape == b.shape == (2, 2048, 1, 1)
    assert torch.allclose(a, b, atol=1e-5)


def test_inception_weights_from_local_file(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "weights.pth"
    torch.save(F.build_fid_inception_net().state_dict(), path)
    ex = F.InceptionExtractor(weights_path=path)
    assert ex.feature_dim == 2048 and ex.id.startswith("inception-pool3-") and ex.id.endswith("-r299")
    assert "weights.pth" in ex.weights and "299x299" in ex.resize
    assert any("not comparable with published FIDs" in w for w in ex.warnings)  # not the release file
    feats = ex(F.images_to_float(torch.zeros(2, 1, 8, 8, dtype=torch.uint8)))
    assert feats.shape == (2, 2048) and torch.isfinite(feats).all()


# ---------------------------------------------------------------------------------- (c) caching


def test_reference_statistics_are_cached(image_files, extractor, inception_model, tmp_path):
    cache = tmp_path / "cache"
    first = F.fid(image_files["other"], image_files["ref"], extractor, cache_dir=cache)
    sha = artifacts.file_sha256(image_files["ref"])
    expected = cache / f"{sha}-{extractor.id}-300.npz"
    assert first.ref_source == "computed" and Path(first.cache_path) == expected and expected.is_file()
    assert not list(cache.glob("*.tmp"))

    seen = inception_model.images_seen
    second = F.fid(image_files["other"], image_files["ref"], extractor, cache_dir=cache)
    assert second.ref_source == "cache"
    assert inception_model.images_seen - seen == 300  # the samples only, not the reference
    assert second.value == first.value

    # the cache file is also a valid --ref
    from_npz = F.fid(image_files["other"], expected, extractor)
    assert from_npz.ref_source == "npz" and from_npz.value == pytest.approx(first.value, rel=1e-12)
    assert from_npz.n_ref == 300

    st = F.reference_statistics(image_files["ref"], extractor, cache)
    assert st.source == "cache" and st.mu.shape == (192,)


def test_statistics_file_validation(tmp_path, image_files, extractor):
    bad = tmp_path / "bad.npz"
    np.savez(bad, mu=np.zeros(192))
    with pytest.raises(UserError, match="lacks sigma"):
        F.reference_statistics(bad, extractor, None)
    np.savez(bad, mu=np.zeros(192), sigma=np.eye(5))
    with pytest.raises(UserError, match=r"expected \(d,\) and \(d, d\)"):
        F.reference_statistics(bad, extractor, None)
    other = tmp_path / "other.npz"
    F.save_statistics(other, np.zeros(192), np.eye(192), n=500, extractor_id="inception-pool3-000000000000-r299")
    with pytest.raises(UserError, match="computed with extractor inception-pool3-000000000000-r299"):
        F.fid(image_files["same"], other, extractor)
    # pytorch-fid's own --save-stats file (mu, sigma only) is accepted
    plain = tmp_path / "plain.npz"
    np.savez(plain, mu=np.zeros(192), sigma=np.eye(192))
    st = F.reference_statistics(plain, extractor, None)
    assert st.n is None and "extractor not recorded" in st.description
    (tmp_path / "junk.npz").write_bytes(b"not a zip file")
    with pytest.raises(UserError, match=r"is not a \.npz statistics file \(not a zip archive"):
        F.reference_statistics(tmp_path / "junk.npz", extractor, None)


# ----------------------------------------------------------------------------------- (d) errors


def test_missing_inception_weights_names_expected_path(tmp_path, monkeypatch):
    hub = tmp_path / "hub"
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(hub))
    expected = hub / "checkpoints" / F.INCEPTION_FILE
    with pytest.raises(UserError) as e:
        F.InceptionExtractor()
    msg = str(e.value)
    assert str(expected) in msg and "--inception-weights" in msg and "\n" not in msg
    with pytest.raises(UserError, match="not found"):
        F.InceptionExtractor(weights_path=tmp_path / "nowhere.pth")


def test_unusable_inception_weights_refused(tmp_path):
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable PyTorch state dict"):
        F.InceptionExtractor(weights_path=junk)
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(UserError, match="does not hold pytorch-fid's FID InceptionV3 weights"):
        F.InceptionExtractor(weights_path=wrong)


def test_too_few_images_refused(image_files, extractor, inception_model):
    seen = inception_model.images_seen
    with pytest.raises(UserError, match=r"FID needs more images than feature dimensions \(n=100, d=192\)"):
        F.fid(image_files["few"], image_files["ref"], extractor)
    with pytest.raises(UserError, match=r"\(n=100, d=192\)"):
        F.fid(image_files["ref"], image_files["few"], extractor)
    assert inception_model.images_seen == seen  # refused before computing any feature


def test_mismatched_channels_or_size_refused(image_files, extractor):
    with pytest.raises(UserError, match="are 3x16x16 but reference ref.safetensors is 1x16x16"):
        F.fid(image_files["rgb"], image_files["ref"], extractor)
    with pytest.raises(UserError, match="are 1x32x32 but reference"):
        F.fid(image_files["big"], image_files["ref"], extractor)


def test_wrong_artifact_kinds_refused(image_files, tmp_path):
    with pytest.raises(UserError, match="expected features"):
        F.ClassifierExtractor(image_files["same"])
    model = artifacts.save(tmp_path / "m.safetensors", "model", {"w": torch.zeros(1)})
    with pytest.raises(UserError, match="expected samples or dataset"):
        F.reference_statistics(model, F.InceptionExtractor(model=torch.nn.Identity()), None)


# ---------------------------------------------------------------- (e) classifier feature space


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict[str, Path]:
    from sklearn.datasets import load_digits

    d = tmp_path_factory.mktemp("digits")
    data = load_digits()
    images = torch.from_numpy(np.round(data.images * 255.0 / 16.0).astype(np.uint8))[:, None]
    labels = torch.from_numpy(data.target.astype(np.int64))
    g = torch.Generator().manual_seed(0)
    noise = torch.randint(0, 256, (900, 1, 8, 8), dtype=torch.uint8, generator=g)
    return {
        "data": _save_images(d / "digits.safetensors", images, kind="dataset", labels=labels),
        "subset": _save_images(d / "subset.safetensors", images[:900]),
        "noise": _save_images(d / "noise.safetensors", noise),
        "big": _save_images(d / "big.safetensors", _smooth_images(900, 16, seed=0)),
        "dir": d,
    }


def test_train_features_on_digits(digits, tmp_path):
    out = tmp_path / "features.safetensors"
    t0 = time.process_time()  # CPU time of this process: a budget that other busy processes do not inflate
    res = F.train_features(digits["data"], out, epochs=5, seed=0)
    assert time.process_time() - t0 < 30  # about 2 CPU-seconds on an idle 2-core machine
    assert res.accuracy > 0.8 and res.n_test == 180 and res.classes == list(range(10))
    art = artifacts.load(out, kind="features")
    assert art.meta["feature_dim"] == 128 and art.meta["image_shape"] == [1, 8, 8] and art.meta["arch"] == "lenet"
    assert art.meta["classes"] == list(range(10)) and art.meta["accuracy"] == pytest.approx(res.accuracy)
    assert all(k.startswith("classifier.") for k in art.tensors)
    assert art.parents and art.parents[0]["kind"] == "dataset"

    ex = F.ClassifierExtractor(out)
    real = F.fid(digits["subset"], digits["data"], ex)
    noise = F.fid(digits["noise"], digits["data"], ex)
    assert real.value < noise.value / 10
    assert "held-out accuracy" in real.protocol_line() and "none (native 8x8" in real.protocol_line()
    with pytest.raises(UserError, match="trained on 1x8x8"):
        F.fid(digits["big"], digits["big"], ex)

    with pytest.raises(UserError, match="output exists"):
        F.train_features(digits["data"], out, epochs=1)
    again = F.train_features(digits["data"], tmp_path / "again.safetensors", epochs=5, seed=0)
    assert again.accuracy == res.accuracy  # seeded


def test_train_features_input_errors(digits, tmp_path):
    with pytest.raises(UserError, match="expected dataset"):
        F.train_features(digits["subset"], tmp_path / "f.safetensors", epochs=1)
    one_class = _save_images(
        tmp_path / "one.safetensors", torch.zeros(20, 1, 8, 8, dtype=torch.uint8), "dataset", torch.zeros(20, dtype=torch.int64)
    )
    with pytest.raises(UserError, match="at least 2 classes"):
        F.train_features(one_class, tmp_path / "f.safetensors", epochs=1)
    with pytest.raises(UserError, match="epochs must be >= 1"):
        F.train_features(digits["data"], tmp_path / "f.safetensors", epochs=0)


def test_injected_model_without_known_dimension_is_probed(image_files):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3, stride=2), torch.nn.ReLU())  # spatial maps: avg-pooled
    ex = F.InceptionExtractor(model=net, name="tiny conv")
    assert ex.feature_dim is None
    res = F.fid(image_files["shifted"], image_files["ref"], ex)
    assert ex.feature_dim == 16 and res.feature_dim == 16 and res.value > 0 and "tiny conv" in res.protocol_line()
    assert ex.id.startswith("model-") and ex.id != F.InceptionExtractor(model=torch.nn.Conv2d(3, 16, 3, stride=2)).id


def test_malformed_features_artifact_refused(tmp_path):
    p = artifacts.save(tmp_path / "f.safetensors", "features", {"classifier.w": torch.zeros(2)}, meta={"feature_dim": 64})
    with pytest.raises(UserError, match="metadata is incomplete"):
        F.ClassifierExtractor(p)
    meta = {"feature_dim": 64, "image_shape": [1, 8, 8], "classes": [0, 1], "accuracy": 1.0}
    p = artifacts.save(tmp_path / "g.safetensors", "features", {"classifier.w": torch.zeros(2)}, meta=meta)
    with pytest.raises(UserError, match="classifier tensors do not match"):
        F.ClassifierExtractor(p)
