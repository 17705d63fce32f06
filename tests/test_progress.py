"""Progress shown as fits where it goes: rich bars on a terminal, plain lines in logs and
pipes, tqdm.notebook bars in Jupyter."""

import io
import sys
import types

import pytest

from asn2n_dask import progress
from asn2n_dask.progress import PlainLines, progress_bar, progress_kind


class Stream(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_kind_is_rich_on_a_terminal_plain_elsewhere_and_notebook_in_jupyter(monkeypatch):
    assert progress_kind(Stream(tty=True)) == "rich"
    assert progress_kind(Stream(tty=False)) == "plain"
    monkeypatch.setattr(sys, "stderr", Stream(tty=True))
    assert progress_kind() == "rich"  # the stream of the moment, by default
    monkeypatch.setattr(sys, "stderr", Stream(tty=False))
    assert progress_kind() == "plain"
    monkeypatch.setattr(progress, "in_notebook", lambda: True)
    monkeypatch.setattr(progress, "notebook_bars_available", lambda: True)
    assert progress_kind(Stream(tty=True)) == "notebook"
    monkeypatch.setattr(progress, "notebook_bars_available", lambda: False)  # no tqdm or ipywidgets
    assert progress_kind(Stream(tty=False)) == "plain"


def test_a_notebook_is_an_ipython_kernel_not_a_terminal_ipython(monkeypatch):
    fake = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "IPython", fake)
    fake.get_ipython = lambda: types.SimpleNamespace(config={"IPKernelApp": {}})  # type: ignore[attr-defined]
    assert progress.in_notebook()
    fake.get_ipython = lambda: types.SimpleNamespace(config={})  # type: ignore[attr-defined]
    assert not progress.in_notebook()
    fake.get_ipython = lambda: None  # type: ignore[attr-defined]
    assert not progress.in_notebook()
    monkeypatch.delitem(sys.modules, "IPython")
    assert not progress.in_notebook()


def test_plain_lines_every_tenth_or_interval_with_counts_rate_and_eta():
    out, clock = io.StringIO(), Clock()
    lines = PlainLines(out, interval=25.0, clock=clock)
    for done in range(1, 201):  # one item a second
        clock.now += 1.0
        lines("denoising", done, 200)
    text = out.getvalue()
    assert "\x1b" not in text and "\r" not in text
    rows = text.splitlines()
    # the first update, then at each tenth (every 20 s) and never 25 s apart; the end once
    assert rows[0] == "denoising: 1/200 (0%)"
    assert rows[1] == "denoising: 20/200 (10%), 1/s, elapsed 0:00:19, ETA 0:03:00"
    assert rows[-1] == "denoising: 200/200 (100%), 1/s, elapsed 0:03:19, ETA 0:00:00"
    assert len(rows) == 11
    lines("denoising", 200, 200)  # a repeated end count prints nothing more
    assert out.getvalue() == text

    out, clock = io.StringIO(), Clock()
    slow = PlainLines(out, interval=30.0, clock=clock)
    for done in range(0, 5):  # 60 s an item: a line every 30 s at most would still give one per update
        slow("training", done, 1000)
        clock.now += 60.0
    rows = out.getvalue().splitlines()
    assert [r.split(":")[1].split()[0] for r in rows] == ["0/1000", "1/1000", "2/1000", "3/1000", "4/1000"]
    assert rows[2] == "training: 2/1000 (0%), 0.0167/s, elapsed 0:02:00, ETA 16:38:00"


def test_plain_lines_keep_tasks_apart():
    out, clock = io.StringIO(), Clock()
    lines = PlainLines(out, clock=clock)
    lines("statistics", 0, 1)
    lines("training channel mito", 1, 10)
    clock.now += 2.0
    lines("statistics", 1, 1)
    assert out.getvalue().splitlines() == ["statistics: 0/1 (0%)", "training channel mito: 1/10 (10%)",
                                           "statistics: 1/1 (100%), 0.5/s, elapsed 0:00:02, ETA 0:00:00"]


def test_progress_bar_picks_plain_lines_off_a_terminal_and_nothing_when_disabled():
    out = Stream(tty=False)
    with progress_bar(stream=out) as bar:
        for done in range(11):
            bar("report", done, 10)
    assert out.getvalue().splitlines()[-1].startswith("report: 10/10 (100%)")
    silent = Stream(tty=False)
    with progress_bar(False, stream=silent) as bar:
        bar("report", 1, 1)
    assert silent.getvalue() == ""


def test_notebook_bars_follow_the_counts_and_close(monkeypatch):
    made = []

    class FakeBar:
        def __init__(self, total: int, desc: str) -> None:
            self.total, self.desc, self.n, self.closed = total, desc, 0, False
            made.append(self)

        def update(self, k: int) -> None:
            self.n += k

        def close(self) -> None:
            self.closed = True

    notebook = types.ModuleType("tqdm.notebook")
    notebook.tqdm = FakeBar  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "tqdm", types.ModuleType("tqdm"))
    monkeypatch.setitem(sys.modules, "tqdm.notebook", notebook)
    with progress_bar(kind="notebook") as bar:
        for done in range(1, 4):
            bar("training", done, 3)
        bar("denoising", 5, 8)
    assert [(b.desc, b.n, b.total, b.closed) for b in made] == [("training", 3, 3, True), ("denoising", 5, 8, True)]


@pytest.mark.parametrize("kind", ["rich", "plain"])
def test_rich_and_plain_show_the_end_count(kind):
    out = Stream(tty=kind == "rich")
    with progress_bar(stream=out) as bar:
        bar("statistics", 0, 1)
        bar("statistics", 1, 1)
    assert "1/1" in out.getvalue()
