"""The dense matmul peak (n x n, fp32 or bf16) that the achieved GFLOP/s are compared with."""

from __future__ import annotations

import statistics
from typing import Any

import torch

from .clock import Clock


def matmul_peak(n: int, dtype: torch.dtype, reps: int, device: torch.device, clock: Clock) -> dict[str, Any]:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b  # warm-up
    runs = [clock(lambda: a @ b) for _ in range(reps)]
    gf = [2 * n**3 / w / 1e9 for w, _ in runs]
    gf_cpu = [2 * n**3 / max(c, 1e-9) / 1e9 for _, c in runs]
    return {"n": n, "dtype": str(dtype).replace("torch.", ""), "threads": torch.get_num_threads(),
            "best_gflops": max(gf), "median_gflops": statistics.median(gf), "runs": [round(g, 1) for g in gf],
            "best_gflops_per_cpu_s": max(gf_cpu), "median_gflops_per_cpu_s": statistics.median(gf_cpu)}
