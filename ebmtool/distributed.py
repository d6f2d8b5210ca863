"""Data parallelism under torchrun: ``torchrun --nproc_per_node N -m ebmtool fit-prior ...``.

torchrun sets RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT; :func:`init_from_env` joins the process group
(gloo for CPU tensors, NCCL for CUDA tensors) and every other module asks :func:`world` what to do. With one
process (no torchrun) every function here is the identity and costs nothing, so single-process results are
unchanged bit for bit.

The algorithm is DistributedDataParallel's: every rank holds a full replica of every module and optimiser;
each global batch of ``batch_size`` examples (the same shuffled order on every rank) is split into one
contiguous shard per rank; after each backward pass the gradients are averaged across ranks (weighted by shard
size, so the update equals the single-process update on the whole batch) and every rank takes the same
optimiser step. ebmtool all-reduces the gradients itself instead of wrapping modules in
``torch.nn.parallel.DistributedDataParallel``: a Langevin chain calls the generator and the energy dozens of
times between two optimiser steps, with parameters frozen, which DDP's per-forward reducer does not support.

Per-example state (adaptive-NCE memory rows) is written by the rank that holds the example and all-gathered,
so every replica stays identical. Only rank 0 writes files (:func:`ebmtool.artifacts.atomic_write`) and
prints. Batch-norm layers (BiDVL) normalise with their rank's shard, as DDP without SyncBatchNorm does.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Iterable, Optional

import torch

from ebmtool.errors import UserError


@dataclass
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    weight: float = 1.0  # this rank's share of the current global batch (n_local / n_global)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def parallel(self) -> bool:
        return self.size > 1


_WORLD = World()


def world() -> World:
    return _WORLD


def launched_by_torchrun() -> bool:
    raw = os.environ.get("WORLD_SIZE", "1")
    try:
        return int(raw) > 1
    except ValueError:
        raise UserError(f"WORLD_SIZE={raw!r} is not a number (torchrun sets it; unset it to run one process)") from None


def init_from_env() -> World:
    """Join the process group torchrun describes in the environment (no-op without torchrun)."""
    global _WORLD
    if not launched_by_torchrun() or _WORLD.parallel:
        return _WORLD
    import torch.distributed as dist

    for key in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if key not in os.environ:
            raise UserError(f"WORLD_SIZE is set but {key} is not: launch data-parallel runs with torchrun")
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    # torch._dynamo must be imported before the group exists. Imported later (torch.optim imports it when the first
    # optimiser is built), it keeps ten references to the default group, so destroy_process_group in finish() no
    # longer frees it and gloo's worker threads outlive it: a finished collective released by such a thread while
    # the interpreter shuts down takes the GIL and aborts the rank ("terminate called without an active
    # exception", exit -6, about one 2-rank run in ten on a busy CPU; torch 2.14, gdb backtrace in
    # docs/design.md). Imported first, the group is freed in finish() and its threads are joined there.
    importlib.import_module("torch._dynamo")
    try:
        dist.init_process_group(backend=backend)
    except Exception as e:  # rendezvous failed (address, port, timeout): one line, not a traceback
        raise UserError(f"torchrun: could not join the process group ({backend}): {_first_line(e)}") from None
    _WORLD = World(rank=dist.get_rank(), size=dist.get_world_size(), local_rank=int(os.environ["LOCAL_RANK"]))
    return _WORLD


def finish(success: bool) -> None:
    """Wait for every rank (so that rank 0's files exist when the launch ends), then leave the group."""
    global _WORLD
    if not _WORLD.parallel:
        return
    import torch.distributed as dist

    try:
        if success:  # a monitored barrier meets fail_together's: a rank that failed alone leaves, none hangs
            dist.monitored_barrier(wait_all_ranks=True)
    except Exception as e:  # a peer died after this rank finished its work
        raise UserError(f"lost contact with another torchrun rank at the end of the run: {_first_line(e)}") from None
    finally:
        dist.destroy_process_group()
        _WORLD = World()


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__


def fail_together(timeout_s: float = 10.0) -> None:
    """Before exiting on a user mistake: wait (briefly) for the other ranks, which ran the same checks on the same
    inputs and fail the same way, so that every rank exits with status 2 instead of being killed by torchrun
    when the first one leaves."""
    if not _WORLD.parallel:
        return
    import datetime
    import signal

    import torch.distributed as dist

    # this rank is leaving with status 2 anyway: torchrun's SIGTERM (sent when the first rank leaves) must not
    # turn that into a kill
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s), wait_all_ranks=True)
    except Exception:  # a rank that did not fail (or the gloo part is missing): nothing more to wait for
        pass


