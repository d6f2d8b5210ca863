"""artifacts: bit-exact round trips, metadata / config / lineage, atomic writes, refusals with the path named."""

from __future__ import annotations

import json
import os

import pytest
import torch
from pydantic import BaseModel
from safetensors.torch import save_file

from ebmtool import __version__, artifacts
from ebmtool.errors import UserError
from conftest import save_sealed


class Cfg(BaseModel):
    lr: float = 1e-4
    name: str = "x"


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {
        "generator.w": torch.randn(3, 4, generator=g),
        "generator.b": torch.randn(4, generator=g).double(),
        "half": torch.randn(5, generator=g).half(),
        "images": torch.randint(0, 256, (2, 1, 8, 8), generator=g, dtype=torch.uint8),
        "labels": torch.tensor([3, 7]),
        "scalar": torch.tensor(1.5),
        "empty": torch.zeros(0, 3),
        "tiny": torch.tensor([torch.finfo(torch.float32).tiny, -0.0, 1e38]),
    }


def _raw(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def _no_temp(folder):
    return [p.name for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def test_round_trip_is_bit_exact(tmp_path):
    t = _tensors()
    parent_file = artifacts.save(tmp_path / "parent.safetensors", "dataset", {"images": t["images"]})
    parent = artifacts.load(parent_file)
    p = artifacts.save(tmp_path / "a.safetensors", "model", t, config=Cfg(lr=3e-3), meta={"stages": 2, "x": [1, 2]},
                       parents=[parent, {"path": "elsewhere", "sha256": "0" * 64, "kind": "model"}])
    a = artifacts.load(p, "model")
    assert a.kind == "model" and a.version == __version__
    assert set(a.tensors) == set(t)
    for k, v in t.items():
        assert a.tensors[k].dtype == v.dtype and a.tensors[k].shape == v.shape
        assert _raw(a.tensors[k]) == _raw(v), k  # bit-exact (also -0.0 and subnormal-adjacent values)
    assert a.config == {"lr": 3e-3, "name": "x"}
    assert a.meta == {"stages": 2, "x": [1, 2]}
    assert a.parents[0] == {"path": str(parent_file), "sha256": artifacts.file_sha256(parent_file), "kind": "dataset"}
    assert a.parents[1]["sha256"] == "0" * 64
    assert a.group("generator").keys() == {"w", "b"}
    assert a.sha256 == artifacts.file_sha256(p)
    assert _no_temp(tmp_path) == []


def test_lineage_sha_matches_file_bytes(tmp_path):
    import hashlib

    d = artifacts.save(tmp_path / "d.safetensors", "dataset", {"images": torch.zeros(1, 1, 2, 2, dtype=torch.uint8)})
    m = artifacts.save(tmp_path / "m.safetensors", "model", {"w": torch.ones(1)}, parents=[artifacts.load(d)])
    par = artifacts.load(m).parents
    assert par[0]["sha256"] == hashlib.sha256(d.read_bytes()).hexdigest()
    assert par[0]["kind"] == "dataset" and par[0]["path"] == str(d)


def test_metadata_fields_are_written(tmp_path):
    from safetensors import safe_open

    p = artifacts.save(tmp_path / "s.safetensors", "samples", {"images": torch.zeros(1, 1, 2, 2, dtype=torch.uint8)},
                       config={"b": 1}, meta={"n": 1})
    with safe_open(str(p), framework="pt") as f:
        md = f.metadata()
    assert md["ebmtool.kind"] == "samples" and md["ebmtool.format"] == str(artifacts.FORMAT)
    assert json.loads(md["ebmtool.config"]) == {"b": 1} and json.loads(md["ebmtool.meta"]) == {"n": 1}
    assert json.loads(md["ebmtool.parents"]) == []


def test_shared_storage_tensors_are_saved(tmp_path):
    base = torch.arange(6.0)
    p = artifacts.save(tmp_path / "s.safetensors", "model", {"a": base, "b": base.view(2, 3), "c": base[:3]})
    a = artifacts.load(p)
    assert torch.equal(a.tensors["b"], base.view(2, 3)) and torch.equal(a.tensors["c"], base[:3])


def test_tensor_sha256_is_content_hash():
    x = torch.arange(4, dtype=torch.uint8)
    assert artifacts.tensor_sha256(x) == artifacts.tensor_sha256(x.clone())
    assert artifacts.tensor_sha256(x) != artifacts.tensor_sha256(x.long())
    assert artifacts.tensor_sha256(x) != artifacts.tensor_sha256(x.view(2, 2))


def test_refuses_overwrite_without_force(tmp_path):
    p = artifacts.save(tmp_path / "a.safetensors", "model", {"w": torch.ones(1)})
    before = p.read_bytes()
    with pytest.raises(UserError, match="output exists"):
        artifacts.save(p, "model", {"w": torch.zeros(1)}, force=False)
    assert p.read_bytes() == before
    artifacts.save(p, "model", {"w": torch.zeros(1)}, force=True)
    assert torch.equal(artifacts.load(p).tensors["w"], torch.zeros(1))
    assert _no_temp(tmp_path) == []


def test_check_output_refusals(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        artifacts.check_output(tmp_path / "nope" / "a.safetensors", False)
    with pytest.raises(UserError, match="is a folder"):
        artifacts.check_output(tmp_path, True)
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="not a folder"):
        artifacts.check_output(tmp_path / "file" / "a.safetensors", False)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_refuses_non_finite_on_save(tmp_path, bad):
    p = tmp_path / "a.safetensors"
    with pytest.raises(UserError, match="non-finite") as e:
        artifacts.save(p, "model", {"ok": torch.ones(2), "w": torch.tensor([1.0, bad])})
    assert str(p) in str(e.value) and "'w'" in str(e.value)
    assert not p.exists() and list(tmp_path.iterdir()) == []


def test_atomic_write_leaves_nothing_on_failure(tmp_path, monkeypatch):
    """A write the system refuses half-way (a full disk) is one line naming the file, and leaves nothing behind."""
    import errno

    from ebmtool import files

    real = files.atomic_write

    def boom(path, data, overwrite=True):  # the disk fills half-way through the write
        with real(path, overwrite) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "write_bytes", boom)
    p = tmp_path / "a.safetensors"
    with pytest.raises(files.WriteError, match="No space left on device") as e:
        artifacts.save(p, "model", {"w": torch.ones(1)})
    assert str(e.value).startswith(f"{p}: ")
    assert list(tmp_path.iterdir()) == []


def test_refuses_non_finite_on_load(tmp_path):
    p = tmp_path / "nan.safetensors"
    save_sealed({"w": torch.tensor([1.0, float("nan")])}, p,
                metadata={"ebmtool.kind": "model", "ebmtool.format": str(artifacts.FORMAT)})
    with pytest.raises(UserError, match="non-finite") as e:
        artifacts.load(p)
    assert str(p) in str(e.value)


def _write_bad(tmp_path, how: str):
    p = tmp_path / f"{how}.safetensors"
    good = artifacts.save(tmp_path / "good.safetensors", "model", {"w": torch.randn(64, 64)})
    if how == "truncated":
        b = good.read_bytes()
        p.write_bytes(b[: len(b) // 2])
    elif how == "truncated-header":
        p.write_bytes(good.read_bytes()[:20])
    elif how == "empty":
        p.write_bytes(b"")
    elif how == "random":
        p.write_bytes(os.urandom(4096))
    elif how == "text":
        p.write_text("this is not a safetensors file\n" * 20)
    elif how == "foreign":
        save_file({"w": torch.ones(3)}, str(p))
    elif how == "foreign-metadata":
        save_file({"w": torch.ones(3)}, str(p), metadata={"format": "pt"})
    elif how == "wrong-format":
        save_file({"w": torch.ones(3)}, str(p), metadata={"ebmtool.kind": "model", "ebmtool.format": "99"})
    elif how == "bad-json":
        save_file({"w": torch.ones(3)}, str(p), metadata={"ebmtool.kind": "model", "ebmtool.format": "1",
                                                          "ebmtool.meta": "{not json"})
    return p


@pytest.mark.parametrize("how,expect", [
    ("truncated", "safetensors"), ("truncated-header", "safetensors"), ("empty", "empty or truncated"),
    ("random", "not a readable safetensors"), ("text", "not a readable safetensors"),
    ("foreign", "not an ebmtool artifact"), ("foreign-metadata", "not an ebmtool artifact"),
    ("wrong-format", "format"), ("bad-json", "not valid JSON"),
])
def test_bad_files_give_user_error_with_path(tmp_path, how, expect):
    p = _write_bad(tmp_path, how)
    with pytest.raises(UserError) as e:
        artifacts.load(p)
    msg = str(e.value)
    assert str(p) in msg and expect in msg
    assert "\n" not in msg


def test_missing_folder_and_kind_mismatch(tmp_path):
    with pytest.raises(UserError, match="not found"):
        artifacts.load(tmp_path / "missing.safetensors")
    with pytest.raises(UserError, match="is a folder"):
        artifacts.load(tmp_path)
    p = artifacts.save(tmp_path / "d.safetensors", "dataset", {"images": torch.zeros(1, 1, 2, 2, dtype=torch.uint8)})
    with pytest.raises(UserError, match="is a dataset artifact, expected model") as e:
        artifacts.load(p, "model")
    assert str(p) in str(e.value)
    assert artifacts.load(p, ("model", "dataset")).kind == "dataset"
    with pytest.raises(UserError, match="lacks tensor"):
        artifacts.load(p).require("images", "labels")


def test_unknown_kind_is_a_programming_error(tmp_path):
    with pytest.raises(ValueError):
        artifacts.save(tmp_path / "x.safetensors", "weird", {"w": torch.ones(1)})
