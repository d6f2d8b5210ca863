"""Progress bars on stderr: the one helper every loop that can run for long uses (training, sampling,
reconstruction and scoring over a dataset, FID feature extraction, train-features).

A bar is drawn only when the caller asks for one (``show``: the command was not given ``--quiet``), stderr is a
terminal (rich's ``Console(stderr=True).is_terminal``) and, under torchrun, on rank 0. A bar inside a drawn bar is
not drawn (one line at a time). Bars are transient: nothing is left on stderr when the loop ends.

A bar counts in the unit the log lines use (training: epochs, advanced by a fraction per iteration, so its count
and the ``epoch N`` lines agree; adaptive NCE keeps one bar over all its stages, so the ETA is the whole run's). Its
columns keep their width on an 80-column terminal: the description (as many cells as it needs, at most 30), the
bar 20 cells, the count and both times whole; the running values after the times take what is left, cut with an
ellipsis.
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
    """A handle on one bar: ``advance(n, msg)`` (``n`` may be a fraction of the unit) and ``describe(text)``; a
    no-op when the bar is not drawn."""

    def __init__(self, progress: Any = None, task: Any = None) -> None:
        self._progress, self._task = progress, task

    def advance(self, n: float = 1, msg: Optional[str] = None) -> None:
        if self._progress is not None:
            fields = {} if msg is None else {"msg": msg}
            self._progress.update(self._task, advance=n, **fields)

    def describe(self, description: str) -> None:
        if self._progress is not None:
            self._progress.update(self._task, description=description)

    def set(self, completed: float) -> None:
        """Set the count exactly (at an epoch's end, where adding fractions would have drifted)."""
        if self._progress is not None:
            self._progress.update(self._task, completed=completed)


def count_text(completed: float, total: float, unit: str) -> str:
    """The bar's count, ``3/10 epochs`` or ``2.4/10 epochs`` mid-epoch (whole units without a decimal)."""
    done = f"{completed:.0f}" if float(completed).is_integer() else f"{completed:.1f}"
    return f"{done}/{total:g} {unit}" if unit else f"{done}/{total:g}"


def columns(unit: str = "", description_width: int = 24) -> list[Any]:
    """The bar's columns (see the module docstring for the widths at 80 columns); the description keeps
    ``description_width`` cells (at most 30), the running values get what is left."""
    from rich.progress import BarColumn, ProgressColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
    from rich.table import Column
    from rich.text import Text

    class Count(ProgressColumn):
        def render(self, task) -> Text:
            return Text(count_text(task.completed, task.total or 0, unit), style="progress.download")

    w = max(4, min(30, description_width))
    return [TextColumn("{task.description}", table_column=Column(no_wrap=True, overflow="ellipsis", width=w)),
            BarColumn(bar_width=20), Count(table_column=Column(no_wrap=True)),
            TimeElapsedColumn(table_column=Column(no_wrap=True, min_width=7)), TextColumn("ETA"),
            TimeRemainingColumn(table_column=Column(no_wrap=True, min_width=7)),
            TextColumn("{task.fields[msg]}", table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1))]


@contextmanager
def bar(description: str, total: float, show: bool, unit: str = "", width: Optional[int] = None) -> Iterator[Bar]:
    """A bar of ``total`` units (``unit`` names them: "epochs", "batches"); ``show=False`` (``--quiet``) or stderr
    not a terminal: nothing is drawn. ``width``: the cells the description keeps (default: its length), for a
    description that :meth:`Bar.describe` will lengthen."""
    if not drawn(show):
        yield Bar()
        return
    from rich.console import Console
    from rich.progress import Progress

    # stderr was found to be a terminal above; force_terminal keeps that answer for the whole loop. expand: the
    # running values (the one column with a ratio) take the width the fixed columns leave
    progress = Progress(*columns(unit, width or len(description)),
                        console=Console(stderr=True, force_terminal=True), transient=True, expand=True)
    token = _drawing.set(True)
    try:
        with progress:
            yield Bar(progress, progress.add_task(description, total=total, msg=""))
    finally:
        _drawing.reset(token)


def track(items: Iterable[Any], total: int, description: str, show: bool, unit: str = "") -> Iterator[Any]:
    """Iterate over ``items`` (``total`` of them) with a bar (see :func:`bar`)."""
    with bar(description, total, show, unit) as b:
        for item in items:
            yield item
            b.advance()
