"""Fuzzing a real model artifact: truncated at random offsets, header and tensor bytes flipped, metadata that is
not JSON, missing or of the wrong shape, tensors of the wrong shape or dtype, non-finite weights. Every mutation goes
through ``inspect``, ``sample`` and ``fit-prior --init`` (in-process, as a user's command line); each ends in
exit 0 or 2, with no traceback, one line on stderr when refused, and no output or temporary file left behind; and
no command accepts a mutated file whose bytes differ from the original (the integrity hash, docs/design.md §2).
Datasets likewise: changed pixels, labels, content_sha256 or value_range are refused."""

from __future__ import annotations

import json
import random
import struct
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from conftest import run_cli

SEED = 14


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(path), "pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata())


def mutations(src: Path, work: Path) -> list[tuple[str, Path]]:
    rng = random.Random(SEED)
    raw = src.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    tensors, md = _read(src)
    out: list[tuple[str, Path]] = []

    def add_bytes(name: str, data: bytes) -> None:
        p = work / f"m{len(out):03d}.safetensors"
        p.write_bytes(data)
        out.append((name, p))

    def add_st(name: str, t: dict[str, torch.Tensor], m: dict[str, str]) -> None:
        p = work / f"m{len(out):03d}.safetensors"
        save_file(t, str(p), metadata=m)
        out.append((name, p))

    # truncation at random offsets (and the edges of the header)
    offsets = {0, 1, 7, 8, 9, 8 + hlen - 1, 8 + hlen, 8 + hlen + 1, len(raw) - 1}
    offsets |= {rng.randrange(1, len(raw)) for _ in range(22)}
    for off in sorted(offsets):
        add_bytes(f"truncate@{off}", raw[:off])
    # flipped bytes in the length prefix and the JSON header
    for _ in range(30):
        pos = rng.randrange(0, 8 + hlen)
        b = bytearray(raw)
        b[pos] ^= rng.randrange(1, 256)
        add_bytes(f"flip@{pos}", bytes(b))
    # metadata values that are not JSON, of the wrong JSON type, or missing
    for key in sorted(md):
        for bad in ("{not json", "null", "[]", "123", "", '"text"', "{}"):
            add_st(f"{key}={bad!r}", tensors, {**md, key: bad})
        add_st(f"{key} missing", tensors, {k: v for k, v in md.items() if k != key})
    add_st("no metadata", tensors, {})
    # a model spec of the wrong shape
    meta = json.loads(md["ebmtool.meta"])
    spec = meta["model"]
    spec_variants = {
        "model spec missing": {k: v for k, v in meta.items() if k != "model"},
        "model spec a number": {**meta, "model": 5},
        "generator spec missing": {**meta, "model": {k: v for k, v in spec.items() if k != "generator"}},
        "nz 9": {**meta, "model": {**spec, "generator": {**spec["generator"], "nz": 9}}},
        "nz a string": {**meta, "model": {**spec, "generator": {**spec["generator"], "nz": "8"}}},
        "nz negative": {**meta, "model": {**spec, "generator": {**spec["generator"], "nz": -3}}},
        "ngf 0": {**meta, "model": {**spec, "generator": {**spec["generator"], "ngf": 0}}},
        "unknown arch": {**meta, "model": {**spec, "generator": {**spec["generator"], "arch": "nope"}}},
        "image_shape 1x9x9": {**meta, "model": {**spec, "image_shape": [1, 9, 9]}},
        "image_shape short": {**meta, "model": {**spec, "image_shape": [8]}},
        "unknown prior": {**meta, "model": {**spec, "prior": {"type": "nope"}}},
        "prior missing nz": {**meta, "model": {**spec, "prior": {"type": spec["prior"]["type"]}}},
        "inference chain empty": {**meta, "model": {**spec, "inference": {}}},
        "negative sigma": {**meta, "model": {**spec, "sigma": -1.0}},
        "sigma a string": {**meta, "model": {**spec, "sigma": "x"}},
        "unknown model type": {**meta, "model": {**spec, "type": "nope"}},
    }
    for name, m in spec_variants.items():
        add_st(name, tensors, {**md, "ebmtool.meta": json.dumps(m)})
    # tensors of the wrong shape or dtype, missing, extra, non-finite
    names = sorted(k for k in tensors if tensors[k].is_floating_point() and tensors[k].ndim >= 1)
    for k in rng.sample(names, 6):
        t = tensors[k]
        for label, bad in (("float64", t.double()), ("float16", t.half()), ("int32", t.to(torch.int32)),
                           ("rows-1", t[:-1] if len(t) > 1 else t[:0]), ("flat", t.reshape(-1)),
                           ("extra dim", t.unsqueeze(0)), ("nan", torch.full_like(t, float("nan")))):
            add_st(f"{k} {label}", {**tensors, k: bad.contiguous()}, md)
        add_st(f"{k} missing", {n: v for n, v in tensors.items() if n != k}, md)
    add_st("extra tensor", {**tensors, "generator.extra": torch.zeros(3)}, md)
    # bytes of the tensors changed in place (the header untouched): weights safetensors cannot tell from others
    for _ in range(12):
        pos = rng.randrange(8 + hlen, len(raw))
        b = bytearray(raw)
        b[pos] ^= rng.randrange(1, 256)
        add_bytes(f"data flip@{pos}", bytes(b))
    return out


