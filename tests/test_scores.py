"""Label-free anomaly scores (ebmtool.eval.scores) against tiny hand-computed cases, and the CLI's --score."""

from __future__ import annotations

import io
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from ebmtool.errors import UserError
from ebmtool.eval import scores as S

TERMS = {"recon": np.array([10.0, 2.0, 5.0]), "tilt": np.array([-1.0, 0.5, 0.0]), "base": np.array([3.0, 1.0, 2.0])}


def test_joint_recon_prior_by_hand():
    assert S.score("joint", TERMS).tolist() == [12.0, 3.5, 7.0]
    assert S.score("recon", TERMS).tolist() == [10.0, 2.0, 5.0]
    assert S.score("prior", TERMS).tolist() == [2.0, 1.5, 2.0]


def test_typicality_is_two_sided_distance_from_the_calibration_mean():
    # joint = 12, 3.5, 7; normals' joints 6, 8 (mean 7): the image *below* the mean (3.5) is as atypical as one above
    cal = {"recon": np.array([4.0, 6.0]), "tilt": np.array([0.0, 0.0]), "base": np.array([2.0, 2.0])}
    assert S.score("typicality", TERMS, calibration=cal).tolist() == [5.0, 3.5, 0.0]


def test_dose_is_mahalanobis_distance_to_the_calibration_gaussian():
    # calibration: recon in {1, 3} (mean 2, var 2), tilt in {0, 0, ...} -> independent unit cases by hand
    cal = {"a": np.array([1.0, 3.0, 1.0, 3.0]), "b": np.array([0.0, 0.0, 2.0, 2.0])}  # cov = diag(4/3, 4/3)
    terms = {"a": np.array([2.0, 4.0, 2.0]), "b": np.array([1.0, 1.0, -1.0])}
    d = S.score("dose", terms, calibration=cal)
    np.testing.assert_allclose(d, [0.0, 4 / (4 / 3), 4 / (4 / 3)], rtol=1e-5)
    # two-sided per term: too low a reconstruction error is as atypical as too high
    lo = S.score("dose", {"a": np.array([0.0]), "b": np.array([1.0])}, calibration=cal)
    np.testing.assert_allclose(lo, d[1:2], rtol=1e-5)
    with pytest.raises(UserError, match="too few"):
        S.score("dose", terms, calibration={"a": np.array([1.0, 2.0]), "b": np.array([0.0, 1.0])})


def test_complexity_is_joint_bits_minus_png_bits():
    imgs = torch.zeros(3, 1, 8, 8, dtype=torch.uint8)
    imgs[1] = torch.randint(0, 256, (1, 8, 8), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    bits = []
    for a in imgs[:, 0].numpy():
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="PNG", compress_level=9)
        bits.append(8 * len(buf.getvalue()))
    assert S.png_bits(imgs).tolist() == bits
    assert bits[1] > bits[0]  # noise compresses worse than a blank image
    np.testing.assert_allclose(S.score("complexity", TERMS, images=imgs),
                               np.array([12.0, 3.5, 7.0]) / math.log(2) - np.array(bits))


def test_refusals_are_one_line_user_errors():
    with pytest.raises(UserError, match="unknown score"):
        S.score("nope", TERMS)
    with pytest.raises(UserError, match="--calibrate"):
        S.score("typicality", TERMS)
    with pytest.raises(UserError, match="--calibrate"):
        S.score("dose", TERMS)
    with pytest.raises(UserError, match="no latent decomposition"):
        S.score("recon", {"score": np.ones(3)})


def test_png_bits_rejects_float_images():
    with pytest.raises(ValueError):
        S.png_bits(torch.zeros(2, 1, 4, 4))


def test_calibration_parts_split_train_disjointly():
    from ebmtool.data.prepare import calibration_split, protocol_split

    labels = torch.arange(1000) % 10
    train, test = protocol_split(labels, 3)
    fit, cal = calibration_split(train)
    assert len(fit) + len(cal) == len(train) and len(cal) == round(0.1 * len(train))
    assert not set(fit.tolist()) & set(cal.tolist())
    assert set(fit.tolist()) | set(cal.tolist()) == set(train.tolist())
    assert not set(cal.tolist()) & set(test.tolist())


