"""No silent minutes (issue 25): while a step runs, a log gets a plain line at least every
DEPLOYKIT_PROGRESS_SECONDS, also when the step itself reports nothing for that long. Steps are slowed on purpose
and the interval made small, so each test takes about a second."""

from __future__ import annotations

import io
import re
import time

import pytest
from rich.console import Console

from _models import make_checkpoint


@pytest.fixture
def fast_heartbeat(monkeypatch):
    monkeypatch.setenv("DEPLOYKIT_PROGRESS_SECONDS", "0.2")


def _log_console() -> tuple[Console, io.StringIO]:
    stream = io.StringIO()
    return Console(file=stream, force_terminal=False, width=200), stream


def test_a_silent_step_gets_a_line_every_interval(fast_heartbeat):
    from deploykit.cli.messages import ConsoleReporter

    console, stream = _log_console()
    reporter = ConsoleReporter(console)
    reporter.status("converting to FP16")
    time.sleep(1.0)  # the step says nothing for five intervals
    still = [line for line in stream.getvalue().splitlines() if "still converting to FP16" in line]
    assert 3 <= len(still) <= 6, stream.getvalue()
    assert re.match(r"\d\d:\d\d:\d\d still converting to FP16: \d+ s since it started", still[0])


def test_a_counted_task_between_updates_gets_a_line_every_interval(fast_heartbeat):
    from deploykit.cli.messages import ConsoleReporter

    console, stream = _log_console()
    reporter = ConsoleReporter(console)
    with reporter.progress("sensitivity of 3 INT8 layers", 3) as task:
        task.advance()
        time.sleep(1.0)  # one slow layer: no update for five intervals
        task.advance(2)
    lines = [line for line in stream.getvalue().splitlines() if "sensitivity of 3 INT8 layers: 1/3" in line]
    assert len(lines) >= 3, stream.getvalue()


def test_no_heartbeat_once_the_reporter_is_gone(fast_heartbeat):
    import gc
    import threading

    from deploykit.cli.messages import ConsoleReporter

    console, stream = _log_console()
    reporter = ConsoleReporter(console)
    reporter.status("a step")
    heart = reporter._heart
    del reporter
    gc.collect()
    heart.join(timeout=2.0)
    assert not heart.is_alive() and heart not in threading.enumerate()


def test_export_with_a_slow_fp16_conversion_is_never_silent(cli, tmp_path, monkeypatch, fast_heartbeat):
    """An export whose FP16 step takes ten intervals prints a line at least every interval (0.2 s here) while it
    runs: the log's timestamps never leave a gap of more than about one interval."""
    from deploykit.precision import variants

    real = variants.convert_fp16

    def slow(*args, **kwargs):
        time.sleep(2.0)
        return real(*args, **kwargs)

    monkeypatch.setattr(variants, "convert_fp16", slow)
    ckpt = make_checkpoint(tmp_path / "lenet.pt", "lenet")
    result = cli("export", ckpt, "--out", tmp_path / "exp", "--fp16", "--no-verify")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    start = next(i for i, line in enumerate(lines) if "converting to FP16" in line)
    still = [line for line in lines[start + 1:] if "still converting to FP16" in line]
    assert len(still) >= 5, result.output  # 2 s / 0.2 s, less the checks' own granularity
    stamps = [int(m.group(1)) for line in still if (m := re.search(r": (\d+) s since it started", line))]
    assert stamps == sorted(stamps) and stamps[-1] >= 1
