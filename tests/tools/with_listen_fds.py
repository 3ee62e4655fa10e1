"""Run a command with descriptor FD passed to it as systemd passes sockets:

    python with_listen_fds.py FD [NAME] -- COMMAND...

FD becomes descriptor 3, ``LISTEN_FDS=1``, ``LISTEN_FDNAMES=NAME`` (when given)
and ``LISTEN_PID`` is this process's pid, which COMMAND keeps: this script
execs it. The caller passes FD with ``pass_fds``; it may be anything (a pipe,
a socket that does not listen), which is the point of some tests.
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> None:
    split = argv.index("--")
    fd, *name = argv[1:split]
    command = argv[split + 1 :]
    source = int(fd)
    if source != 3:
        os.dup2(source, 3)  # inheritable
        os.close(source)
    else:
        os.set_inheritable(3, True)
    os.environ["LISTEN_FDS"] = "1"
    os.environ["LISTEN_PID"] = str(os.getpid())
    if name:
        os.environ["LISTEN_FDNAMES"] = name[0]
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv)
