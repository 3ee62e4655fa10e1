"""Whether a store's files may have been removed, moved or replaced: one
``poll`` of an inotify descriptor per commit instead of a ``stat`` of each
file (two ``stat``\\ s were 14k of the 68k instructions a durable SET at
``-c 1`` cost the event loop, most of it the three times each builds as floats
and as nanoseconds).

The kernel queues an event before the ``unlink`` or ``rename`` that causes it
returns, so a commit that finds none knows that no name on the store's path
changed since the last look; one that finds some makes the exact check
(:meth:`.files.StoreFiles.check`), which tells our own changes (a new log
segment, one the compactor removed) from a removal. The first look always
finds one: the files were opened before the watch existed. watchfiles, the
watcher the config reload uses, reads its events on a thread of its own: it
could not say "nothing happened" at a given moment, which is the whole
question here.

Watched: the store's directory and each directory above it, both along the
configured path and along the path it resolves to (a symlink on the way may
be repointed), for names created, removed and renamed in them and for the
directory itself moved or removed; after each event the watches are laid
again along the path as it is then. Only on a local filesystem: inotify
does not hear what another machine does to a network or shared one, so
there every commit checks with ``stat`` (:class:`DirectoryWatch` refuses).
What no local event announces either (a mount put over the directory) is
left to the full check every second."""

from __future__ import annotations

import ctypes
import errno
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
# statfs(2)'s f_type of the filesystems whose every change is made through this
# kernel (<linux/magic.h>): ext2/3/4, XFS, Btrfs, tmpfs, ramfs, F2FS, ZFS,
# overlay (a container's root), bcachefs.
_LOCAL_FILESYSTEMS = frozenset(
    {
        0xEF53,
        0x58465342,
        0x9123683E,
        0x01021994,
        0x858458F6,
        0xF2F52010,
        0x2FC12FC1,
        0x794C7630,
        0xCA451A4E,
    }
)


class DirectoryWatch:
    """An inotify descriptor watching ``directory`` and the directories above
    it. :meth:`fired`: whether anything happened to a name in them since the
    last call (the first call: yes). Raises ``OSError`` where inotify cannot
    be had or cannot be trusted (no more instances or watches for this user,
    a directory it may not read, a filesystem other machines change)."""

    def __init__(self, directory: Path) -> None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init, add, statfs = libc.inotify_init1, libc.inotify_add_watch, libc.statfs
        except (OSError, AttributeError) as exc:  # not Linux
            raise OSError(errno.ENOSYS, f"no inotify here: {exc}") from None
        kind = _filesystem(statfs, directory)
        if kind not in _LOCAL_FILESYSTEMS:
            raise OSError(
                errno.EOPNOTSUPP,
                f"{directory} is on a filesystem (type {kind:#x}) whose changes made "
                "elsewhere inotify does not report",
            )
        fd = int(init(os.O_NONBLOCK | os.O_CLOEXEC))
        if fd < 0:
            raise _failed("inotify_init1")
        self._fd = fd
        self._add = add
        self._directory = directory
        try:
            self._lay(strict=True)
        except BaseException:
            os.close(fd)
            raise
        self._poll = select.poll()
        self._poll.register(fd, select.POLLIN)
        self._first = True

    def _lay(self, *, strict: bool) -> None:
        """Watch every directory on the path as it is now (inotify keeps one
        watch per directory: laying one again only renews it). ``strict``: a
        directory that cannot be watched raises, else it is skipped (one that
        is gone: the caller's check says so)."""
        fd, add = self._fd, self._add
        for watched in _ancestors(self._directory):
            if int(add(fd, os.fsencode(watched), _MASK)) < 0 and strict:
                raise _failed(f"inotify_add_watch {watched}")

    def fired(self) -> bool:
        """Whether any event came since the last call (they are read and
        dropped: the caller checks the files themselves)."""
        if self._first:
            self._first = False
        elif not self._poll.poll(0):
            return False
        try:
            while os.read(self._fd, 65536):
                pass
        except BlockingIOError:
            pass
        # The path may lead through other directories now (one moved and a
        # symlink left in its place): watch those too.
        self._lay(strict=False)
        return True

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def _filesystem(statfs: ctypes._NamedFuncPointer, directory: Path) -> int:
    """``directory``'s filesystem type (statfs(2)'s ``f_type``, its first field)."""
    buf = ctypes.create_string_buffer(512)  # struct statfs is 120 bytes on x86-64
    if int(statfs(os.fsencode(directory), buf)) != 0:
        raise _failed(f"statfs {directory}")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


def _failed(call: str) -> OSError:
    """The error of the libc ``call`` that just failed (its errno)."""
    error = ctypes.get_errno()
    return OSError(error, f"{call}: {os.strerror(error)}")


def _ancestors(directory: Path) -> list[str]:
    """``directory`` and every directory above it, as given (made absolute)
    and as resolved, each once."""
    found: dict[str, None] = {}
    for start in (Path(os.path.abspath(directory)), directory.resolve()):
        for path in (start, *start.parents):
            found[str(path)] = None
    return list(found)
