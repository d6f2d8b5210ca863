"""The only module that touches safetensors files.

An artifact is a safetensors file whose string metadata carries

* ``ebmtool.kind``     dataset | model | samples | reconstructions | scores | features | checkpoint
* ``ebmtool.format``   integer, bumped on an incompatible change
* ``ebmtool.version``  the package version that wrote it
* ``ebmtool.config``   JSON of the resolved pydantic config that produced it
* ``ebmtool.parents``  JSON list of ``{path, sha256, kind}`` (lineage)
* ``ebmtool.meta``     JSON of kind-specific fields

* ``ebmtool.sha256``   the integrity hash: the SHA-256 of every byte of the file, this field's 64 hex digits read
  as zeros (format 2; see :func:`seal`)

Writes are atomic and, without ``force``, exclusive (:func:`ebmtool.files.atomic_write`); loads are validated
(the integrity hash first, so a changed tensor byte or metadata value is refused) and every problem is a
:class:`~ebmtool.errors.UserError` naming the file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from ebmtool import files
from ebmtool._version import __version__
from ebmtool.errors import UserError
from ebmtool.files import WriteError

FORMAT = 2  # 2: every file carries ebmtool.sha256
LEGACY_FORMATS = (1,)  # written before the integrity hash: read, their content hashes recomputed (docs/design.md §2)
HASH_KEY = "ebmtool.sha256"
_PLACEHOLDER = "0" * 64
KINDS = ("dataset", "model", "samples", "reconstructions", "scores", "features", "checkpoint")
METADATA_KEYS = ("ebmtool.kind", "ebmtool.format", "ebmtool.version", "ebmtool.config", "ebmtool.parents",
                 "ebmtool.meta", HASH_KEY)  # every string-metadata key of an artifact; required: kind and format


@dataclass
class Artifact:
    path: Path
    kind: str
    tensors: dict[str, torch.Tensor]
    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    parents: list[dict[str, Any]] = field(default_factory=list)
    version: str = ""
    format: int = FORMAT  # 1: written before the integrity hash (read, not verified: docs/design.md §2)

    def require(self, *names: str) -> None:
        missing = [n for n in names if n not in self.tensors]
        if missing:
            raise UserError(f"{self.path}: {self.kind} artifact lacks tensor(s) {', '.join(missing)}")

    def group(self, prefix: str) -> dict[str, torch.Tensor]:
        """Tensors under ``prefix.`` with the prefix stripped (a module's state dict)."""
        p = prefix + "."
        return {k[len(p):]: v for k, v in self.tensors.items() if k.startswith(p)}

    @property
    def sha256(self) -> str:
        return file_sha256(self.path)

    def as_parent(self) -> dict[str, Any]:
        return {"path": str(self.path), "sha256": self.sha256, "kind": self.kind}


@dataclass
class MemoryArtifact(Artifact):
    """What a file's :class:`Artifact` gives a stage, for an object held in memory (a model passed to the Python
    API as ``init``): no file; ``path`` only names it in messages, its sha256 is its tensors' content hash, and as
    a parent in a lineage it has ``path`` None and ``in_memory`` true."""

    @property
    def sha256(self) -> str:
        return tensor_sha256(*(self.tensors[k] for k in sorted(self.tensors)))

    def as_parent(self) -> dict[str, Any]:
        return {"path": None, "sha256": self.sha256, "kind": self.kind, "in_memory": True}


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tensor_sha256(*tensors: torch.Tensor) -> str:
    """Content hash of tensors (independent of file metadata)."""
    h = hashlib.sha256()
    for t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(str(tuple(t.shape)).encode())
        h.update(str(t.dtype).encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())  # the tensor's bytes, hashed in place
    return h.hexdigest()


def check_output(path: str | os.PathLike, force: bool) -> Path:
    """Refuse to overwrite without ``force`` and refuse a folder that cannot be written. Call before work."""
    p = Path(path)
    if p.exists() and p.is_dir():
        raise UserError(f"{p}: output path is a folder")
    if p.exists() and not force:
        raise UserError(f"{p}: output exists (pass --force to overwrite)")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.exists():
        raise UserError(f"{p}: output folder {parent} does not exist")
    if not parent.is_dir():
        raise UserError(f"{p}: output folder {parent} is not a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"{p}: output folder {parent} is not writable")
    return p


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (the same resolved path, or the same inode through a link)."""
    pa, pb = Path(a), Path(b)
    if pa.resolve() == pb.resolve():
        return True
    try:
        return pa.exists() and pb.exists() and os.path.samefile(pa, pb)
    except OSError:
        return False


def check_distinct(outputs: Mapping[str, Any], inputs: Mapping[str, Any]) -> None:
    """Refuse an output that names one of the inputs (writing it, even with --force, would replace that input), or
    another output of the same command (the second written would replace the first). Both are {option: path or
    None}; the message names the two options. Call before work."""
    given = [(opt, p) for opt, p in outputs.items() if p is not None]
    for k, (o_opt, o) in enumerate(given):
        for p_opt, p in given[k + 1:]:
            if same_file(o, p):
                raise UserError(f"{p_opt} {p}: must differ from the other output ({o_opt} {o})")
    for o_opt, o in outputs.items():
        for i_opt, i in inputs.items():
            if o is not None and i is not None and same_file(o, i):
                raise UserError(f"{o_opt} {o}: must differ from the input file ({i_opt} {i})")


def save(
    path: str | os.PathLike,
    kind: str,
    tensors: Mapping[str, torch.Tensor],
    *,
    config: Any = None,
    meta: Mapping[str, Any] | None = None,
    parents: Iterable[Artifact | Mapping[str, Any]] = (),
    force: bool = True,
) -> Path:
    """Write an artifact atomically, sealed by its integrity hash (:func:`seal`). Refuses non-finite floating
    tensors (nothing non-finite is ever written). Without ``force`` a file that appears at ``path`` while this one is
    written is not replaced: one run wins, the other gets a one-line refusal (no-clobber)."""
    if kind not in KINDS:
        raise ValueError(f"unknown artifact kind {kind!r}")
    from ebmtool.distributed import world

    # under torchrun only rank 0 checks the path here: another rank arriving after rank 0 wrote the file would find
    # it there and fail alone (every rank checked the outputs before the work; rank 0's exclusive write decides)
    main = world().is_main
    p = check_output(path, force) if main else Path(path)
    clean: dict[str, torch.Tensor] = {}
    for name, t in tensors.items():
        t = t.detach().cpu().contiguous()
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{p}: refusing to write non-finite values in tensor {name!r}")
        clean[name] = t.clone() if _shares_storage(t, clean) else t
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    md = {
        "ebmtool.kind": kind,
        "ebmtool.format": str(FORMAT),
        "ebmtool.version": __version__,
        "ebmtool.config": json.dumps(config or {}, sort_keys=True),
        "ebmtool.parents": json.dumps([_parent(x) for x in parents]),
        "ebmtool.meta": json.dumps(dict(meta or {}), sort_keys=True, default=_json_default),
    }
    if not main:  # under torchrun only rank 0 writes; every rank ran the other checks above
        return p
    return files.write_bytes(p, seal(save_bytes(clean, metadata={**md, HASH_KEY: _PLACEHOLDER})), overwrite=force)


def save_or_rescue(path: str | os.PathLike, kind: str, tensors: Mapping[str, torch.Tensor], **kw: Any) -> Path:
    """:func:`save`, and where the system refuses the write (a full disk, a quota), or another run took the name
    meanwhile, the same artifact written to the temporary folder (``$TMPDIR``, usually another file system) instead,
    so that work that took long to make (a trained model, a checkpoint) is not lost; the one-line error names where
    it went."""
    try:
        return save(path, kind, tensors, **kw)
    except (WriteError, files.OutputExists) as e:
        p = Path(path)
        alt = Path(tempfile.gettempdir()) / f"{p.name.removesuffix('.safetensors')}.rescued-{os.getpid()}.safetensors"
        try:
            save(alt, kind, tensors, **{**kw, "force": False})
        except UserError as e2:
            raise type(e)(f"{e}; writing it to {alt} instead failed too ({str(e2).removeprefix(f'{alt}: ')})") \
                from None
        hint = f" (move it into place: mv {alt} {p})" if isinstance(e, WriteError) else ""
        raise type(e)(f"{e}; the {kind} was written to {alt} instead{hint}") from None


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, overwrite: bool = True):
    """:func:`ebmtool.files.atomic_write` (the one atomic, optionally exclusive, write), under torchrun on rank 0
    alone: other ranks get a scratch path that is discarded, so every rank runs the same code and only one copy of
    each file reaches the disk."""
    from ebmtool.distributed import world

    if not world().is_main:
        with tempfile.TemporaryDirectory(prefix="ebmtool-rank") as scratch:
            yield os.path.join(scratch, Path(path).name)
        return
    with files.atomic_write(path, overwrite) as tmp:
        yield tmp


def _hash_span(header: bytes) -> int | None:
    """Where the 64 hex digits of ``"ebmtool.sha256":"..."`` start in a header, if the field is there once."""
    spans = [m.start(1) for m in re.finditer(rb'"ebmtool\.sha256":"([0-9a-f]{64})"', header)]
    return spans[0] if len(spans) == 1 else None


def _digest(data: bytes | bytearray | memoryview, at: int) -> str:
    """SHA-256 of ``data`` with the 64 bytes at ``at`` read as the placeholder (zeros)."""
    view = memoryview(data)
    h = hashlib.sha256(view[:at])
    h.update(_PLACEHOLDER.encode())
    h.update(view[at + 64:])
    return h.hexdigest()


def seal(data: bytes) -> bytearray:
    """Fill in the integrity hash of safetensors bytes whose metadata holds ``ebmtool.sha256`` = 64 zeros: the
    SHA-256 of the whole file with the field read as zeros. Every byte but those 64 is covered: tensor bytes,
    dtypes, shapes, offsets, every metadata value."""
    out = bytearray(data)
    n = int.from_bytes(out[:8], "little")
    at = _hash_span(bytes(out[8:8 + n]))
    if at is None:
        raise ValueError("no ebmtool.sha256 placeholder in the header")
    at += 8
    out[at:at + 64] = _digest(out, at).encode()
    return out


def verify(data: bytes, header_end: int) -> bool:
    """Whether safetensors bytes sealed by :func:`seal` are unchanged."""
    at = _hash_span(bytes(data[8:header_end]))
    if at is None:
        return False
    at += 8
    return _digest(data, at) == bytes(data[at:at + 64]).decode()


def save_bytes(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> bytes:
    """The safetensors serialisation (the only call of safetensors' writer)."""
    from safetensors.torch import save as st_save

    return st_save(dict(tensors), metadata=dict(metadata))


def _shares_storage(t: torch.Tensor, others: Mapping[str, torch.Tensor]) -> bool:
    ptr = t.untyped_storage().data_ptr()
    return t.numel() > 0 and any(o.numel() > 0 and o.untyped_storage().data_ptr() == ptr for o in others.values())


def _json_default(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, Path):
        return str(x)
    if hasattr(x, "item"):
        return x.item()
    raise TypeError(f"not JSON serialisable: {type(x).__name__}")


def _parent(x: Artifact | Mapping[str, Any]) -> dict[str, Any]:
    return x.as_parent() if isinstance(x, Artifact) else dict(x)


def load(path: str | os.PathLike, kind: str | Iterable[str] | None = None, *, what: str = "input") -> Artifact:
    """Load and validate an artifact; ``kind`` restricts the accepted kinds. The file is read once; its integrity
    hash is checked before anything in it is used (a legacy format-1 file has none: docs/design.md §2)."""
    from safetensors.torch import load as st_load

    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: {what} file not found")
    if p.is_dir():
        raise UserError(f"{p}: {what} is a folder, not an artifact file")
    if not p.is_file():  # a FIFO or a device: reading it would block, or never end
        raise UserError(f"{p}: {what} is not a regular file")
    if not os.access(p, os.R_OK):
        raise UserError(f"{p}: {what} file is not readable")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: {what} file cannot be read ({e.strerror or e})") from None
    if len(data) < 8:
        raise UserError(f"{p}: not a safetensors file (empty or truncated)")
    try:
        tensors = st_load(data)  # safetensors checks the header, the dtypes and that the offsets tile the data
        header, header_end = files.safetensors_header(data)
        md = header.get("__metadata__") or {}
        if not isinstance(md, dict):
            raise ValueError("__metadata__ is not a JSON object")
    except Exception as e:  # safetensors raises several types for corrupt headers
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UserError(f"{p}: not a readable safetensors file ({msg})") from None
    if "ebmtool.kind" not in md:
        raise UserError(f"{p}: safetensors file is not an ebmtool artifact (no ebmtool.kind metadata)")
    k = md["ebmtool.kind"]
    stray = sorted(key for key in md if key not in METADATA_KEYS and key != "format")  # "format": torch's "pt"
    if stray:
        raise UserError(f"{p}: metadata key {stray[0]!r} is not part of the format: kind-specific fields (n, "
                        "image_shape, ...) go in ebmtool.meta, a JSON object (docs/design.md §2)")
    try:
        fmt = int(md.get("ebmtool.format", "-1"))
    except ValueError:
        fmt = -1
    if fmt != FORMAT and fmt not in LEGACY_FORMATS:
        raise UserError(f"{p}: artifact format {md.get('ebmtool.format')!r} is not supported (expected {FORMAT})")
    if HASH_KEY in md or fmt == FORMAT:
        if HASH_KEY not in md:
            raise UserError(f"{p}: artifact lacks its integrity hash ({HASH_KEY}); it was damaged or edited after "
                            "it was written")
        if not verify(data, header_end):
            raise UserError(f"{p}: artifact does not match its integrity hash ({HASH_KEY}); it was damaged or "
                            "edited after it was written")
    del data
    try:
        config = json.loads(md.get("ebmtool.config", "{}"))
        parents = json.loads(md.get("ebmtool.parents", "[]"))
        meta = json.loads(md.get("ebmtool.meta", "{}"))
    except json.JSONDecodeError:
        raise UserError(f"{p}: artifact metadata is not valid JSON") from None
    for key, v, typ in (("config", config, dict), ("parents", parents, list), ("meta", meta, dict)):
        if not isinstance(v, typ):
            raise UserError(f"{p}: artifact metadata ebmtool.{key} is not a JSON {'object' if typ is dict else 'list'}")
    if not all(isinstance(x, dict) for x in parents):
        raise UserError(f"{p}: artifact metadata ebmtool.parents is not a list of JSON objects")
    if kind is not None:
        kinds = (kind,) if isinstance(kind, str) else tuple(kind)
        if k not in kinds:
            raise UserError(f"{p}: is a {k} artifact, expected {' or '.join(kinds)}")
    for name, t in tensors.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise UserError(f"{p}: tensor {name!r} holds non-finite values")
    _check_meta(p, k, meta, tensors)
    return Artifact(p, k, tensors, config, meta, parents, md.get("ebmtool.version", ""), fmt)


def _is_image_shape(v: Any) -> bool:
    return (isinstance(v, list) and len(v) == 3
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in v))


def _check_meta(p: Path, kind: str, meta: dict[str, Any], tensors: Mapping[str, torch.Tensor]) -> None:
    """Metadata must not contradict the tensors: an image artifact's ``n`` and ``image_shape`` are those of its
    ``images`` tensor; a model's ``image_shape`` (and its spec's) is [channels, height, width]."""
    images = tensors.get("images")
    if kind == "dataset" and "content_sha256" in meta and images is not None:  # recomputed, never trusted
        labels = [tensors["labels"]] if "labels" in tensors else []
        if meta["content_sha256"] != tensor_sha256(images, *labels):
            raise UserError(f"{p}: images and labels do not match the dataset's content_sha256 (changed after it "
                            "was written)")
    if kind in ("dataset", "samples", "reconstructions") and images is not None and images.ndim == 4:
        n, shape = meta.get("n"), meta.get("image_shape")
        if "n" in meta and (not isinstance(n, int) or isinstance(n, bool) or n != images.shape[0]):
            raise UserError(f"{p}: meta n = {json.dumps(n)} contradicts tensor 'images' ({images.shape[0]} images)")
        if "image_shape" in meta and shape != list(images.shape[1:]):
            raise UserError(f"{p}: meta image_shape {json.dumps(shape)} contradicts tensor 'images' "
                            f"({' x '.join(map(str, images.shape[1:]))} images)")
        paths, names, labels = meta.get("paths"), meta.get("class_names"), tensors.get("labels")
        if "paths" in meta and (not isinstance(paths, list) or len(paths) != images.shape[0]
                                or not all(isinstance(v, str) for v in paths)):
            raise UserError(f"{p}: meta paths must be one string per image ({images.shape[0]})")
        if "class_names" in meta:
            if not isinstance(names, list) or not all(isinstance(v, str) for v in names):
                raise UserError(f"{p}: meta class_names must be a list of strings")
            if labels is not None and labels.numel() and int(labels.max()) >= len(names):
                raise UserError(f"{p}: label {int(labels.max())} has no name in meta class_names "
                                f"({len(names)} names)")
    if kind == "model":
        spec = meta.get("model")
        shapes = [("image_shape", meta["image_shape"])] if "image_shape" in meta else []
        if isinstance(spec, dict) and "image_shape" in spec:
            shapes.append(("model.image_shape", spec["image_shape"]))
        for field_, v in shapes:
            if not _is_image_shape(v):
                raise UserError(f"{p}: meta {field_} {json.dumps(v)} is not [channels, height, width] (3 positive "
                                "integers)")
        if len(shapes) == 2 and shapes[0][1] != shapes[1][1]:
            raise UserError(f"{p}: meta image_shape {json.dumps(shapes[0][1])} contradicts the model spec's "
                            f"image_shape {json.dumps(shapes[1][1])}")
