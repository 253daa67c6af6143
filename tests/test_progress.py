"""The progress display: one live line on a terminal, few lines in a log, rate after start-up."""

import io

from usam_ray.progress import Progress, Terminal, format_seconds


class Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_log_mode_prints_first_then_at_most_every_interval_then_final():
    clock, lines = Clock(), []
    p = Progress("embed", 1000, "images", lines.append, every_s=30, clock=clock, heartbeat=False)
    clock.t = 20.0  # start-up: model loading, no image yet
    p.update(10)
    for _ in range(99):
        clock.t += 1.0
        p.update(10)
    p.close()
    # 1000 images in 100 updates over 119 s: the first, three throttled lines, the final one
    assert len(lines) == 5, lines
    assert lines[0].startswith("embed: 10/1000 images")
    # rate measured after the first completion: 990 images in 99 s, not 1000 in 119 s
    assert "10 images/s" in lines[2] and "ETA" in lines[2]
    assert lines[-1].startswith("embed: 1000/1000 images in 1m59s (10 images/s after start-up)")


def test_live_terminal_gets_every_update_in_place_and_one_final_line():
    stream = io.StringIO()
    term = Terminal(stream, live=True)
    clock = Clock()
    p = Progress("label", 3, "images", term, clock=clock, heartbeat=False)
    for _ in range(3):
        clock.t += 1
        p.update(1, instances=4)
    term("a permanent line")  # clears the live line first
    p.close()
    text = stream.getvalue()
    assert text.count("\r\x1b[2K") >= 4
    permanent = [line for line in text.split("\n") if line and "\r" not in line]
    assert permanent == ["label: 3/3 images in 3s (1 images/s after start-up), instances 4"]
    assert "a permanent line" in text


def test_waiting_line_when_nothing_finishes():
    import time

    lines = []
    p = Progress("embed", 10, "images", lines.append, every_s=0.2)
    time.sleep(0.5)  # the heartbeat prints while the stage is stuck at start-up
    p.close()
    assert any("starting, 0/10 images" in line for line in lines[:-1])


def test_format_seconds():
    assert [format_seconds(s) for s in (0, 12.4, 75, 3725)] == ["0s", "12s", "1m15s", "1h02m"]


def test_native_stderr_goes_to_a_file_and_python_stderr_to_the_terminal(tmp_path):
    """What Ray's C++ core writes to fd 2 lands in a file; usam-ray's lines still reach stderr."""
    import subprocess
    import sys

    log = tmp_path / "native.log"
    code = (
        "import os, sys\n"
        "from usam_ray.progress import native_stderr_to_file\n"
        f"with native_stderr_to_file({str(log)!r}):\n"
        "    os.write(2, b'[E core_worker.cc] native noise\\n')\n"
        "    print('usam-ray line', file=sys.stderr)\n"
        "os.write(2, b'after the block\\n')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr.splitlines() == ["usam-ray line", "after the block"]
    assert log.read_text() == "[E core_worker.cc] native noise\n"
