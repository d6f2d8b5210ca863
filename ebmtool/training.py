"""What every training method shares: the epoch/batch loop, the one optimiser step, the training data, the run
context and the result of a fit.

A method is a config class plus a ``fit`` function that builds its modules and hands a per-batch
``step(idx, x, it) -> {name: scalar tensor}`` to :func:`train_loop`; nothing else about looping is repeated.
Device, seed and precision come from :mod:`ebmtool.runtime`, resume from :mod:`ebmtool.checkpoint`, agreement
across torchrun ranks from :mod:`ebmtool.distributed`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Optional

import torch
from torch import nn

from ebmtool import distributed
from ebmtool import progress as bars
from ebmtool.checkpoint import Checkpointer
from ebmtool.config import Optim
from ebmtool.runtime import Precision
from ebmtool.sampling import ChainResult, Latent
from ebmtool.errors import DivergenceError, UserError


class Interrupted(UserError):
    """SIGINT/SIGTERM stopped a training after it wrote its checkpoint: ``iteration`` and ``checkpoint`` say where,
    so a caller with its own way to continue (a benchmark that resumes by itself) can say that instead."""

    exit_code = 130

    def __init__(self, iteration: int, checkpoint: str):
        self.iteration, self.checkpoint = iteration, str(checkpoint)
        super().__init__(f"interrupted at iteration {iteration}; checkpoint written to {checkpoint} "
                         f"(continue with the same command and --resume {checkpoint})")


def adam(params: Iterable[nn.Parameter],
         o: Optim) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    opt = torch.optim.Adam(list(params), lr=o.lr, betas=(o.beta1, o.beta2), weight_decay=o.weight_decay)
    return opt, torch.optim.lr_scheduler.ExponentialLR(opt, gamma=o.decay)


def optimizer_step(opts: torch.optim.Optimizer | dict[str, torch.optim.Optimizer], loss: torch.Tensor,
                   what: str = "the loss") -> None:
    """The one parameter update of every method: zero_grad, one backward, average the gradients over torchrun
    ranks (no-op in one process), refuse a non-finite gradient (named), then one step per optimiser.

    ``opts`` is one optimiser (its gradient is called ``what``) or {name: optimiser} when one loss trains several
    modules, each with its own learning rate."""
    named = opts if isinstance(opts, dict) else {what: opts}
    for o in named.values():
        o.zero_grad(set_to_none=True)
    loss.backward()
    for name, o in named.items():
        params = [p for g in o.param_groups for p in g["params"] if p.grad is not None]
        distributed.average_gradients(params)
        if params and not bool(torch.isfinite(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]).sum())):
            raise DivergenceError(f"gradient of {name} is non-finite (try a smaller learning rate or step size)")
    for o in named.values():
        o.step()


def chain_latents(res: ChainResult) -> Latent:
    """A training chain's latents. Inside a step every torchrun rank runs the same chains, so the ranks agree
    whether any of them diverged (:func:`distributed.any_rank`) and all raise the chain's one line together (no rank
    is left waiting in the next gradient all-reduce)."""
    if distributed.any_rank(not res.finite):
        raise DivergenceError(res.divergence_message())
    return res.z


@dataclass
class TrainData:
    x: torch.Tensor  # (N, C, H, W) float in [-1, 1] on the training device
    labels: torch.Tensor
    content_sha256: str
    parent: dict[str, Any]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])  # type: ignore[return-value]


@dataclass
class RunContext:
    device: torch.device
    quiet: bool = False
    seed: int = 0
    ckpt: Checkpointer = field(default_factory=Checkpointer)
    precision: Precision = field(default_factory=lambda: Precision("fp32", "default"))
    # called as on_epoch(label, epoch, per-epoch means) at each epoch end (e.g. TensorBoard, ebmtool.tensorboard)
    on_epoch: Optional[Callable[[str, int, dict[str, float]], None]] = None

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(msg, file=sys.stderr, flush=True)


@dataclass
class History:
    """Per-iteration scalars (kept as Python floats) plus per-epoch means."""

    steps: dict[str, list[float]] = field(default_factory=dict)
    epochs: dict[str, list[float]] = field(default_factory=dict)

    def add(self, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.steps.setdefault(k, []).append(v)

    def close_epoch(self, since: int) -> dict[str, float]:
        means = {}
        for k, vs in self.steps.items():
            part = vs[since:]
            if part:
                means[k] = sum(part) / len(part)
                self.epochs.setdefault(k, []).append(means[k])
        return means

    def tensors(self, prefix: str = "history") -> dict[str, torch.Tensor]:
        return {f"{prefix}.{k}": torch.tensor(v, dtype=torch.float32, device="cpu") for k, v in self.epochs.items()}

    def summary(self) -> dict[str, float]:
        return {k: v[-1] for k, v in self.epochs.items() if v}


@dataclass
class FitResult:
    """What a method's ``fit`` returns: the model, its history, extra tensors (memory, per-stage losses), meta."""

    model: Any  # ebmtool.models.Model
    history: History
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    perm = torch.randperm(n, generator=gen, device=gen.device)
    return [perm[i: i + batch_size] for i in range(0, n, batch_size)]


