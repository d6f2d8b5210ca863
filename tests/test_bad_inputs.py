"""The bad-input corpus (tests/bad_inputs/cases.toml): every user mistake is one line on stderr, exit status 2,
no traceback, no output file and no temporary file left behind.

Binary fixtures are generated here, per case, in the case's own temporary folder (nothing binary is committed).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from ebmtool import artifacts
from ebmtool.config import tomllib

from conftest import _prepare, run_cli, run_sub, save_sealed

CASES_FILE = Path(__file__).parent / "bad_inputs" / "cases.toml"
CASES = tomllib.loads(CASES_FILE.read_text())["case"]
FIXTURES = {"data": "digits_ds", "data_other": "digits_other_ds", "data32": "digits32_ds", "gen": "gen_model",
            "nce": "nce_model", "mle": "mle_model"}
SUBCOMMANDS = ("data prepare", "pretrain-generator", "fit-prior", "sample", "reconstruct", "anomaly", "inspect")


# ----------------------------------------------------------------------------------------------------------
# builders of bad files
# ----------------------------------------------------------------------------------------------------------
def _md(kind: str, meta: dict | None = None) -> dict[str, str]:
    return {"ebmtool.kind": kind, "ebmtool.format": str(artifacts.FORMAT), "ebmtool.version": "test",
            "ebmtool.config": "{}", "ebmtool.parents": "[]", "ebmtool.meta": json.dumps(meta or {})}


def _images(n=8, size=8):
    return torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)


def _resave(src: Path, dst: Path, drop=(), replace=None, meta=None):
    """Rewrite an artifact with some tensors dropped / replaced or its meta changed (kind, config, parents kept)."""
    a = artifacts.load(src)
    tensors = {k: v for k, v in a.tensors.items() if k not in drop}
    tensors.update(replace or {})
    artifacts.save(dst, a.kind, tensors, config=a.config, meta=a.meta if meta is None else meta, parents=a.parents)


def build(spec: str, dst: Path, src_of) -> None:
    name, _, arg = spec.partition(":")
    labels = torch.arange(8) % 10
    if name == "folder":
        dst.mkdir()
    elif name == "text":
        dst.write_text("not an artifact\n")
    elif name == "empty":
        dst.write_bytes(b"")
    elif name == "random":
        dst.write_bytes(os.urandom(3000))
    elif name == "truncated":
        b = src_of(arg).read_bytes()
        dst.write_bytes(b[: len(b) // 2])
    elif name == "foreign":  # a valid safetensors file, not written by ebmtool
        save_file({"weight": torch.ones(3, 3)}, str(dst), metadata={"format": "pt"})
    elif name == "wrong_format":
        md = _md("dataset")
        md["ebmtool.format"] = "99"
        save_file({"images": _images()}, str(dst), metadata=md)
    elif name == "samples":
        artifacts.save(dst, "samples", {"images": _images()})
    elif name == "float_images_out_of_range":
        artifacts.save(dst, "dataset", {"images": torch.full((8, 1, 8, 8), 2.0), "labels": labels})
    elif name == "float_images_in_0_1":  # torchvision's ToTensor range, written by a hand-made converter
        artifacts.save(dst, "dataset", {"images": _images().float() / 255, "labels": labels})
    elif name == "float_images_outside_stated_range":
        artifacts.save(dst, "dataset", {"images": _images().float(), "labels": labels}, meta={"value_range": [0, 1]})
    elif name == "nan_images":  # artifacts.save refuses NaN: write it directly, with ebmtool metadata
        x = torch.zeros(8, 1, 8, 8)
        x[3, 0, 2, 2] = float("nan")
        save_sealed({"images": x, "labels": labels}, dst, metadata=_md("dataset", {"n": 8}))
    elif name == "int32_images":
        artifacts.save(dst, "dataset", {"images": _images().int(), "labels": labels})
    elif name == "images_3d":
        artifacts.save(dst, "dataset", {"images": _images()[:, 0], "labels": labels})
    elif name == "no_images":
        artifacts.save(dst, "dataset", {"labels": labels})
    elif name == "zero_images":
        artifacts.save(dst, "dataset", {"images": torch.zeros(0, 1, 8, 8, dtype=torch.uint8),
                                        "labels": torch.zeros(0, dtype=torch.long)})
    elif name == "non_square_images":
        artifacts.save(dst, "dataset", {"images": _images()[..., :6], "labels": labels})
    elif name == "labels_mismatch":
        artifacts.save(dst, "dataset", {"images": _images(), "labels": labels[:5]})
    elif name == "digits18":
        _prepare(dst, dataset="digits", size=18, limit=16)
    elif name == "digits_only_3":
        _prepare(dst, dataset="digits", only_class=3, limit=16)
    elif name == "toml_unknown_key":
        dst.write_text("epochs = 1\n[posterior]\nstpes = 5\n")
    elif name == "toml_wrong_type":
        dst.write_text('epochs = "many"\n')
    elif name == "toml_invalid":
        dst.write_text("epochs = = 1\n[[[\n")
    elif name == "mnist_gz_garbage":
        dst.mkdir()
        for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
            (dst / f).write_bytes(os.urandom(500))
    elif name == "mnist_gz_corrupt":  # a real gzip of real IDX bytes whose deflate data is damaged: zlib.error
        import gzip
        import struct

        dst.mkdir()
        idx = struct.pack(">BBBBIII", 0, 0, 8, 3, 20, 28, 28) + bytes(i % 7 for i in range(20 * 28 * 28))
        z = bytearray(gzip.compress(idx, mtime=0))
        z[15] ^= 0xFF
        (dst / "t10k-images-idx3-ubyte.gz").write_bytes(bytes(z))
        (dst / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(struct.pack(">BBBBI", 0, 0, 8, 1, 20) + bytes(20)))
    elif name == "mnist_idx_garbage":
        dst.mkdir()
        for f in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
            (dst / f).write_bytes(b"garbage!" * 64)
    elif name == "memory_wrong_latent_size":
        mem = artifacts.load(src_of(arg)).tensors["memory"]
        _resave(src_of(arg), dst, replace={"memory": torch.zeros(mem.shape[0], mem.shape[1] + 3)})
    elif name == "no_memory":
        _resave(src_of(arg), dst, drop=("memory",))
    elif name == "model_missing_tensor":
        a = artifacts.load(src_of(arg))
        _resave(src_of(arg), dst, drop=(next(k for k in a.tensors if k.startswith("generator.")),))
    elif name == "model_no_spec":
        a = artifacts.load(src_of(arg))
        _resave(src_of(arg), dst, meta={k: v for k, v in a.meta.items() if k != "model"})
    elif name == "model_bad_spec":
        a = artifacts.load(src_of(arg))
        spec = json.loads(json.dumps(a.meta["model"]))
        spec["generator"]["arch"] = "no-such-arch"
        _resave(src_of(arg), dst, meta={**a.meta, "model": spec})
    elif name == "mnist_bad_label":  # real IDX test files whose label file holds one label outside 0..9
        import struct

        dst.mkdir()
        idx = struct.pack(">BBBBIII", 0, 0, 8, 3, 20, 28, 28) + bytes(i % 7 for i in range(20 * 28 * 28))
        (dst / "t10k-images-idx3-ubyte").write_bytes(idx)
        labels_b = bytearray(i % 10 for i in range(20))
        labels_b[7] = int(arg)
        (dst / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">BBBBI", 0, 0, 8, 1, 20) + bytes(labels_b))
    elif name == "toml_text":  # a TOML file of the given text (\n for new lines)
        dst.write_text(arg.replace("\\n", "\n"))
    elif name == "fifo":  # reading it would block forever: it must be refused before it is opened
        os.mkfifo(dst)
    elif name == "copy":
        dst.write_bytes(src_of(arg).read_bytes())
    elif name == "npz":  # FID statistics of 2048 dims with one hand-made field: n=abc | shape0d
        import numpy as np

        extra = {"n": {"n": np.array("abc")}, "shape0d": {"image_shape": np.array(5)}}[arg]
        with open(dst, "wb") as f:
            np.savez(f, mu=np.zeros(2048), sigma=np.eye(2048), **extra)
    elif name == "scores_no_labels":
        artifacts.save(dst, "scores", {"scores": torch.linspace(0, 1, 8, dtype=torch.float64)})
    else:
        raise AssertionError(f"unknown builder {spec!r} in {CASES_FILE}")


# ----------------------------------------------------------------------------------------------------------
@pytest.fixture
def unwritable_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("readonly")
    d.chmod(0o555)
    try:
        if not os.access(d, os.W_OK):
            yield d
        elif Path("/proc/sys").is_dir() and not os.access("/proc/sys", os.W_OK):
            yield Path("/proc/sys")  # running as root: permissions do not bind, a read-only mount does
        else:
            pytest.skip("no folder this process cannot write to (root without a read-only mount)")
    finally:
        d.chmod(0o755)


def _listing(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")} if folder.is_dir() else set()


def test_corpus_is_well_formed():
    ids = [c["id"] for c in CASES]
    assert len(ids) == len(set(ids)), "case ids must be unique"
    assert len(CASES) >= 40
    known = {"id", "argv", "expect", "make", "outputs", "existing", "subprocess", "env"}
    for c in CASES:
        assert set(c) <= known, (c["id"], set(c) - known)
        assert c["expect"].strip(), c["id"]
    covered = {s for s in SUBCOMMANDS for c in CASES if " ".join(c["argv"]).startswith(s)}
    assert covered == set(SUBCOMMANDS)
    assert sum(bool(c.get("subprocess")) for c in CASES) >= 3


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_bad_input(case, tmp_path, request):
    folder = tmp_path / "case"
    folder.mkdir()
    # {nonutf8}: a file name whose bytes are not UTF-8 (0xff), as Python hands it over: a lone surrogate (PEP 383)
    values = {"dir": str(folder), "out": str(folder / "out.safetensors"),
              "nonutf8": str(folder / "bad\udcffname.safetensors")}
    text = json.dumps(case)
    for key in set(re.findall(r"\{(\w+)\}", text)):
        if key in FIXTURES:
            values[key] = str(request.getfixturevalue(FIXTURES[key]))
        elif key == "ro":
            values["ro"] = str(request.getfixturevalue("unwritable_dir"))
    sub = lambda s: s.format(**values)  # noqa: E731

    for name, spec in case.get("make", {}).items():
        build(spec, folder / name, lambda key: Path(values[key]) if key in values else
              Path(request.getfixturevalue(FIXTURES[key])))
    existing = Path(sub(case["existing"])) if "existing" in case else None
    if existing is not None:
        existing.write_bytes(b"precious bytes")
    before = _listing(folder)
    outputs = [Path(sub(o)) for o in case.get("outputs", ["{out}"])]
    assert not any(o.exists() for o in outputs if o != existing)

    argv = [sub(a) for a in case["argv"]]
    assert "env" not in case or case.get("subprocess"), "env needs subprocess = true"
    run = run_sub(argv, env=case.get("env")) if case.get("subprocess") else run_cli(argv)

    everything = run.out + run.err
    assert "Traceback" not in everything, everything
    assert run.code == 2, f"exit {run.code}\nstdout:\n{run.out}\nstderr:\n{run.err}"
    assert len(run.err_lines) == 1, f"expected one line on stderr, got:\n{run.err}"
    line = run.err_lines[0]
    assert case["expect"] in line, f"{case['expect']!r} not in {line!r}"
    assert line.startswith("ebmtool: error: ") and len(line) > len("ebmtool: error: ") + 5
    for o in outputs:
        if o == existing:
            assert o.read_bytes() == b"precious bytes", f"{o} was overwritten"
        else:
            assert not o.exists(), f"{o} was written"
    assert _listing(folder) == before, f"left behind: {_listing(folder) - before}"
    if "ro" in values and Path(values["ro"]).is_dir() and values["ro"] != "/proc/sys":
        assert _listing(Path(values["ro"])) == set()
