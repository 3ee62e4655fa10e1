"""The config file and the command line (docs/operations.md, docs/configuration.md):
``sessiond check-config``, ``sessiond run`` with a bad config and ``sessiond --version``
as subprocesses, plus unit tests of the value parsers.

A bad file exits 1 with one line per problem, each naming the dotted key, all
problems at once, and never a traceback.
"""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import alias_bomb
from hypothesis import given
from hypothesis import strategies as st
from sessiond import REDIS_COMPAT_VERSION, __version__
from sessiond.config import (
    ConfigError,
    PubSubConfig,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)

REPO = Path(__file__).resolve().parents[1]


def sessiond(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sessiond", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def check(tmp_path: Path, text: str | bytes) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "sessiond.yaml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text)
    return sessiond("check-config", "--config", str(path), cwd=tmp_path)


def problems(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 1, proc
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout == ""
    return proc.stderr.splitlines()


# ------------------------------------------------------------ check-config


def test_valid_file_prints_the_effective_config(tmp_path: Path) -> None:
    proc = check(
        tmp_path,
        """
socket:
  path: run/s.sock
  mode: "0660"
cache:
  max_sessions: 500
  default_ttl: 15m
  sweep_interval: 500ms
persistence:
  backend: sqlite
  path: ../data/sessions.db
  durability: batch
limits:
  max_value_size: 64KiB
  max_request_size: 1MiB
  client_idle_timeout: 1h
security:
  password: hunter2
  allowed_uids: [0, 1000]
""",
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    header, _, body = proc.stdout.partition("\n")
    assert header == f"# effective config from {tmp_path / 'sessiond.yaml'}"
    effective = yaml.safe_load(body)
    assert effective["socket"]["path"] == str(tmp_path / "run" / "s.sock")
    assert effective["socket"]["mode"] == "0660"
    assert effective["cache"]["max_sessions"] == 500
    assert effective["cache"]["default_ttl"] == 900
    assert effective["cache"]["sweep_interval"] == 0.5
    assert effective["cache"]["sliding"] is True  # a default, shown too
    assert effective["persistence"]["path"] == str(tmp_path.parent / "data" / "sessions.db")
    assert effective["persistence"]["durability"] == "batch"
    assert effective["limits"]["max_value_size"] == 65536
    assert effective["limits"]["max_request_size"] == 1048576
    assert effective["limits"]["client_idle_timeout"] == 3600
    assert effective["security"]["allowed_uids"] == [0, 1000]
    assert effective["security"]["password"] == "(set)"
    assert "hunter2" not in proc.stdout
    assert effective["pubsub"]["notify_keyspace_events"] == ""  # off by default
    assert set(effective) == {
        "socket", "cache", "persistence", "metrics", "logging", "limits", "slowlog",
        "latency", "scripting", "security", "pubsub",
    }  # fmt: skip


def test_effective_config_reads_back_the_same(tmp_path: Path) -> None:
    first = check(tmp_path, "cache:\n  default_ttl: 2h\nlimits:\n  max_clients: 7\n")
    assert first.returncode == 0
    again = tmp_path / "again"
    again.mkdir()
    body = first.stdout.partition("\n")[2]
    second = check(again, body)
    assert second.returncode == 0, second.stderr
    assert second.stdout.partition("\n")[2] == body


@pytest.mark.parametrize("text", ["", "# only a comment\n", "cache:\n"])
def test_empty_file_means_defaults(tmp_path: Path, text: str) -> None:
    proc = check(tmp_path, text)
    assert proc.returncode == 0, proc.stderr
    effective = yaml.safe_load(proc.stdout)
    assert effective["cache"]["max_sessions"] == 10000
    assert effective["cache"]["default_ttl"] == 3600
    assert effective["limits"]["max_value_size"] == 1024 * 1024


def test_example_config_in_the_repo_is_valid() -> None:
    proc = sessiond("check-config", "--config", str(REPO / "config" / "sessiond.yaml"))
    assert proc.returncode == 0, proc.stderr


BAD: dict[str, tuple[str, str]] = {
    "negative-max-sessions": (
        "cache:\n  max_sessions: -5\n",
        "cache.max_sessions: must be a positive integer, got -5",
    ),
    "zero-max-sessions": (
        "cache:\n  max_sessions: 0\n",
        "cache.max_sessions: must be a positive integer, got 0",
    ),
    "string-max-sessions": (
        "cache:\n  max_sessions: lots\n",
        "cache.max_sessions: must be a positive integer, got 'lots'",
    ),
    "bool-max-clients": (
        "limits:\n  max_clients: true\n",
        "limits.max_clients: must be a positive integer, got True",
    ),
    "unknown-key": ("cache:\n  max_session: 5\n", "cache.max_session: unknown key"),
    "unknown-section": ("caches:\n  max_sessions: 5\n", "caches: unknown section"),
    "section-not-a-mapping": ("cache: 5\n", "cache: must be a mapping, got 5"),
    "top-not-a-mapping": ("- a\n- b\n", "must be a mapping of sections, got list"),
    "bad-duration": (
        "cache:\n  default_ttl: 1 fortnight\n",
        "cache.default_ttl: must be a duration (seconds or e.g. 500ms, 30s, 15m, 1h, 7d), "
        "got '1 fortnight'",
    ),
    "negative-duration": (
        "limits:\n  client_idle_timeout: -1\n",
        "limits.client_idle_timeout: must be a non-negative duration, got -1",
    ),
    "infinite-duration": ("cache:\n  default_ttl: .inf\n", "cache.default_ttl: must be a duration"),
    "nan-duration": ("cache:\n  default_ttl: .nan\n", "cache.default_ttl: must be a duration"),
    "zero-sweep-interval": (
        "cache:\n  sweep_interval: 0\n",
        "cache.sweep_interval: must be a positive duration, got 0",
    ),
    "store-timeout-too-long": (
        "persistence:\n  timeout: 10m\n",
        "persistence.timeout: must be at most 5m, got '10m'",
    ),
    "bad-size": (
        "limits:\n  max_value_size: 1 megabyte\n",
        "limits.max_value_size: must be a size (bytes or e.g. 64KiB, 1MiB, 2GiB), got '1 megabyte'",
    ),
    "ambiguous-size": (
        "limits:\n  max_value_size: 1MB\n",
        'limits.max_value_size: "1MB" is ambiguous: redis.conf reads it as 1048576 bytes, '
        "SI (and earlier sessiond) as 1000000; write 1MiB or 1000000",
    ),
    "negative-size": ("cache:\n  max_memory: -1\n", "cache.max_memory: must be a non-negative"),
    "zero-positive-size": (
        "limits:\n  max_request_size: 0\n",
        "limits.max_request_size: must be a positive size, got 0",
    ),
    "bad-choice": (
        "persistence:\n  backend: redis\n",
        "persistence.backend: must be one of sqlite, postgresql, none, got 'redis'",
    ),
    "bad-bool": ("cache:\n  sliding: maybe\n", "cache.sliding: must be true or false, got 'maybe'"),
    "bad-mode": ("socket:\n  mode: rw-rw----\n", "socket.mode: must be an octal permission"),
    "bad-listen": ("metrics:\n  listen: 9477\n", "metrics.listen: must be host:port"),
    "bad-port": ("metrics:\n  listen: 127.0.0.1:99999\n", "metrics.listen: must be host:port"),
    "padded-port": ("metrics:\n  listen: 127.0.0.1:0065536\n", "metrics.listen: must be host:port"),
    "empty-password": ("security:\n  password: ''\n", "security.password: must be a non-empty"),
    "bad-uids": ("security:\n  allowed_uids: [root]\n", "security.allowed_uids: must be a list"),
    "unknown-command": (
        "security:\n  disabled_commands: [FLUSHALL, FLUSHEVERYTHING]\n",
        "security.disabled_commands: 'FLUSHEVERYTHING' is not a command sessiond has",
    ),
    "unknown-subcommand": (
        "security:\n  disabled_commands: [config|rewrite]\n",
        "security.disabled_commands: 'config|rewrite' is not a subcommand sessiond has",
    ),
    "login-command": (
        "security:\n  disabled_commands: [hello]\n",
        "security.disabled_commands: 'hello' cannot be disabled: clients need it to log in",
    ),
    "commands-not-a-list": (
        "security:\n  disabled_commands: FLUSHALL\n",
        "security.disabled_commands: must be a list of command names",
    ),
    "null-path": ("socket:\n  path:\n", "socket.path: must be a non-empty path, got None"),
    "value-over-request": (
        "limits:\n  max_value_size: 2MiB\n  max_request_size: 1MiB\n",
        "limits.max_value_size: must not exceed limits.max_request_size",
    ),
}


@pytest.mark.parametrize("text,message", BAD.values(), ids=BAD.keys())
def test_bad_value_is_reported_with_its_key(tmp_path: Path, text: str, message: str) -> None:
    lines = problems(check(tmp_path, text))
    assert len(lines) == 1, lines
    assert message in lines[0], lines


def test_all_problems_are_reported_at_once(tmp_path: Path) -> None:
    lines = problems(
        check(
            tmp_path,
            """
cache:
  max_sessions: -5
  default_ttl: soon
  colour: blue
limits:
  max_clients: 0
  max_value_size: huge
bogus:
  x: 1
logging:
  level: loud
""",
        )
    )
    assert lines == [
        "bogus: unknown section (known: socket, cache, persistence, metrics, logging, limits, "
        "slowlog, latency, scripting, security, pubsub)",
        "cache.max_sessions: must be a positive integer, got -5",
        "cache.default_ttl: must be a duration (seconds or e.g. 500ms, 30s, 15m, 1h, 7d), "
        "got 'soon'",
        "cache.colour: unknown key (known: max_sessions, max_memory, default_ttl, sliding, "
        "sweep_interval)",
        "logging.level: must be one of debug, info, warning, error, got 'loud'",
        "limits.max_clients: must be a positive integer, got 0",
        "limits.max_value_size: must be a size (bytes or e.g. 64KiB, 1MiB, 2GiB), got 'huge'",
    ]


@pytest.mark.parametrize(
    "text,where",
    [
        ("cache:\n  max_sessions: 5\n   bad indent: x\n", "line 3"),
        ("cache: [unclosed\n", "line 2"),
        ("a: b\n\tc: d\n", "line 2"),
        ("cache:\n  max_sessions: 5\n  max_sessions: *missing\n", "line 3"),
    ],
)
def test_invalid_yaml_names_the_line(tmp_path: Path, text: str, where: str) -> None:
    lines = problems(check(tmp_path, text))
    assert len(lines) == 1
    assert lines[0].startswith(f"{tmp_path / 'sessiond.yaml'}: invalid YAML at {where}, column ")


@pytest.mark.parametrize(
    "text,line,key",
    [
        ("cache:\n  max_sessions: 5\ncache:\n  max_sessions: 6\n", 3, "cache"),
        ("cache:\n  max_sessions: 5\n  default_ttl: 1h\n  max_sessions: 6\n", 4, "max_sessions"),
    ],
)
def test_a_key_written_twice_is_refused(tmp_path: Path, text: str, line: int, key: str) -> None:
    """PyYAML keeps the last of two equal keys without a word: a second
    ``cache:`` section appended by a config manager would silently drop the
    first. Refused, with both lines."""
    (problem,) = problems(check(tmp_path, text))
    assert problem.startswith(f"{tmp_path / 'sessiond.yaml'}: invalid YAML at line {line}, ")
    assert f"duplicate key {key!r} (first at line {1 if key == 'cache' else 2})" in problem


def test_a_merge_may_still_be_overridden(tmp_path: Path) -> None:
    text = "x-base: &base\n  max_sessions: 5\ncache:\n  <<: *base\n  max_sessions: 7\n"
    proc = check(tmp_path, text)
    # x-base is an unknown section (refused on its own); the merge itself is fine.
    assert "duplicate key" not in proc.stdout + proc.stderr


def test_python_tags_are_refused(tmp_path: Path) -> None:
    lines = problems(check(tmp_path, "cache: !!python/object/apply:os.system ['true']\n"))
    assert "invalid YAML" in lines[0]


def test_unreadable_files(tmp_path: Path) -> None:
    missing = sessiond("check-config", "--config", str(tmp_path / "nope.yaml"))
    assert problems(missing) == [
        f"{tmp_path / 'nope.yaml'}: cannot read config: No such file or directory"
    ]
    directory = sessiond("check-config", "--config", str(tmp_path))
    assert "cannot read config" in problems(directory)[0]
    lines = problems(check(tmp_path, b"cache:\n  max_sessions: 5 # caf\xe9\n"))
    assert lines == [f"{tmp_path / 'sessiond.yaml'}: cannot read config: not UTF-8 (byte 30)"]


def test_alias_bomb_is_refused(tmp_path: Path) -> None:
    """PyYAML shares the nodes an alias names, so the file is cheap to parse; but
    the error message's repr of max_sessions used to expand all 9**9 strings
    (44 s, 2.9 GB, a 722 MB line). The expanded size is now limited."""
    text = alias_bomb()
    assert len(text) < 1024
    (line,) = problems(check(tmp_path, text))
    assert line.startswith(f"{tmp_path / 'sessiond.yaml'}: invalid YAML at line ")
    assert "more than 10000 values once aliases are expanded" in line


def test_aliases_within_the_limit_still_work(tmp_path: Path) -> None:
    proc = check(tmp_path, "security:\n  allowed_uids: &ids [1000, 1001]\n  allowed_gids: *ids\n")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["security"]["allowed_gids"] == [1000, 1001]


def test_recursive_alias_is_refused(tmp_path: Path) -> None:
    (line,) = problems(check(tmp_path, "cache: &a {max_sessions: *a}\n"))
    assert line.endswith("invalid YAML at line 1, column 26: found a recursive alias")


def test_file_over_the_size_cap_is_refused_unread(tmp_path: Path) -> None:
    text = ("# " + "x" * 97 + "\n") * 100_000  # 10 MB of comments: valid YAML
    (line,) = problems(check(tmp_path, text))
    assert line == (
        f"{tmp_path / 'sessiond.yaml'}: config file too large (10000000 bytes; "
        "the limit is 64 KiB, a config is a few KB)"
    )


def test_a_file_at_the_size_cap_is_read(tmp_path: Path) -> None:
    body = "cache:\n  max_sessions: 7\n"
    text = body + "#" * (64 * 1024 - len(body) - 1) + "\n"
    assert len(text) == 64 * 1024
    proc = check(tmp_path, text)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize(
    "text,expected",
    [
        ("cache: " + "[" * 5000 + "\n", "invalid YAML at line 1, column 39: nested deeper than 32"),
        ("cache:\n  max_sessions: " + "9" * 5000 + "\n", "column 17: integer too large"),
        ("limits:\n  max_value_size: " + "9" * 400 + "k\n", "limits.max_value_size: must be"),
        ("cache:\n  default_ttl: " + "9" * 400 + "s\n", "cache.default_ttl: must be"),
        ("metrics:\n  listen: '127.0.0.1:\u00b2'\n", "metrics.listen: must be host:port"),
        ("metrics:\n  listen: 127.0.0.1:" + "9" * 5000 + "\n", "metrics.listen: must be"),
    ],
    ids=[
        "deep",
        "huge-int",
        "huge-size",
        "huge-duration",
        "superscript-port",
        "long-port",
    ],
)
def test_values_that_used_to_raise_are_reported(tmp_path: Path, text: str, expected: str) -> None:
    (line,) = problems(check(tmp_path, text))
    assert expected in line


def test_error_messages_are_bounded(tmp_path: Path) -> None:
    long = "y" * 30_000
    key = "k" * 1000  # YAML's longest plain key
    lines = problems(check(tmp_path, f"cache:\n  max_sessions: '{long}'\n  {key}: 1\n"))
    assert len(lines) == 2
    assert all(len(line) < 200 for line in lines), [len(line) for line in lines]
    assert lines[0].startswith("cache.max_sessions: must be a positive integer, got 'yyy")
    assert lines[1].startswith("cache.'kkk")
    # One line per problem, but not thousands of them.
    many = "".join(f"  k{i}: 1\n" for i in range(3000))
    lines = problems(check(tmp_path, "cache:\n" + many))
    assert len(lines) == 21
    assert lines[0].startswith("cache.k0: unknown key")
    assert lines[-1] == "... and 2980 more problems"


def test_files_that_are_not_regular_files(tmp_path: Path) -> None:
    loop = tmp_path / "loop.yaml"
    loop.symlink_to("loop.yaml")
    assert problems(sessiond("check-config", "--config", str(loop))) == [
        f"{loop}: cannot read config: Too many levels of symbolic links"
    ]
    # Opening a FIFO for reading would wait for a writer: refused, not read.
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    assert problems(sessiond("check-config", "--config", str(fifo))) == [
        f"{fifo}: cannot read config: not a regular file"
    ]


@pytest.mark.parametrize("kind", ["alias-bomb", "symlink-loop", "too-large"])
def test_run_refuses_the_same_files(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "bad.yaml"
    if kind == "alias-bomb":
        path.write_text(alias_bomb())
    elif kind == "symlink-loop":
        path.symlink_to("bad.yaml")
    else:  # valid but for its size; paths of its own should it be started
        path.write_text(
            "socket: {path: s.sock}\npersistence: {backend: none}\nmetrics: {enabled: false}\n"
            + "#" * 100_000
        )
    proc = sessiond("run", "--config", str(path), cwd=tmp_path)
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert '"event": "bad_config"' in output
    assert len(output) < 2000


@pytest.mark.parametrize(
    "written,mode",
    [
        ('"0660"', "0660"),
        ("0660", "0660"),  # PyYAML reads this as octal 432
        ("660", "0660"),  # ... and this as decimal 660
        ("0600", "0600"),
        ("600", "0600"),
        ("400", "0400"),
        ("0400", "0400"),
        ('"640"', "0640"),
    ],
)
def test_socket_mode_written_any_usual_way(tmp_path: Path, written: str, mode: str) -> None:
    proc = check(tmp_path, f"socket:\n  mode: {written}\n")
    assert proc.returncode == 0, proc.stderr
    assert yaml.safe_load(proc.stdout)["socket"]["mode"] == mode


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path) -> None:
    conf = tmp_path / "etc"
    conf.mkdir()
    (conf / "s.yaml").write_text("socket:\n  path: ../run/x.sock\npersistence:\n  path: db\n")
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    proc = sessiond("check-config", "--config", str(conf / "s.yaml"), cwd=elsewhere)
    assert proc.returncode == 0, proc.stderr
    effective = yaml.safe_load(proc.stdout)
    assert effective["socket"]["path"] == str(tmp_path / "run" / "x.sock")
    assert effective["persistence"]["path"] == str(conf / "db")


def test_default_config_location(tmp_path: Path) -> None:
    proc = sessiond("check-config", cwd=tmp_path)
    assert proc.returncode == 0
    if not Path("/etc/sessiond/sessiond.yaml").exists():
        assert proc.stdout.startswith("# effective config from built-in defaults")
    (tmp_path / "config").mkdir()
    (tmp_path / "config" / "sessiond.yaml").write_text("cache:\n  max_sessions: 42\n")
    proc = sessiond("check-config", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"# effective config from {tmp_path / 'config'}")
    assert yaml.safe_load(proc.stdout)["cache"]["max_sessions"] == 42


# --------------------------------------------------------- run / --version


@pytest.mark.parametrize(
    "text,expected",
    [
        ("cache:\n  max_sessions: -5\n", "cache.max_sessions: must be a positive integer, got -5"),
        ("cache: [unclosed\n", "invalid YAML at line 2"),
        ("nonsense: 1\n", "nonsense: unknown section"),
    ],
)
def test_run_with_a_bad_config_exits_1(tmp_path: Path, text: str, expected: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    proc = sessiond("run", "--config", str(path), cwd=tmp_path)
    assert proc.returncode == 1
    output = proc.stdout + proc.stderr
    assert "Traceback" not in output
    assert expected in output
    assert not list(tmp_path.glob("*.sock"))


def test_run_with_a_missing_config_exits_1(tmp_path: Path) -> None:
    proc = sessiond("run", "--config", str(tmp_path / "nope.yaml"), cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert "cannot read config" in proc.stdout + proc.stderr


def _output_until_exit(proc: subprocess.Popen[bytes], resend: Callable[[str], bool]) -> str:
    """Everything ``proc`` writes until it exits; after each read, SIGINT
    again once if ``resend(output so far)`` says so."""
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    chunks: list[bytes] = []
    resent = False
    deadline = time.monotonic() + 60  # a safety net against a hang, not a measurement
    while time.monotonic() < deadline:
        readable, _, _ = select.select([fd], [], [], 1.0)
        if readable:
            chunk = os.read(fd, 65536)
            if not chunk:
                proc.wait(30)
                return b"".join(chunks).decode(errors="replace")
            chunks.append(chunk)
            if not resent and resend(b"".join(chunks).decode(errors="replace")):
                proc.send_signal(signal.SIGINT)
                resent = True
    proc.kill()
    proc.wait()
    raise AssertionError(f"sessiond never exited:\n{b''.join(chunks).decode(errors='replace')}")


def _lost_before_main(output: str) -> bool:
    """The interrupt landed in the import machinery before sessiond's main()
    ran (a weakref callback: CPython prints it as ignored and goes on), and the
    daemon started anyway: a second Ctrl-C is what a user would press."""
    return (
        "Exception ignored" in output
        and "KeyboardInterrupt" in output
        and ('"event": "started"' in output)
    )


def _sigint_default() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_at_any_moment_of_start_up_is_not_a_crash(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(
        "socket:\n  path: s.sock\npersistence:\n  backend: none\nmetrics:\n  enabled: false\n"
    )
    for delay in (0.02, 0.1, 0.2, 0.4):
        proc = subprocess.Popen(
            [sys.executable, "-m", "sessiond", "run", "--config", "c.yaml"],
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            # As from a terminal: a test run started in the background (`&` in a
            # script) ignores SIGINT, and Python keeps an ignored SIGINT ignored
            # until sessiond's main() takes it, so an early one would be lost.
            preexec_fn=_sigint_default,
        )
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        output = _output_until_exit(proc, _lost_before_main)
        # Once sessiond's main() runs, no traceback: 130 if interrupted before the
        # daemon handles SIGINT itself, else a clean 0. (Before main(), while the
        # interpreter itself starts, Python's own KeyboardInterrupt is all there is,
        # and before Python installs its SIGINT handler the signal kills it silently.)
        assert not re.search(r'sessiond/cli\.py", line \d+, in main', output), output
        if proc.returncode == -signal.SIGINT and output == "":
            continue
        if "Traceback" not in output and "Fatal Python error" not in output:
            assert proc.returncode in (0, 130), output


def test_version() -> None:
    proc = sessiond("--version")
    assert proc.returncode == 0
    assert (
        proc.stdout.strip() == f"sessiond {__version__} (redis {REDIS_COMPAT_VERSION} compatible)"
    )


def test_no_command_prints_help_and_fails() -> None:
    proc = sessiond()
    assert proc.returncode == 2
    assert "check-config" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_unknown_command_or_option() -> None:
    for args in (("frobnicate",), ("run", "--bogus")):
        proc = sessiond(*args)
        assert proc.returncode == 2
        assert "Traceback" not in proc.stderr


def test_usage_errors_exit_2_with_usage(tmp_path: Path) -> None:
    for args in ((), ("frobnicate",), ("run", "--bogus"), ("check-config", "--config")):
        proc = sessiond(*args, cwd=tmp_path)
        assert proc.returncode == 2, args
        assert proc.stderr.startswith("usage: sessiond"), args
        assert "Traceback" not in proc.stderr


def test_check_config_comments_every_key_with_its_description(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text("cache:\n  max_sessions: 7\n")
    proc = sessiond("check-config", "--config", "c.yaml", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stdout.splitlines() if line.startswith("  ")]
    assert len(lines) == sum(len(section) for section in yaml.safe_load(proc.stdout).values())
    for line in lines:
        assert re.fullmatch(r"  \w+: .+? +# \S.*", line), line
    assert re.search(r"^  max_sessions: 7 +# LRU bound", proc.stdout, re.M)
    assert re.search(r"^  path: .* # \(restart\) ", proc.stdout, re.M)


# ------------------------------------------------------------ value parsers


@pytest.mark.parametrize(
    "value,seconds",
    [
        (0, 0.0),
        (30, 30.0),
        (1.5, 1.5),
        ("500ms", 0.5),
        ("30s", 30.0),
        ("15m", 900.0),
        ("1h", 3600.0),
        ("7d", 604800.0),
        ("1.5h", 5400.0),
        ("10", 10.0),
        (" 2 s ", 2.0),
        ("100MS", 0.1),
    ],
)
def test_parse_duration(value: Any, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize(
    "value",
    [-1, -0.5, "-1s", "1w", "1 fortnight", "", "s", "1h30m", True, None, [1], float("inf"),
     float("nan"), "inf", ".5s"],
)  # fmt: skip
def test_parse_duration_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


@pytest.mark.parametrize(
    "value,size",
    [
        (0, 0),
        (1024, 1024),
        ("1024", 1024),
        ("64KiB", 65536),
        ("1MiB", 1048576),
        ("2GiB", 2 * 1024**3),
        ("1mib", 1048576),
        ("1.5KiB", 1536),
        ("10 b", 10),
        ("10B", 10),
    ],
)
def test_parse_size(value: Any, size: int) -> None:
    assert parse_size(value) == size


@pytest.mark.parametrize("value", [-1, "-1KiB", "1TiB", "lots", "", True, None, 1.5, "1 KiB extra"])
def test_parse_size_rejects(value: Any) -> None:
    with pytest.raises(ValueError):
        parse_size(value)


@given(st.integers(0, 10**7), st.sampled_from(["ms", "s", "m", "h", "d", ""]))
def test_parse_duration_units(n: int, unit: str) -> None:
    factor = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "": 1}[unit]
    assert parse_duration(f"{n}{unit}") == pytest.approx(n * factor)


@given(st.integers(0, 10**6), st.sampled_from(["", "b", "B", "KiB", "MiB", "GiB", "kib"]))
def test_parse_size_units(n: int, unit: str) -> None:
    factor = {"": 1, "b": 1, "B": 1, "KiB": 1024, "MiB": 1024**2, "GiB": 1024**3,
              "kib": 1024}[unit]  # fmt: skip
    assert parse_size(f"{n}{unit}") == n * factor


@pytest.mark.parametrize(
    "value,message",
    [
        (
            "1MB",
            '"1MB" is ambiguous: redis.conf reads it as 1048576 bytes, SI (and earlier '
            "sessiond) as 1000000; write 1MiB or 1000000",
        ),
        (
            "1m",
            '"1m" is ambiguous: redis.conf reads it as 1000000 bytes, binary (systemd, earlier '
            "sessiond) as 1048576; write 1000000 or 1MiB",
        ),
        (
            "64kb",
            '"64kb" is ambiguous: redis.conf reads it as 65536 bytes, SI (and earlier '
            "sessiond) as 64000; write 64KiB or 64000",
        ),
        (
            "2G",
            '"2G" is ambiguous: redis.conf reads it as 2000000000 bytes, binary (systemd, '
            "earlier sessiond) as 2147483648; write 2000000000 or 2GiB",
        ),
    ],
)
def test_parse_size_rejects_ambiguous_units_naming_both_readings(value: str, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        parse_size(value)
    assert str(exc.value) == message


@given(
    st.integers(0, 10**6),
    st.sampled_from(["k", "kb", "m", "mb", "g", "gb"]),
    st.lists(st.booleans(), min_size=2, max_size=2),
)
def test_parse_size_rejects_every_ambiguous_unit_in_any_case(
    n: int, unit: str, upper: list[bool]
) -> None:
    spelled = "".join(c.upper() if up else c for c, up in zip(unit, upper, strict=False))
    with pytest.raises(ValueError, match=r"is ambiguous: redis\.conf reads it as"):
        parse_size(f"{n}{spelled}")


def test_load_config_raises_config_error_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("cache:\n  max_sessions: 0\n  sliding: 1\n")
    with pytest.raises(ConfigError) as exc:
        load_config(path)
    assert exc.value.problems == [
        "cache.max_sessions: must be a positive integer, got 0",
        "cache.sliding: must be true or false, got 1",
    ]
    assert exc.value.source == str(path)


def test_disabled_commands_are_read_in_one_spelling() -> None:
    """Any case, ACL's ``container|sub`` for a subcommand, a repeat dropped."""
    security = parse_config(
        {"security": {"disabled_commands": ["flushall", "FLUSHALL", "Config|Set", " shutdown "]}},
        Path("."),
    ).security
    assert security.disabled_commands == ("FLUSHALL", "CONFIG|SET", "SHUTDOWN")


def test_keyspace_events_are_redis_letters() -> None:
    assert parse_config({"pubsub": {"notify_keyspace_events": "KEA"}}, Path(".")).pubsub == (
        PubSubConfig("KEA")
    )
    assert parse_config({"pubsub": {"notify_keyspace_events": None}}, Path(".")).pubsub == (
        PubSubConfig("")
    )


def test_a_keyspace_event_letter_redis_does_not_know_is_refused(tmp_path: Path) -> None:
    assert problems(check(tmp_path, "pubsub:\n  notify_keyspace_events: KEQ\n")) == [
        "pubsub.notify_keyspace_events: must be Redis' notify-keyspace-events letters "
        "(any of Ag$lshzxeKEtmdn, \"\" for none), got 'KEQ': 'Q' is not one"
    ]
    assert problems(check(tmp_path, "pubsub:\n  notify_keyspace_events: 5\n")) == [
        "pubsub.notify_keyspace_events: must be Redis' notify-keyspace-events letters "
        '(any of Ag$lshzxeKEtmdn, "" for none), got 5: not a string'
    ]