def device_for_rank(dev: torch.device) -> torch.device:
    """Under torchrun, CUDA rank r uses cuda:LOCAL_RANK (one GPU per process)."""
    w = _WORLD
    if not w.parallel or dev.type != "cuda":
        return dev
    if dev.index is not None and dev.index != w.local_rank:
        raise UserError(f"--device {dev}: under torchrun each rank uses cuda:LOCAL_RANK; pass --device cuda")
    torch.cuda.set_device(w.local_rank)
    return torch.device("cuda", w.local_rank)


# --------------------------------------------------------------------------------------------------------------
# sharding
# --------------------------------------------------------------------------------------------------------------
def bounds(n: int) -> tuple[int, int]:
    """[start, stop) of this rank's contiguous shard of n items (sizes differ by at most one)."""
    w = _WORLD
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return start, start + base + (1 if w.rank < extra else 0)


def take(t: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous shard of the rows of t (t itself with one process)."""
    if not _WORLD.parallel:
        return t
    a, b = bounds(len(t))
    return t[a:b]


def set_batch(n_local: int, n_global: int) -> None:
    _WORLD.weight = n_local / n_global if n_global else 1.0


def check_batch_size(batch_size: int, what: str = "batch_size") -> None:
    w = _WORLD
    if w.parallel and batch_size % w.size:
        raise UserError(f"{what} = {batch_size} is not divisible by the torchrun world size {w.size} "
                        "(every rank takes an equal share of each batch)")


# --------------------------------------------------------------------------------------------------------------
# collectives (identity with one process)
# --------------------------------------------------------------------------------------------------------------
def average_gradients(params: Iterable[torch.nn.Parameter]) -> None:
    """Replace each gradient by the shard-size-weighted average over ranks, in one coalesced all-reduce."""
    w = _WORLD
    if not w.parallel:
        return
    import torch.distributed as dist

    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads]) * w.weight
    dist.all_reduce(flat)
    offset = 0
    for g in grads:
        g.copy_(flat[offset: offset + g.numel()].view_as(g))
        offset += g.numel()




def any_rank(flag: bool) -> bool:
    """Whether ``flag`` holds on any rank (one tiny all-reduce; ``flag`` itself with one process). A collective:
    call it where every rank runs the same code in the same order (inside a training step), never in evaluation,
    where ranks may run different numbers of batches."""
    w = _WORLD
    if not w.parallel:
        return flag
    import torch.distributed as dist

    # a CPU tensor: gloo's part of the group, also on CUDA machines
    t = torch.tensor([1.0 if flag else 0.0], device="cpu")
    dist.all_reduce(t)
    return bool(t[0] > 0)


def broadcast_modules(modules: Iterable[torch.nn.Module]) -> None:
    """Copy rank 0's parameters and buffers to every rank (what DDP does when it wraps a module)."""
    if not _WORLD.parallel:
        return
    import torch.distributed as dist

    for m in modules:
        for t in [*m.parameters(), *m.buffers()]:
            dist.broadcast(t.data, src=0)


def gather(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's rows of t in rank order (shards may differ in length); t with one process."""
    w = _WORLD
    if not w.parallel:
        return t
    import torch.distributed as dist

    n = torch.tensor([len(t)], device=t.device)
    sizes = [torch.zeros_like(n) for _ in range(w.size)]
    dist.all_gather(sizes, n)
    sizes_i = [int(s) for s in sizes]
    m = max(sizes_i)
    pad = torch.zeros((m - len(t), *t.shape[1:]), dtype=t.dtype, device=t.device)
    buf = torch.cat([t.contiguous(), pad]) if m > len(t) else t.contiguous()
    parts = [torch.empty_like(buf) for _ in range(w.size)]
    dist.all_gather(parts, buf)
    return torch.cat([p[:k] for p, k in zip(parts, sizes_i)])


def gather_nested(x):
    """:func:`gather` over a tensor, a tuple of tensors, or None."""
    if x is None:
        return None
    if isinstance(x, tuple):
        return tuple(gather_nested(t) for t in x)
    return gather(x)


def rank_seed(seed: int, salt: int = 0) -> Optional[int]:
    """A seed for this rank's random draws (Langevin noise, chain starts); None with one process."""
    w = _WORLD
    if not w.parallel:
        return None
    return (seed * 1_000_003 + salt * 7919 + w.rank * 104_729 + 1) % (2**63)


# --------------------------------------------------------------------------------------------------------------
# what a training loop agrees on across ranks, one function per concern (identity with one process)
# --------------------------------------------------------------------------------------------------------------
def start_replicas(modules: Iterable[torch.nn.Module], batch_size: int, seed: int, salt: int) -> None:
    """At the start of a training loop: refuse a batch that does not split evenly over the ranks, copy rank 0's
    modules to every rank (the replicas start equal) and give each rank its own random stream from here on
    (Langevin noise, chain starts), seeded by :func:`rank_seed`."""
    if not _WORLD.parallel:
        return
    check_batch_size(batch_size)
    broadcast_modules(modules)
    torch.manual_seed(rank_seed(seed, salt))


def runs_batch(n_global: int) -> bool:
    """Whether the ranks run a global batch of ``n_global`` examples: a final partial batch smaller than the
    world size is skipped by every rank (with one process every batch runs)."""
    return n_global >= _WORLD.size


def shard_batch(idx: torch.Tensor) -> torch.Tensor:
    """This rank's contiguous shard of a global batch's indices (all of them with one process); records its share
    of the batch for the gradient average."""
    local = take(idx)
    set_batch(len(local), len(idx))
    return local


def agree_step(values: dict[str, torch.Tensor], stop: bool) -> tuple[dict[str, float], bool]:
    """After a training step: its logged scalars as floats, each the shard-weighted mean over ranks, and whether
    any rank asked to stop (SIGINT/SIGTERM), in one host sync (one all-reduce under torchrun). Every rank decides
    on these agreed values only, so all of them save, stop or report divergence at the same iteration."""
    vec = torch.stack([v.detach().float().reshape(()) for v in values.values()])
    w = _WORLD
    if w.parallel:
        import torch.distributed as dist

        buf = torch.cat([vec * w.weight, torch.tensor([1.0 if stop else 0.0], device=vec.device)])
        dist.all_reduce(buf)
        vec, stop = buf[:-1], bool(buf[-1] > 0)
    return dict(zip(values, vec.tolist())), stop


def end_replicas(seed: int, salt: int) -> None:
    """At the end of a training loop: one random stream on every rank again, so that modules a method creates
    after the loop (the next adaptive-NCE stage) start equal."""
    if _WORLD.parallel:
        torch.manual_seed(seed * 1_000_003 + salt)


def lost_peer(e: BaseException) -> str | None:
    """The one line for an error that means another torchrun rank is gone (a torch.distributed error, or the
    transport's own words for a closed connection or a timeout); None when it is not that, or not under torchrun."""
    if not world().parallel:
        return None
    import torch.distributed as dist

    text = str(e)
    transport = ("Connection closed", "Connection reset", "gloo", "Gloo", "NCCL", "Broken pipe", "imed out")
    if not (isinstance(e, getattr(dist, "DistError", ())) or any(k in text for k in transport)):
        return None
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    return f"lost contact with another torchrun rank, which probably failed (see its message): {first}"
