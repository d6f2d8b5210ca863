"""The runtime of a stage: its device, its seed and the numerical precision of its hot loops.

Precision, chosen by the hardware:

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
import platform
import sys
from dataclasses import dataclass
from typing import Optional

import torch

from ebmtool import distributed
from ebmtool.errors import UserError

from ebmtool.config import PRECISIONS as CHOICES  # noqa: E402  (the one list of choices)


def _cpuinfo(key: str) -> str | None:
    """The value of the first ``key`` line of /proc/cpuinfo, or None (no such file or line)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def cpu_flags() -> set[str]:
    return set((_cpuinfo("flags") or "").split())


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
    if name == "bf16" and device.type == "cpu" and not cpu_native_bf16() and warn and distributed.world().is_main:
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


# ------------------------------------------------------------------------------------------------
# device and seed
# ------------------------------------------------------------------------------------------------
def resolve_device(name: str) -> torch.device:
    """--device NAME -> torch.device; one line and exit 2 when it does not exist here. Under torchrun, CUDA rank r
    gets cuda:LOCAL_RANK."""
    return distributed.device_for_rank(_device(name))


def _device(name: str) -> torch.device:
    try:
        dev = torch.device(name) if name != "auto" else None
    except (RuntimeError, ValueError):
        raise UserError(f"--device: unknown device {name!r} (auto, cpu, cuda, cuda:N, mps)") from None
    if dev is not None and dev.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name}: no CUDA device is available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
        return dev
    if dev is not None and dev.type not in ("cpu", "mps"):
        raise UserError(f"--device: unsupported device {name!r} (auto, cpu, cuda, cuda:N, mps)")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available on this machine")
    if name == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise UserError("--device mps: no MPS device is available on this machine")
    return torch.device(name)


def seed_everything(seed: int, per_rank: bool = False) -> None:
    """Seed every generator. ``per_rank``: under torchrun each rank draws differently (evaluation stages, whose
    ranks share no parameters); training seeds equally so that the replicas start identical."""
    if per_rank and distributed.world().parallel:
        seed = distributed.rank_seed(seed)
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)


def machine_memory() -> int | None:
    """This machine's physical memory in bytes (None where the OS does not say)."""
    import os

    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    return total if total > 0 else None


