"""Progress bars on stderr: the one helper every loop that can run for long uses (training, sampling,
reconstruction and scoring over a dataset, FID feature extraction, train-features).

A bar is drawn only when the caller asks for one (``show``: the command was not given ``--quiet``), stderr is a
terminal (rich's ``Console(stderr=True).is_terminal``) and, under torchrun, on rank 0. A bar inside a drawn bar is
not drawn (one line at a time). Bars are transient: nothing is left on stderr when the loop ends.
"""

from __future__ import annotations

from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Iterable, Iterator, Optional

from ebmtool import distributed

_drawing: ContextVar[bool] = ContextVar("ebmtool_progress_drawing", default=False)


def stderr_is_terminal() -> bool:
    from rich.console import Console

    return Console(stderr=True).is_terminal


def drawn(show: bool) -> bool:
    """Whether a bar asked for with ``show`` is drawn here and now."""
    return bool(show) and not _drawing.get() and distributed.world().is_main and stderr_is_terminal()


class Bar:
    """A handle on one bar: ``advance(n, msg)``; a no-op when the bar is not drawn."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: int = 1, msg: Optional[str] = None) -> None:
        if self._progress is not None:
            fields = {} if msg is None else {"msg": msg}
            self._progress.update(self._task, advance=n, **fields)


@contextmanager
def bar(description: str, total: int, show: bool) -> Iterator[Bar]:
    """A bar of ``total`` steps; ``show=False`` (``--quiet``) or stderr not a terminal: nothing is drawn."""
    if not drawn(show):
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
        TimeRemainingColumn

    # stderr was found to be a terminal above; force_terminal keeps that answer for the whole loop
    progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                        TimeRemainingColumn(), TextColumn("{task.fields[msg]}"),
                        console=Console(stderr=True, force_terminal=True), transient=True)
    token = _drawing.set(True)
    try:
        with progress:
            yield Bar(progress, progress.add_task(description, total=total, msg=""))
    finally:
        _drawing.reset(token)


def track(items: Iterable[Any], total: int, description: str, show: bool) -> Iterator[Any]:
    """Iterate over ``items`` (``total`` of them) with a bar (see :func:`bar`)."""
    with bar(description, total, show) as b:
        for item in items:
            yield item
            b.advance()
