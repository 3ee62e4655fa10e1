"""Stands in for systemd's service manager in the restart tests: PID 1 keeps a
socket unit's listening socket and restarts the service behind it; this does
the same for one command, without PID 1 systemd.

    systemd-socket-activate -l PATH -- python socket_service.py -- COMMAND...

- The socket comes in LISTEN_FDS (descriptor 3) and stays open here for this
  process's whole life, as systemd keeps a socket unit's socket.
- COMMAND is started with it passed on (``LISTEN_FDS=1``, ``LISTEN_PID`` its
  pid, through with_listen_fds.py).
- SIGHUP restarts it as ``systemctl restart`` does: SIGTERM, wait for the
  exit, start again. SIGTERM stops it and exits 0.

Each start and exit is printed as a JSON line (``service_started``,
``service_exited`` with the exit status).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

WITH_LISTEN_FDS = Path(__file__).with_name("with_listen_fds.py")
SIGNALS = {signal.SIGHUP, signal.SIGTERM, signal.SIGCHLD}


def say(event: str, **fields: object) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def unblock() -> None:
    signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)


def start(command: list[str]) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(WITH_LISTEN_FDS), "3", "sessiond", "--", *command],
        pass_fds=(3,),
        preexec_fn=unblock,  # the mask is inherited; this process is single-threaded
    )
    say("service_started", pid=proc.pid)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    say("service_exited", pid=proc.pid, status=proc.wait())


def main(argv: list[str]) -> int:
    if (
        os.environ.pop("LISTEN_PID", None) != str(os.getpid())
        or os.environ.pop("LISTEN_FDS", None) != "1"
    ):
        print("socket_service.py: run me under systemd-socket-activate", file=sys.stderr)
        return 2
    os.environ.pop("LISTEN_FDNAMES", None)
    command = argv[argv.index("--") + 1 :]
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    proc = start(command)
    while True:
        sig = signal.sigwaitinfo(SIGNALS).si_signo
        if sig == signal.SIGHUP:
            stop(proc)
            proc = start(command)
        elif sig == signal.SIGTERM:
            stop(proc)
            return 0
        elif proc.poll() is not None:  # SIGCHLD: it exited by itself
            say("service_exited", pid=proc.pid, status=proc.returncode)
            return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
