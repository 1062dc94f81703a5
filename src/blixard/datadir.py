"""The data directory is private: 0700, and nothing in it readable by group or others.

It holds the database (state bodies, key hashes, the audit trail), its WAL and SHM files and
the runs' work directories (configurations, plan files). `blixard serve` sets the umask to
0077 so everything the server creates is private from the start, and tightens what an
earlier version, a restore or an operator left looser (`make_private`). The SQLite engine
also creates its files 0600 itself (`private_file`), so offline commands that build a
store (`keys create --data-dir`, `restore`) do not depend on the caller's umask.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
from pathlib import Path

PRIVATE_UMASK = 0o077
#: Permission bits nobody but the owner may hold on anything in the data directory.
_GROUP_AND_OTHERS = 0o077

log = logging.getLogger(__name__)


def _tighten(path: Path, st: os.stat_result) -> bool:
    if stat.S_IMODE(st.st_mode) & _GROUP_AND_OTHERS == 0:
        return False
    os.chmod(path, stat.S_IMODE(st.st_mode) & ~_GROUP_AND_OTHERS, follow_symlinks=False)
    return True


def make_private(root: Path) -> int:
    """Create `root` 0700 if missing, then take every group/other permission bit away from it
    and from every directory and file below it. Symbolic links are neither followed nor
    changed (what they point to is not the data directory's). Returns how many entries were
    tightened, and logs one line when there were any.
    """
    root.mkdir(mode=0o700, parents=True, exist_ok=True)
    tightened = 0
    pending = [root]
    while pending:
        path = pending.pop()
        try:
            st = os.lstat(path)
        except FileNotFoundError:  # removed meanwhile (e.g. a run's work directory)
            continue
        if stat.S_ISLNK(st.st_mode):
            continue
        tightened += _tighten(path, st)
        if stat.S_ISDIR(st.st_mode):
            pending.extend(path.iterdir())
    if tightened:
        log.warning(
            "data directory %s: removed group/other permissions from %d entries "
            "(it must be 0700 with every file 0600)",
            root,
            tightened,
        )
    return tightened


def private_file(path: Path) -> None:
    """Make sure `path` exists as a file only its owner can read or write (0600 when new),
    with its SQLite companions (-wal, -shm, -journal) tightened too when they exist.

    SQLite creates the WAL and SHM files with the database file's permissions, so creating
    the database 0600 before SQLite opens it keeps all three private whatever the umask.
    """
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    for candidate in (path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", "-journal"))):
        try:
            _tighten(candidate, os.lstat(candidate))
        except FileNotFoundError:
            continue
        except OSError as exc:  # e.g. another user's file opened read-only: not ours to change
            log.warning("cannot make %s private: %s", candidate, exc.strerror or exc)