@pytest.fixture
def normals_only(tmp_path):
    """Digits without class 1: calibration normals for --anomaly-class 1."""
    from conftest import run_cli

    p = tmp_path / "cal.safetensors"
    run_cli(["data", "prepare", "--dataset", "digits", "--exclude-class", "1", "--limit", "150", "-o", p]).ok()
    return p


def test_anomaly_cli_every_score(tmp_path, digits_ds, normals_only, mle_model):
    """Each --score through the CLI; the scores artifact keeps every term; typicality uses --calibrate."""
    from safetensors.torch import load_file

    from conftest import run_cli

    out = {}
    for name in S.SCORES:
        extra = ["--calibrate", normals_only] if name in S.CALIBRATED else []
        o = tmp_path / f"{name}.safetensors"
        r = run_cli(["anomaly", "--model", mle_model, "--data", digits_ds, "--anomaly-class", "1", "--score", name,
                     "--steps", "3", "-o", o, "--json", *extra]).ok()
        out[name] = json.loads(r.out)
        t = load_file(o)
        assert {"terms.recon", "terms.tilt", "terms.base", "scores", "labels"} <= set(t)
        if name == "joint":
            torch.testing.assert_close(t["scores"], t["terms.recon"] + t["terms.tilt"] + t["terms.base"])
        if name == "prior":
            torch.testing.assert_close(t["scores"], t["terms.tilt"] + t["terms.base"])
    assert out["joint"]["score"] == "joint" and out["typicality"]["calibration_mean_joint"] is not None
    r = run_cli(["anomaly", "--model", mle_model, "--data", digits_ds, "--anomaly-class", "1", "--score", "typicality"])
    assert r.code == 2 and r.err_lines == [ln for ln in r.err_lines if "--calibrate" in ln] and len(r.err_lines) == 1
    r = run_cli(["anomaly", "--model", mle_model, "--data", digits_ds, "--anomaly-class", "1", "--calibrate", digits_ds])
    assert r.code == 2 and len(r.err_lines) == 1 and "typicality" in r.err


def test_calibration_with_anomalies_and_late_figure_errors_are_refused_up_front(tmp_path, digits_ds, mle_model):
    """--calibrate holding the anomaly class is refused; a bad --pr-curve extension is refused before any output."""
    from conftest import run_cli

    r = run_cli(["anomaly", "--model", mle_model, "--data", digits_ds, "--anomaly-class", "1", "--score", "dose",
                 "--calibrate", digits_ds])
    assert r.code == 2 and len(r.err_lines) == 1 and "anomaly class 1" in r.err
    o = tmp_path / "s.safetensors"
    r = run_cli(["anomaly", "--model", mle_model, "--data", digits_ds, "--anomaly-class", "1", "-o", o,
                 "--pr-curve", tmp_path / "pr.jpg"])
    assert r.code == 2 and len(r.err_lines) == 1 and not o.exists()


def test_scores_artifact_keeps_the_calibration_terms(tmp_path, digits_ds, normals_only, mle_model):
    """typicality and dose can be recomputed from the artifact alone."""
    from safetensors.torch import load_file

    from conftest import run_cli

    o = tmp_path / "s.safetensors"
    run_cli(["anomaly", "--model", mle_model, "--data", digits_ds, "--anomaly-class", "1", "--score", "dose",
             "--calibrate", normals_only, "--steps", "3", "-o", o]).ok()
    t = load_file(o)
    terms = {k[len("terms."):]: t[k].numpy() for k in t if k.startswith("terms.")}
    cal = {k[len("calibration.terms."):]: t[k].numpy() for k in t if k.startswith("calibration.terms.")}
    np.testing.assert_allclose(t["scores"].numpy(), S.score("dose", terms, calibration=cal))
