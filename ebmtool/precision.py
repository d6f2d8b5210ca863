"""Numerical precision of the hot loops, chosen by the hardware.

``--precision fp32`` (default) is exact fp32. ``auto`` picks a reduced precision only where the device runs it
natively: bf16 on CUDA devices that support it (else tf32 matmuls on Ampere+), bf16 on a CPU whose ISA has
AMX-BF16 or AVX512-BF16; everywhere else fp32. ``bf16``/``fp16`` run the generator and energy networks under
``torch.autocast`` (latents, Langevin updates and optimiser states stay fp32); ``tf32`` allows TF32 matmuls on
CUDA. Asking for bf16 on a CPU without native support warns once (such CPUs emulate bf16, dozens of times slower
than fp32 on this project's AMD machines) and runs it anyway.

Why fp32 and not ``auto`` is the default: results then do not depend on which CPU a run landed on, and the
quality cost of bf16 is measured, not assumed (docs/performance.md).
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from ebmtool.errors import UserError

CHOICES = ("auto", "fp32", "bf16", "fp16", "tf32")


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_native_bf16() -> bool:
    return bool({"amx_bf16", "avx512_bf16"} & cpu_flags())


@dataclass(frozen=True)
class Precision:
    name: str  # fp32 | bf16 | fp16 | tf32
    reason: str

    @property
    def autocast_dtype(self) -> Optional[torch.dtype]:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    def context(self, device: torch.device):
        """Context manager for a training step or an evaluation batch."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=self.autocast_dtype)


def resolve(name: str, device: torch.device, warn=True) -> Precision:
    if name not in CHOICES:
        raise UserError(f"--precision: unknown precision {name!r} (choose from {', '.join(CHOICES)})")
    cuda = device.type == "cuda"
    if name == "auto":
        if cuda and torch.cuda.is_bf16_supported():
            return Precision("bf16", "auto: CUDA device with native bf16")
        if device.type == "cpu" and cpu_native_bf16():
            return Precision("bf16", "auto: CPU with AMX-BF16/AVX512-BF16")
        return _exact_fp32(device, Precision("fp32", "auto: no native reduced precision on this device"))
    if name == "fp32":
        return _exact_fp32(device, Precision("fp32", "requested"))
    if name == "tf32":
        if not cuda:
            raise UserError("--precision tf32: TF32 exists on CUDA devices only (use fp32 or bf16 on a CPU)")
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        return Precision("tf32", "requested")
    if name == "fp16" and not cuda:
        raise UserError("--precision fp16: fp16 autocast is only supported on CUDA here (use bf16 on a CPU)")
    from ebmtool.distributed import world

    if name == "bf16" and device.type == "cpu" and not cpu_native_bf16() and warn and world().is_main:
        print("ebmtool: warning: this CPU has no native bf16 (no AMX-BF16/AVX512-BF16): bf16 is emulated and "
              "typically far slower than fp32 (see docs/performance.md); running it as asked", file=sys.stderr)
    return Precision(name, "requested")


def _exact_fp32(device: torch.device, p: Precision) -> Precision:
    """fp32 on CUDA means fp32: torch lets cuDNN convolutions use TF32 by default (``cudnn.allow_tf32``), which
    would make ``--precision fp32`` silently TF32 for the generators' transposed convolutions."""
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    return p
