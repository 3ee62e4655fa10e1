"""Run a command as a child subreaper, so that the processes it hands over to
(SIGUSR2: each daemon starts its successor and exits) stay descendants of this
one, and report how each of them ended:

    python reaper.py [--events FILE] -- COMMAND...

Each exit is a JSON line (``process_exited``, with ``pid`` and ``status``:
the exit code, or minus the signal), appended to FILE in one write, or
printed. It exits 0 once every descendant has exited. A file of its own
keeps the lines whole whatever the command's processes write to the output
they share with this one.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys

PR_SET_CHILD_SUBREAPER = 36


def main(argv: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        print(f"reaper.py: prctl: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 2
    split = argv.index("--")
    options, command = argv[1:split], argv[split + 1 :]
    out = 1
    if options[:1] == ["--events"]:
        out = os.open(options[1], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    _child = subprocess.Popen(command)  # reaped below, with the others
    while True:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            return 0
        exit_status = os.waitstatus_to_exitcode(status)
        line = json.dumps({"event": "process_exited", "pid": pid, "status": exit_status})
        os.write(out, line.encode() + b"\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv))
