"""What a long stage shows while it runs: one progress display per stage, not a flood of lines.

``Terminal`` is where usam-ray's messages go (the CLI passes one as every stage's ``log``):
calling it prints a permanent line; on an interactive terminal it also keeps one *live* line that
is rewritten in place. ``Progress`` is one stage's display: done/total, rate and ETA measured
after start-up (the first completed item starts the clock, so model loading and compilation do
not make the early ETA wrong), plus stage-specific fields (errors, loss). On a live terminal it
redraws the live line on every update and every second; in a log file or CI it prints a line when
the first item completes, then at most every ``every_s`` seconds, a "waiting" line when nothing
completed for that long (a stall is visible), and one final line.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import threading
import time
from typing import Callable, Iterator, Optional, TextIO


@contextlib.contextmanager
def native_stderr_to_file(path: Optional[str] = None) -> Iterator[Optional[str]]:
    """Send what native code writes to file descriptor 2 (Ray's C++ core logs its errors there) to
    a file, while ``sys.stderr`` (usam-ray's messages, warnings, tracebacks) keeps writing to the
    terminal. Restored on exit, also when an exception leaves the block.

    Args:
        path (str | None): the file (default: ``$TMPDIR/usam-ray-<pid>-native.log``); removed
            when empty, else moved into the Ray session's log folder when ``init_ray`` named one
            (``$USAM_RAY_SESSION_LOGS``).

    Yields:
        the file's path, or None when stderr has no file descriptor (nothing redirected).
    """
    try:
        sys.stderr.flush()
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (embedded, captured)
        yield None
        return
    path = path or os.path.join(tempfile.gettempdir(), f"usam-ray-{os.getpid()}-native.log")
    saved = os.dup(fd)
    old_stderr = sys.stderr
    with open(path, "ab") as sink:
        os.dup2(sink.fileno(), fd)
    sys.stderr = os.fdopen(os.dup(saved), "w", buffering=1, encoding=getattr(old_stderr, "encoding", None) or "utf-8",
                           errors="backslashreplace")
    try:
        yield path
    finally:
        sys.stderr.flush()
        sys.stderr.close()
        os.dup2(saved, fd)
        os.close(saved)
        sys.stderr = old_stderr
        if os.path.isfile(path) and os.path.getsize(path) == 0:
            os.remove(path)
        elif os.path.isdir(os.environ.get("USAM_RAY_SESSION_LOGS", "")):  # beside Ray's other logs
            shutil.move(path, os.path.join(os.environ["USAM_RAY_SESSION_LOGS"], f"usam-ray-{os.getpid()}-native.log"))


class Terminal:
    """Permanent lines and, on a TTY, one live status line (stderr by default).

    Args:
        stream (TextIO | None): where to write (default ``sys.stderr``).
        live (bool | None): keep a live line; default: whether ``stream`` is a TTY.
    """

    def __init__(self, stream: Optional[TextIO] = None, live: Optional[bool] = None) -> None:
        self._stream = stream
        self.is_live = bool(self.stream.isatty()) if live is None else live
        self._shown = False
        self._lock = threading.Lock()

    @property
    def stream(self) -> TextIO:
        """The stream given, else the current ``sys.stderr`` (looked up on every write, so that
        ``native_stderr_to_file`` can swap it)."""
        return self._stream or sys.stderr

    def __call__(self, line: str) -> None:
        """Print ``line`` for good (the live line, if any, is cleared first and redrawn by its owner)."""
        with self._lock:
            self._clear()
            self.stream.write(line + "\n")
            self.stream.flush()

    def live(self, text: str) -> None:
        """Rewrite the live line (no-op when not live)."""
        if not self.is_live:
            return
        width = max(20, shutil.get_terminal_size((100, 20)).columns - 1)
        with self._lock:
            self.stream.write("\r\x1b[2K" + text[:width])
            self.stream.flush()
            self._shown = True

    def end_live(self) -> None:
        """Remove the live line."""
        with self._lock:
            self._clear()
            self.stream.flush()

    def _clear(self) -> None:
        if self._shown:
            self.stream.write("\r\x1b[2K")
            self._shown = False


def format_seconds(seconds: float) -> str:
    """``75.3`` → ``1m15s``; ``3725`` → ``1h02m``; under a minute ``12s``."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{(seconds % 3600) // 60:02d}m"


class Progress:
    """One stage's progress display.

    Args:
        stage (str): the line prefix (``embed``, ``train teacher``).
        total (int): items to do this run.
        unit (str): what an item is (``images``, ``shards``, ``epochs``).
        log (Callable[[str], None]): where lines go; a ``Terminal`` also gets the live line.
        every_s (float): at most one line per this many seconds when not live (and a waiting line
            after this long without progress).
        clock (Callable[[], float]): monotonic seconds (tests pass a fake one).
        heartbeat (bool): run the background thread that redraws the live line every second and
            prints the waiting line; off, lines come only from ``update``/``close``.

    Use as a context manager, or call ``close()``.
    """

    def __init__(self, stage: str, total: int, unit: str = "images", log: Callable[[str], None] = print,
                 every_s: float = 30.0, clock: Callable[[], float] = time.monotonic, heartbeat: bool = True) -> None:
        self.stage, self.total, self.unit, self.log, self.every_s, self.clock = stage, total, unit, log, every_s, clock
        self.done = 0
        self.fields: dict[str, object] = {}
        self.start = clock()
        self._first: Optional[tuple[float, int]] = None  # (time, done) when the first item completed
        self._last_line = self.start
        self._last_progress = self.start
        self._live = bool(getattr(log, "is_live", False))
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = None
        if heartbeat:
            self._thread = threading.Thread(target=self._beat, name=f"progress-{stage}", daemon=True)
            self._thread.start()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def rate(self) -> Optional[float]:
        """Items per second since the first item completed (None until two time points exist)."""
        if self._first is None:
            return None
        t0, d0 = self._first
        elapsed = self.clock() - t0
        if elapsed <= 0 or self.done <= d0:
            return None
        return (self.done - d0) / elapsed

    def text(self) -> str:
        """The current status: ``embed: 120/400 images (30%), 8.20 images/s, ETA 34s, errors 2``."""
        now = self.clock()
        if self.done == 0:
            return f"{self.stage}: starting, 0/{self.total} {self.unit} after {format_seconds(now - self.start)}"
        pct = f" ({100.0 * self.done / self.total:.0f}%)" if self.total else ""
        parts = [f"{self.stage}: {self.done}/{self.total} {self.unit}{pct}"]
        rate = self.rate()
        if rate:
            parts.append(f"{rate:.3g} {self.unit}/s" if rate >= 1 else f"{1 / rate:.3g} s per {self.unit[:-1] or 'item'}")
            if self.done < self.total:
                parts.append(f"ETA {format_seconds((self.total - self.done) / rate)}")
        parts += [f"{k} {self._fmt(v)}" for k, v in self.fields.items()]
        return ", ".join(parts)

    @staticmethod
    def _fmt(value: object) -> str:
        return f"{value:.4g}" if isinstance(value, float) else str(value)

    def update(self, n: int = 1, **fields: object) -> None:
        """``n`` more items done; ``fields`` (e.g. ``errors=2``, ``loss=0.31``) replace shown values."""
        with self._lock:
            now = self.clock()
            if self._first is None and n > 0:
                # the first completion starts the clock: its items paid for start-up, not throughput
                self._first = (now, self.done + n)
            self.done += n
            self.fields.update(fields)
            if n > 0:
                self._last_progress = now
            first_line = self._first is not None and self._last_line == self.start
            if self._live:
                self.log.live(self.text())  # type: ignore[attr-defined]
            elif self.done < self.total and (first_line or now - self._last_line >= self.every_s):
                # (when all is done, the final line from ``close`` says it)
                self._last_line = now
                self.log(self.text())

    def close(self, summary: Optional[str] = None) -> None:
        """Stop the display and print the final line (``summary`` or the status with the time taken)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        with self._lock:
            if self._live:
                self.log.end_live()  # type: ignore[attr-defined]
            elapsed = self.clock() - self.start
            rate = self.rate()
            speed = (f" ({rate:.3g} {self.unit}/s after start-up)" if rate else
                     f" ({self.done / elapsed:.3g} {self.unit}/s)" if self.done and elapsed > 0 else "")
            self.log(summary or f"{self.stage}: {self.done}/{self.total} {self.unit} in {format_seconds(elapsed)}{speed}"
                     + "".join(f", {k} {self._fmt(v)}" for k, v in self.fields.items()))

    def _beat(self) -> None:
        interval = 1.0 if self._live else min(self.every_s, 5.0)
        while not self._stop.wait(interval):
            with self._lock:
                now = self.clock()
                if self._live:
                    self.log.live(self.text())  # type: ignore[attr-defined]
                elif now - self._last_line >= self.every_s:
                    self._last_line = now
                    waiting = now - self._last_progress
                    self.log(self.text() + (f" (nothing finished for {format_seconds(waiting)})"
                                            if waiting >= self.every_s and self.done else ""))
