"""Progress of long phases: a user sees a line at least every PERIOD seconds, however large the
corpus or busy the machine, and never a time-left estimate the code cannot back.

`Every` thins out the lines of a loop that reports often (tree iterations, batches, feature
groups); `ticking` speaks for one long call that reports nothing itself (a Ray Data write, a
TFLite conversion).
"""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator

PERIOD = 10.0  # seconds between progress lines at most, on top of the lines a phase prints anyway


class Every:
    """Calls say(line) at most once per `period` seconds; the lines in between are dropped.

    Args:
        say: where a line goes (None: nothing is said).
        period: seconds between lines at least.
    """

    def __init__(self, say: Callable[[str], None] | None, period: float = PERIOD):
        self.say, self.period = say, period
        self.last = time.monotonic()  # the phase's own first line was just printed

    def reset(self) -> None:
        """A line of the phase's own was just printed: the next progress line waits a period again."""
        self.last = time.monotonic()

    def __call__(self, line: Callable[[], str] | str) -> None:
        now = time.monotonic()
        if self.say is not None and now - self.last >= self.period:
            self.last = now
            self.say(line() if callable(line) else line)


@contextlib.contextmanager
def ticking(say: Callable[[str], None] | None, describe: Callable[[], str], period: float = PERIOD) -> Iterator[None]:
    """A context in which say(describe()) is called every `period` seconds, from a background thread.

    Args:
        say: where a line goes (None: nothing is said).
        describe: makes the line (a failing one is skipped: a progress line never fails the work).
        period: seconds between lines.

    Yields:
        Nothing.
    """
    if say is None:
        yield
        return
    done = threading.Event()

    def tick() -> None:
        while not done.wait(period):
            with contextlib.suppress(Exception):  # a progress line never fails the work it reports on
                say(describe())

    thread = threading.Thread(target=tick, name="caspar-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def since(started: float) -> str:
    """Seconds since a moment, as progress lines give them.

    Args:
        started: a time.perf_counter() value.

    Returns:
        "12 s".
    """
    return f"{time.perf_counter() - started:.0f} s"
