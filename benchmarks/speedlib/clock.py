"""Timing: wall and process CPU time of one call, the interleaved A/B runner and its run-wide deadline."""

from __future__ import annotations

import contextlib
import math
import statistics
import time
from typing import Any, Callable

import torch


class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, float]:
        """(wall seconds, process CPU seconds) of one call of fn."""
        if self.cuda:
            torch.cuda.synchronize()
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - t0, time.process_time() - c0


DEADLINE = [math.inf]  # perf_counter time after which cells stop at their minimum number of pairs


def ab(clock: Clock, fa: Callable, fb: Callable, *, pairs: int, budget_s: float, min_pairs: int = 1) -> dict[str, Any]:
    """Interleave A and B (A B, B A, A B, ...) until ``pairs`` pairs, the cell's time budget or the run's
    deadline (at least ``min_pairs``). Returns every run and the medians over adjacent pairs of t_B / t_A,
    by wall time and by process CPU time (with one thread the latter is the compute time, insensitive
    to time slices lost to other processes)."""
    ra: list[tuple[float, float]] = []
    rb: list[tuple[float, float]] = []
    start = time.perf_counter()
    for i in range(pairs):
        now = time.perf_counter()
        if i >= min_pairs and (now - start > budget_s or now > DEADLINE[0]):
            break
        if i % 2 == 0:
            ra.append(clock(fa))
            rb.append(clock(fb))
        else:
            rb.append(clock(fb))
            ra.append(clock(fa))
    return {"a": summary(ra), "b": summary(rb), "pairs": len(ra),
            "ratio_b_over_a": med_range([b[0] / a[0] for a, b in zip(ra, rb)]),
            "ratio_b_over_a_cpu": med_range([b[1] / a[1] for a, b in zip(ra, rb)])}


def summary(runs: list[tuple[float, float]]) -> dict[str, Any]:
    walls, cpus = [w for w, _ in runs], [c for _, c in runs]
    return {"wall_s": [round(w, 4) for w in walls], "cpu_s": [round(c, 4) for c in cpus],
            "median_s": statistics.median(walls), "median_cpu_s": statistics.median(cpus), "min_s": min(walls),
            "cpu_per_wall": round(sum(cpus) / sum(walls), 3)}


def med_range(xs: list[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs)}


@contextlib.contextmanager
def threads(n: int | None):
    old = torch.get_num_threads()
    if n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
