"""The daemon's log lines: one event per line, each written whole."""

from __future__ import annotations

import io
import json

import structlog
from sessiond import logs


class _Writes(io.StringIO):
    """A stream that remembers each write() call."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[str] = []

    def write(self, text: str) -> int:
        self.calls.append(text)
        return super().write(text)


def test_each_event_is_one_write_of_one_whole_line() -> None:
    """Two processes share the daemon's stream during a SIGUSR2 hand-over: an
    event written in two parts (the line, then its newline) let the other's
    line in between, and both events were lost to a JSON reader."""
    stream = _Writes()
    before = structlog.get_config()  # other tests in this process log as before
    logs.configure("info", "json", stream)
    try:
        log = structlog.get_logger("sessiond.test")
        log.info("first", n=1)
        log.warning("second", text="a\nb")
    finally:
        structlog.configure(**before)
    assert len(stream.calls) == 2
    for call in stream.calls:
        assert call.endswith("\n") and call.count("\n") == 1
    assert [json.loads(call)["event"] for call in stream.calls] == ["first", "second"]
