"""The benchmarks' result files: one CSV row per measured run, appended under a lock (several benchmark processes
share a file), rows of an older column set rewritten once with the new header. Shared by the anomaly benchmarks."""

from __future__ import annotations

import contextlib
import csv
import fcntl
import os
from pathlib import Path

import torch

from ebmtool import runtime


def cpu_name() -> str:
    """The CPU and the threads a row ran with, as every row records them."""
    return f"{runtime.cpu_name()} ({torch.get_num_threads()} threads)"


def read(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(f))


@contextlib.contextmanager
def locked(path: Path):
    """One writer at a time (several benchmark processes share the CSVs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def append(path: Path, fields: list[str], row: dict) -> None:
    with locked(path):
        if path.exists():
            with open(path) as f:
                header = f.readline().strip().split(",")
            if header != fields:  # rows of an older column set: rewrite once with the new header (new cells empty)
                write_all(path, fields, read(path))
        new = not path.exists()
        with open(path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)


def write_all(path: Path, fields: list[str], rows: list[dict]) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, restval="", extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def replace_block(path: Path, begin: str, end: str, text: str) -> None:
    """Replace what stands between the markers ``begin`` and ``end`` in the markdown file ``path`` (a README's
    generated results block) with ``text``, atomically; exit with one line when the markers are missing."""
    import sys

    old = path.read_text()
    if begin not in old or end not in old:
        sys.exit(f"{path}: no {begin} ... {end} block")
    head, rest = old.split(begin, 1)
    _, tail = rest.split(end, 1)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(head + begin + "\n" + text + "\n" + end + tail)
    os.replace(tmp, path)