def refuse_non_finite(values: dict[str, float]) -> None:
    """A step's logged scalars (agreed across ranks, so every rank raises alike) must be finite."""
    bad = [k for k, v in values.items() if not math.isfinite(v)]
    if bad:
        raise DivergenceError(f"{bad[0]} is non-finite (try a smaller Langevin step size or learning rate)")


@contextlib.contextmanager
def divergence_located(label: str, epoch: int, it: int, ck: Checkpointer):
    """A divergence inside the block names where it happened and the last good checkpoint (one line, exit 3)."""
    try:
        yield
    except DivergenceError as err:
        kept = f"; last good checkpoint: {ck.path}" if ck.path is not None and ck.path.exists() else ""
        raise DivergenceError(f"{label} epoch {epoch + 1} iteration {it + 1}: {err}{kept}") from None


def train_loop(
    ctx: RunContext,
    data: TrainData,
    *,
    epochs: int,
    batch_size: int,
    step: Callable[[torch.Tensor, torch.Tensor, int], dict[str, torch.Tensor]],
    schedulers: Iterable[Any] = (),
    history: Optional[History] = None,
    label: str = "train",
    log_every: int = 0,
    epoch_offset: int = 0,
    bar: Optional[bars.Bar] = None,
    epochs_total: Optional[int] = None,
) -> History:
    """Run ``epochs`` passes over the data in shuffled batches (seeded per epoch), calling
    ``step(idx, x, iteration)``; checks every returned scalar for NaN/Inf, decays learning rates per epoch,
    checkpoints every ``ctx.ckpt.every`` iterations and on SIGINT/SIGTERM, and resumes from ``ctx.ckpt.resume``
    (skipping the completed iterations of the same data order). Under torchrun each rank runs its shard of every
    batch and the ranks agree through :mod:`ebmtool.distributed` (replicas, batches, scalars, stop, RNG).

    Progress: a bar counting epochs (a fraction per iteration, as the ``epoch N/T`` log lines count), or ``bar``, a
    caller's bar over several loops (adaptive NCE's stages: epoch e of this loop is ``epoch_offset + e`` of it).
    ``epochs_total``: T in the log lines (default: the end of this loop, ``epoch_offset + epochs``)."""
    history = history or History()
    schedulers = list(schedulers)
    ck = ctx.ckpt
    n = len(data.x)
    n_batches = math.ceil(n / batch_size)
    per_epoch = sum(distributed.runs_batch(len(b)) for b in torch.arange(n, device="cpu").split(batch_size))
    first, last = epoch_offset * n_batches, (epoch_offset + epochs) * n_batches
    ck.check_supported(label)
    resume_it = ck.resume_iteration
    distributed.start_replicas(ck.modules(), batch_size, ctx.seed, epoch_offset)
    if ck.resume_into(history, first, last):
        ctx.log(f"[{label}] resumed at iteration {resume_it} from {ck.resume.path}")
    total = epochs_total if epochs_total is not None else epoch_offset + epochs
    base = 0 if bar is None else epoch_offset  # the bar's count at this loop's start
    with (contextlib.nullcontext(bar) if bar is not None
          else bars.bar(label, epochs, show=not ctx.quiet, unit="epochs")) as progress:
        for epoch in range(epoch_offset, epoch_offset + epochs):
            if (epoch + 1) * n_batches < resume_it:  # finished (with its epoch-end actions) before the checkpoint
                progress.set(base + epoch - epoch_offset + 1)
                continue
            gen = torch.Generator(device="cpu").manual_seed(ctx.seed * 100003 + epoch)
            t0 = time.perf_counter()
            for b, idx in enumerate(batches(n, batch_size, gen)):
                it = epoch * n_batches + b
                if it < resume_it or not distributed.runs_batch(len(idx)):
                    progress.advance(1 / n_batches)
                    continue
                local = distributed.shard_batch(idx)
                with divergence_located(label, epoch, it, ck):
                    with ctx.precision.context(ctx.device):
                        out = step(local, data.x[local.to(data.x.device)], it)
                    # a signal arriving after the agreement waits for the next iteration: every rank saves and
                    # stops at the same one
                    vals, stop = distributed.agree_step(out, ck.interrupted is not None)
                    refuse_non_finite(vals)
                history.add(vals)
                done = it + 1
                if ck.path is not None and ((ck.every and done % ck.every == 0) or stop):
                    ck.save(done, history)
                if stop:
                    raise Interrupted(done, ck.path)
                if log_every and done % log_every == 0:
                    ctx.log(f"[{label}] it {done} " + " ".join(f"{k}={v:.4g}" for k, v in vals.items()))
                progress.advance(1 / n_batches, msg=" ".join(f"{k}={v:.3g}" for k, v in list(vals.items())[:3]))
            for s in schedulers:
                s.step()
            means = history.close_epoch(epoch * per_epoch)
            progress.set(base + epoch - epoch_offset + 1)
            ctx.log(f"[{label}] epoch {epoch + 1}/{total} ({time.perf_counter() - t0:.1f}s) "
                    + " ".join(f"{k}={v:.4g}" for k, v in means.items()))
            if ctx.on_epoch is not None:
                ctx.on_epoch(label, epoch, means)
    distributed.end_replicas(ctx.seed, epoch_offset + epochs)
    return history
