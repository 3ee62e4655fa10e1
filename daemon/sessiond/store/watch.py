"""Whether a store's files may have been removed, moved or replaced: one
``poll`` of an inotify descriptor per commit instead of a ``stat`` of each
file (two ``stat``\\ s were 14k of the 68k instructions a durable SET at
``-c 1`` cost the event loop, most of it the three times each builds as floats
and as nanoseconds).

The kernel queues an event before the ``unlink`` or ``rename`` that causes it
returns, so a commit that finds none knows that no name on the store's path
changed since the last look; one that finds some makes the exact check
(:meth:`.files.StoreFiles.check`), which tells our own changes (a new log
segment, one the compactor removed) from a removal. watchfiles, the watcher
the config reload uses, reads its events on a thread of its own: it could not
say "nothing happened" at a given moment, which is the whole question here.

Watched: the store's directory and each directory above it, both along the
configured path and along the path it resolves to (a symlink on the way may
be repointed), for names created, removed and renamed in them and for the
directory itself moved or removed. Events this never sees (a bind mount put
over the directory, say) are left to the full check every second, as
before."""

from __future__ import annotations

import ctypes
import os
import select
from pathlib import Path

# <sys/inotify.h>
_IN_MOVED_FROM = 0x40
_IN_MOVED_TO = 0x80
_IN_CREATE = 0x100
_IN_DELETE = 0x200
_IN_DELETE_SELF = 0x400
_IN_MOVE_SELF = 0x800
_IN_ONLYDIR = 0x01000000
_MASK = (
    _IN_MOVED_FROM
    | _IN_MOVED_TO
    | _IN_CREATE
    | _IN_DELETE
    | _IN_DELETE_SELF
    | _IN_MOVE_SELF
    | _IN_ONLYDIR
)


class DirectoryWatch:
    """An inotify descriptor watching ``directory`` and the directories above
    it. :meth:`fired`: whether anything happened to a name in them since the
    last call. Raises ``OSError`` where inotify cannot be had (no more
    instances or watches for this user, a directory it may not read)."""

    def __init__(self, directory: Path) -> None:
        libc = ctypes.CDLL(None, use_errno=True)
        fd = int(libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            error = ctypes.get_errno()
            raise OSError(error, f"inotify_init1: {os.strerror(error)}")
        self._fd = fd
        try:
            for watched in _ancestors(directory):
                wd = int(libc.inotify_add_watch(fd, os.fsencode(watched), _MASK))
                if wd < 0:
                    error = ctypes.get_errno()
                    raise OSError(error, f"inotify_add_watch {watched}: {os.strerror(error)}")
        except BaseException:
            os.close(fd)
            raise
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)

    def fired(self) -> bool:
        """Whether any event came since the last call (they are read and
        dropped: the caller checks the files themselves)."""
        if not self._poll.poll(0):
            return False
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _ancestors(directory: Path) -> list[str]:
    """``directory`` and every directory above it, as given (made absolute)
    and as resolved, each once."""
    found: dict[str, None] = {}
    for start in (Path(os.path.abspath(directory)), directory.resolve()):
        for path in (start, *start.parents):
            found[str(path)] = None
    return list(found)
