"""Progress display that fits where it is shown, fed with ``(what, done, total)``.

One place decides how progress looks (:func:`progress_kind`):

- ``"rich"``: live bars (rich) when stderr is a terminal;
- ``"plain"``: one line now and then when stderr is not a terminal (a SLURM or PBS log,
  a pipe, a file): a line every ``interval`` seconds or every 10% of the count,
  whichever comes first, and the last one, each with the count, rate and ETA, and
  without escape codes or carriage returns;
- ``"notebook"``: ``tqdm.notebook`` bars in a Jupyter kernel, when tqdm and ipywidgets
  are installed (``pip install asn2n-dask[notebook]``); plain lines otherwise.

The verbs take any ``progress(what, done, total)`` callable; :func:`progress_bar` makes
one, for the command line and for notebooks::

    with progress_bar() as bar:
        model = fit(stack, config=TrainConfig(preset="tiny", steps=3), progress=bar)
"""

from __future__ import annotations

import contextlib
import importlib.util
import math
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import IO, Any, Literal

__all__ = ["Kind", "Update", "progress_kind", "progress_bar", "PlainLines"]

Kind = Literal["rich", "plain", "notebook"]
Update = Callable[[str, int, int], None]
"""Called as ``update(what, done, total)``."""

#: Seconds between two plain lines of one task, at most (a line also comes every 10%).
PLAIN_INTERVAL = 30.0


def in_notebook() -> bool:
    """Whether this process is a Jupyter (IPython) kernel."""
    ipython = sys.modules.get("IPython")  # never imported here: a kernel has it already
    if ipython is None:
        return False
    try:
        shell = ipython.get_ipython()
        return shell is not None and "IPKernelApp" in shell.config
    except Exception:  # an IPython too old or too new to ask: not a notebook we know
        return False


def notebook_bars_available() -> bool:
    """Whether ``tqdm.notebook`` can draw its widgets (tqdm and ipywidgets installed)."""
    return all(importlib.util.find_spec(name) is not None for name in ("tqdm", "ipywidgets"))


def progress_kind(stream: IO[str] | None = None) -> Kind:
    """How progress is shown on ``stream`` (default: the current ``sys.stderr``).

    ``"notebook"`` in a Jupyter kernel with tqdm and ipywidgets, ``"rich"`` on a
    terminal, ``"plain"`` otherwise (a log file, a pipe, a kernel without tqdm).
    """
    if in_notebook():
        return "notebook" if notebook_bars_available() else "plain"
    stream = sys.stderr if stream is None else stream
    try:
        return "rich" if stream.isatty() else "plain"
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return "plain"


def _clock(seconds: float) -> str:
    """``H:MM:SS`` (or ``?`` when unknown)."""
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


@dataclass
class _Task:
    start: float
    start_done: int
    last_print: float
    last_decile: int
    finished: bool = False


class PlainLines:
    """Progress as plain lines on ``stream`` (default: whatever ``sys.stderr`` is at
    each line): the first update of a task, then a line every ``interval`` seconds or
    every 10% of its count, whichever comes first, and its last count once.

    Each line reads ``what: done/total (pct%), rate/s, elapsed H:MM:SS, ETA H:MM:SS``;
    the rate counts from the task's first update.  ``clock`` gives the time in seconds
    (``time.monotonic``; a test passes its own).
    """

    def __init__(self, stream: IO[str] | None = None, *, interval: float = PLAIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.interval = interval
        self.clock = clock
        self.tasks: dict[str, _Task] = {}

    def __call__(self, what: str, done: int, total: int) -> None:
        now = self.clock()
        task = self.tasks.get(what)
        decile = 10 * done // total if total > 0 else 0
        if task is None:
            self.tasks[what] = _Task(start=now, start_done=done, last_print=now, last_decile=decile,
                                     finished=total > 0 and done >= total)
            self._line(what, done, total, now, self.tasks[what])
            return
        if task.finished:
            return
        task.finished = total > 0 and done >= total
        if task.finished or decile > task.last_decile or now - task.last_print >= self.interval:
            task.last_print, task.last_decile = now, decile
            self._line(what, done, total, now, task)

    def _line(self, what: str, done: int, total: int, now: float, task: _Task) -> None:
        elapsed = now - task.start
        rate = (done - task.start_done) / elapsed if elapsed > 0 else math.nan
        pct = f" ({100 * done / total:.0f}%)" if total > 0 else ""
        text = f"{what}: {done}/{total}{pct}"
        if math.isfinite(rate):
            eta = (total - done) / rate if rate > 0 else math.inf
            text += f", {rate:.3g}/s, elapsed {_clock(elapsed)}, ETA {_clock(eta)}"
        stream = self.stream if self.stream is not None else sys.stderr
        print(text, file=stream, flush=True)


@contextlib.contextmanager
def _rich_bars(stream: IO[str] | None) -> Iterator[Update]:
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    console = Console(stderr=True) if stream is None else Console(file=stream)
    bar = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TimeRemainingColumn(), console=console, transient=False)
    tasks: dict[str, Any] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in tasks:
            tasks[what] = bar.add_task(what, total=total)
        bar.update(tasks[what], completed=done, total=total)

    with bar:
        yield update


@contextlib.contextmanager
def _notebook_bars() -> Iterator[Update]:
    from tqdm.notebook import tqdm

    bars: dict[str, Any] = {}

    def update(what: str, done: int, total: int) -> None:
        if what not in bars:
            bars[what] = tqdm(total=total, desc=what)
        bar = bars[what]
        bar.total = total
        bar.update(done - bar.n)

    try:
        yield update
    finally:
        for bar in bars.values():
            bar.close()


@contextlib.contextmanager
def progress_bar(enabled: bool = True, *, kind: Kind | None = None, stream: IO[str] | None = None,
                 interval: float = PLAIN_INTERVAL) -> Iterator[Update]:
    """A ``progress(what, done, total)`` callable for the verbs, shown as ``kind``
    (default: :func:`progress_kind` of ``stream``, stderr by default).

    ``enabled=False`` gives one that shows nothing (``asn2n -q``).  ``interval``: the
    longest time between two plain lines of one task, in seconds.
    """
    if not enabled:
        yield lambda what, done, total: None
        return
    kind = progress_kind(stream) if kind is None else kind
    if kind == "rich":
        with _rich_bars(stream) as update:
            yield update
    elif kind == "notebook":
        with _notebook_bars() as update:
            yield update
    else:
        yield PlainLines(stream, interval=interval)
