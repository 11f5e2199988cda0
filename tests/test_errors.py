"""entry_point: the one place an entry script turns bad input and signals into exit statuses."""

from __future__ import annotations

import signal

import pytest

from mosaicbert.errors import Interrupted, Stopped, UserError, entry_point


def test_bad_input_is_one_error_line_and_status_2(capsys):
    @entry_point("tool")
    def main(argv):
        raise UserError(f"no such file: {argv[0]}; give an existing one.")

    assert main(["x.csv"]) == 2
    captured = capsys.readouterr()
    assert captured.err == "error: no such file: x.csv; give an existing one.\n" and captured.out == ""


@pytest.mark.parametrize("stop, line", [
    (Stopped(signal.SIGTERM, "2 jobs interrupted"), "[tool] stopped on SIGTERM: 2 jobs interrupted."),
    (Interrupted(signal.SIGINT, 7, None), "[tool] stopped on SIGINT after batch 7; no checkpoint saved"),
])
def test_a_stop_on_a_signal_is_its_message_and_128_plus_the_signal(stop, line, capsys):
    @entry_point("tool")
    def main():
        raise stop

    assert main() == 128 + stop.signum
    assert capsys.readouterr().err.startswith(line)


def test_the_status_is_mains_int_else_0_and_a_bug_keeps_its_traceback():
    assert entry_point()(lambda: 1)() == 1
    assert entry_point()(lambda: {"documents": 3})() == 0  # a main that returns what it did, for its tests
    with pytest.raises(ZeroDivisionError):
        entry_point()(lambda: 1 / 0)()