def dataset_mutations(src: Path, work: Path) -> list[tuple[str, Path]]:
    """A dataset with changed pixels or labels (in place, or rewritten with the header's hashes kept), and with the
    metadata that matters edited: its content_sha256, value_range, n, classes."""
    rng = random.Random(SEED + 1)
    raw = src.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    tensors, md = _read(src)
    meta = json.loads(md["ebmtool.meta"])
    out: list[tuple[str, Path]] = []
    for i in range(10):
        b = bytearray(raw)
        for pos in rng.sample(range(8 + hlen, len(raw)), 1 if i < 5 else 3000 // 10):
            b[pos] ^= rng.randrange(1, 256)
        p = work / f"d{len(out):03d}.safetensors"
        p.write_bytes(bytes(b))
        out.append((f"dataset bytes flipped ({i})", p))
    images = tensors["images"].clone()
    images[0, 0, 0, 0] ^= 1
    labels = tensors["labels"].clone()
    labels[0] = (labels[0] + 1) % 10
    edits = {"pixel changed": ({**tensors, "images": images}, md),
             "label changed": ({**tensors, "labels": labels}, md)}
    for key, value in (("content_sha256", "0" * 64), ("value_range", [0, 1]), ("n", meta["n"]),
                       ("classes", [0, 1]), ("dataset", "mnist")):
        edits[f"meta {key} = {value}"] = (tensors, {**md, "ebmtool.meta": json.dumps({**meta, key: value})})
    for name, (t, m) in edits.items():
        p = work / f"d{len(out):03d}.safetensors"
        save_file(t, str(p), metadata=m)
        out.append((name, p))
    return out


def _check(r, out: Path, what: str) -> None:
    assert r.code in (0, 2), f"{what}: exit {r.code}\n{r.err[-2000:]}"
    assert "Traceback" not in r.err and "Traceback" not in r.out, f"{what}:\n{r.err[-2000:]}"
    if r.code == 2:
        assert len(r.err_lines) == 1 and r.err_lines[0].startswith("ebmtool: error:"), f"{what}: {r.err_lines}"
        assert not out.exists(), f"{what}: refused but wrote {out.name}"
    leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    assert not leftovers, f"{what}: temporary files left behind: {leftovers}"
    out.unlink(missing_ok=True)


def test_mutated_artifacts_end_in_exit_0_or_2(gen_model, digits_ds, tmp_path):
    work = tmp_path / "mutants"
    work.mkdir()
    outs = tmp_path / "out"
    outs.mkdir()
    cases = mutations(gen_model, work)
    assert len(cases) >= 100
    codes = {0: 0, 2: 0}
    sample_code, accepted_by = {}, {}
    for name, path in cases:
        r = run_cli(["inspect", path])
        _check(r, outs / "none", f"inspect [{name}]")
        accepted_by[name] = ["inspect"] if r.code == 0 else []
        out = outs / "s.safetensors"
        r = run_cli(["sample", "--model", path, "-n", 4, "--device", "cpu", "-o", out])
        _check(r, out, f"sample [{name}]")
        codes[r.code] += 1
        sample_code[name] = r.code
        accepted_by[name] += ["sample"] if r.code == 0 else []
        out = outs / "f.safetensors"
        r = run_cli(["fit-prior", "--method", "mle", "--init", path, "--data", digits_ds, "--preset", "smoke",
                     "--device", "cpu", "--epochs", 1, "--batch-size", 96, "--set", "prior.steps=1",
                     "--set", "posterior.steps=1", "--quiet", "-o", out])
        _check(r, out, f"fit-prior --init [{name}]")
        codes[r.code] += 1
        accepted_by[name] += ["fit-prior --init"] if r.code == 0 else []
    assert codes[2] >= 250  # most mutations are refused
    # integrity: no command accepts a file whose bytes changed (the rest rewrote the file as it was)
    original = gen_model.read_bytes()
    accepted = {n: accepted_by[n] for n, path in cases if accepted_by[n] and path.read_bytes() != original}
    assert accepted == {}, accepted
    # a damaged weight is refused, never cast or broadcast into the model
    damaged = [n for n in sample_code if n.startswith("generator.") and n.split()[-1] in
               ("float64", "float16", "int32", "rows-1", "dim", "nan", "missing")]
    assert damaged and all(sample_code[n] == 2 for n in damaged), {n: sample_code[n] for n in damaged}
    assert sample_code["negative sigma"] == 2 and sample_code["truncate@8"] == 2


def test_changed_dataset_is_refused_by_every_command_that_reads_it(gen_model, digits_ds, tmp_path):
    """A dataset whose pixels, labels or metadata changed after ``data prepare`` wrote it is refused, also where the
    README says its content hash is checked (``fit-prior --init`` of an adaptive-NCE model) and on ``--resume``."""
    work = tmp_path / "mutants"
    work.mkdir()
    out = tmp_path / "f.safetensors"
    original = digits_ds.read_bytes()
    cases = dataset_mutations(digits_ds, work)
    assert len(cases) >= 15
    for name, path in cases:
        assert path.read_bytes() != original, name
        r = run_cli(["fit-prior", "--method", "mle", "--init", gen_model, "--data", path, "--preset", "smoke",
                     "--device", "cpu", "--epochs", 1, "--batch-size", 96, "--set", "prior.steps=1",
                     "--set", "posterior.steps=1", "--quiet", "-o", out])
        _check(r, out, f"fit-prior --data [{name}]")
        assert r.code == 2 and str(path) in r.err, f"fit-prior --data [{name}] accepted:\n{r.out[-500:]}"
        r = run_cli(["inspect", path])
        _check(r, tmp_path / "none", f"inspect [{name}]")
        assert r.code == 2, f"inspect [{name}] accepted"
