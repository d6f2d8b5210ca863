"""Optional TensorBoard logging for the training commands (``--tensorboard DIR``).

At the end of every epoch the per-epoch means that training already logs (losses, NCE per stage, log-ratio
means, gradient norms: whatever the method's step returns) are written as scalars ``<run>/<name>`` with the
global epoch (1-based, continuing across adaptive-NCE stages) as the step, plus ``<run>/wall_time_s`` (seconds since
training started) and a grid of samples from the model as it stands (``<run>/samples``; 64 samples from a fixed
seed, so the same noise is shown every epoch; the training RNG is left untouched, so a run gives the same model
with and without the flag). ``<run>`` is the training loop's label (``mle``, ``adaptive-nce_stage_1``, ...).

``train-features --tensorboard DIR`` writes its per-epoch training loss and validation accuracy the same way
(``train-features/loss``, ``train-features/val_accuracy``, no sample grid).

Needs the ``tensorboard`` package (``pip install -e '.[tensorboard]'``); without it the flag is refused in one
line before any work. Writes through ``torch.utils.tensorboard``; only the main process writes under torchrun.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any, Optional

from ebmtool.errors import UserError
from ebmtool.images import grid_image, to_uint8

INSTALL_HINT = "pip install -e '.[tensorboard]'"
N_SAMPLES = 64


def require() -> None:
    """One-line UserError when the tensorboard package is missing."""
    try:
        import tensorboard  # noqa: F401
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401
    except ImportError:
        raise UserError(f"--tensorboard: the tensorboard package is not installed ({INSTALL_HINT})") from None


def run_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label.strip()) or "train"


def sample_grid(model: Any, n: int = N_SAMPLES, seed: int = 0):
    """(3, H, W) uint8 grid of ``n`` samples, square, upscaled by nearest neighbour (ebmtool.images.grid_image).

    Drawn in eval mode from a fixed seed inside ``torch.random.fork_rng``: the training modes and the RNG state
    of the run are restored afterwards."""
    import torch

    mods = list(model.modules())
    modes = [m.training for m in mods]
    dev = next(model.parameters()).device
    model.eval()
    try:
        with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
            torch.manual_seed(seed)
            images = model.sample(n).images
    finally:
        for m, was in zip(mods, modes):
            m.train(was)
    return grid_image(to_uint8(images.detach().float()).cpu())


class TensorBoardLogger:
    """Call ``log_epoch(label, epoch, means, model)`` at each epoch end; ``close()`` at the end of training."""

    def __init__(self, logdir: str | Path, n_samples: int = N_SAMPLES):
        from ebmtool.distributed import world

        require()
        from torch.utils.tensorboard import SummaryWriter

        self.logdir = Path(logdir)
        if self.logdir.exists() and not self.logdir.is_dir():
            raise UserError(f"--tensorboard {logdir}: exists and is not a directory")
        self.n_samples = n_samples
        self.writer = SummaryWriter(str(self.logdir)) if world().is_main else None
        self.t0 = time.perf_counter()

    def log_epoch(self, label: str, epoch: int, means: dict[str, float], model: Optional[Any] = None) -> None:
        """``epoch``: the 0-based global epoch index; written at step epoch + 1."""
        if self.writer is None:
            return
        run, step = run_name(label), epoch + 1
        for k, v in means.items():
            self.writer.add_scalar(f"{run}/{k}", float(v), step)
        self.writer.add_scalar(f"{run}/wall_time_s", time.perf_counter() - self.t0, step)
        if model is not None and self.n_samples > 0:
            self.writer.add_image(f"{run}/samples", sample_grid(model, self.n_samples), step, dataformats="CHW")
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