def check_fits_memory(need: int, what: str, fix: str) -> None:
    """Refuse, before allocating, ``need`` bytes that exceed this machine's memory: one line naming ``what`` and
    the ``fix``."""
    total = machine_memory()
    if total is not None and need > total:
        raise UserError(f"{what} need about {need / 2**30:.1f} GiB of memory, more than this machine's "
                        f"{total / 2**30:.1f} GiB; {fix}")


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo where there is one, else what ``platform`` says), with its widest vector
    ISA in brackets where the flags are known, e.g. ``AMD EPYC [AVX512-BF16]``. Virtual machines often report a bare
    model name ("AMD EPYC") for CPUs of different generations, whose speed and ``--precision auto`` differ: the
    bracket tells an AVX2 part from one with native bf16 in every speed figure and benchmark row."""
    name = _cpuinfo("model name") or platform.processor() or platform.machine()
    flags = cpu_flags()
    isa = next((label for flag, label in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"),
                                          ("avx512f", "AVX512"), ("avx2", "AVX2")) if flag in flags), None)
    return f"{name} [{isa}]" if isa else name


# ------------------------------------------------------------------------------------------------
# CPU threads: --threads auto (docs/performance.md, "Threads on a busy machine")
# ------------------------------------------------------------------------------------------------
_AUTO_THREADS: Optional[tuple[int, str]] = None
# --threads N: at most this (docs/usage.md, "Limits"); torch takes a C int, and each thread has a stack
MAX_THREADS = 1024


def allowed_cpus() -> set[int] | None:
    """The logical CPUs of this process's affinity mask (a container's cpuset, ``taskset``); None where unknown."""
    import os

    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def cgroup_cpu_limit() -> float | None:
    """A cgroup v2 CPU quota (``docker --cpus``, a batch system's share) in CPUs, or None when there is none."""
    try:
        quota, period = open("/sys/fs/cgroup/cpu.max").read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        return None


def usable_cpus() -> int:
    """The logical CPUs this process may use: its affinity mask, capped by a cgroup CPU quota."""
    import math
    import os

    allowed = allowed_cpus()
    n = len(allowed) if allowed else (os.cpu_count() or 1)
    limit = cgroup_cpu_limit()
    return max(1, min(n, math.ceil(limit))) if limit else n


def physical_cores() -> int:
    """Physical cores among the usable CPUs (SMT siblings counted once), from /proc/cpuinfo where there is one."""
    n = usable_cpus()
    try:
        import os

        allowed = os.sched_getaffinity(0)
        cores, proc, phys = set(), None, "0"
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, val = line.partition(":")
                key, val = key.strip(), val.strip()
                if key == "processor":
                    proc = int(val)
                elif key == "physical id":
                    phys = val
                elif key == "core id" and proc in allowed:
                    cores.add((phys, val))
        return max(1, min(n, len(cores))) if cores else n
    except (AttributeError, OSError, ValueError):
        return n


def busy_cpus(interval: float = 0.2) -> float:
    """How many of this process's allowed CPUs other work keeps busy right now: the non-idle share of each allowed
    CPU's time in /proc/stat over ``interval`` seconds, summed (this process sleeps meanwhile, so it is not
    counted); where there is no /proc/stat, the 1-minute load average."""
    import os
    import time

    allowed = allowed_cpus()

    def read() -> dict[int, tuple[int, int]]:
        out = {}
        with open("/proc/stat") as f:
            for line in f:
                head, _, rest = line.partition(" ")
                if head.startswith("cpu") and head[3:].isdigit() and (allowed is None or int(head[3:]) in allowed):
                    v = [int(x) for x in rest.split()]
                    out[int(head[3:])] = (sum(v[:8]), v[3] + (v[4] if len(v) > 4 else 0))  # total, idle + iowait
        return out

    try:
        a = read()
        time.sleep(interval)
        b = read()
        busy = 0.0
        for cpu, (t1, i1) in b.items():
            t0, i0 = a.get(cpu, (t1, i1))
            if t1 > t0:
                busy += 1 - (i1 - i0) / (t1 - t0)
        if not b:
            raise ValueError("no per-CPU lines")
        return busy
    except (OSError, ValueError, IndexError):
        try:
            return float(os.getloadavg()[0])
        except (AttributeError, OSError):
            return 0.0


def auto_threads() -> tuple[int, str]:
    """``--threads auto``: the CPUs that are idle when the command starts (rounded), at least 1 and never more
    than the physical cores; under torchrun, divided among the ranks of this node. Measured once per process.
    Why: torch's intra-op pool splits every operation into equal parts, so one thread that shares its core with
    another process makes every operation wait for it (2 threads with one core busy ran 40x slower than 1)."""
    global _AUTO_THREADS
    if _AUTO_THREADS is None:
        import os

        usable, phys = usable_cpus(), physical_cores()
        busy = busy_cpus()
        idle = max(0.0, usable - busy)
        ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)
        n = max(1, min(phys, int(idle + 0.5)) // max(1, ranks))
        _AUTO_THREADS = (n, f"auto: {usable} usable CPUs ({phys} physical cores), {busy:.1f} busy at start"
                            + (f", {ranks} ranks on this node" if ranks > 1 else ""))
    return _AUTO_THREADS


def set_threads(spec: str | int | None) -> tuple[int, str]:
    """Apply ``--threads`` (an integer, or "auto"/None: ``OMP_NUM_THREADS`` where the user set it, else
    :func:`auto_threads`); returns (threads, why)."""
    import os

    omp = os.environ.get("OMP_NUM_THREADS", "").strip()
    auto = spec is None or str(spec).strip().lower() in ("auto", "")
    if auto and omp.isdigit() and int(omp) >= 1:  # (torchrun sets it to 1 per rank when a node runs several)
        n, why = int(omp), "auto: OMP_NUM_THREADS is set"
    elif auto:
        n, why = auto_threads()
    else:
        try:
            n, why = int(spec), "requested"
        except ValueError:
            raise UserError(f"--threads: expected a whole number or auto, got {spec!r}") from None
        if n < 1:
            raise UserError(f"--threads {n}: must be at least 1 (or auto)")
        if n > MAX_THREADS:
            raise UserError(f"--threads {n}: at most {MAX_THREADS} (this machine has {usable_cpus()} usable CPUs; "
                            "more threads than cores only slow every operation)")
    torch.set_num_threads(n)
    return n, why
