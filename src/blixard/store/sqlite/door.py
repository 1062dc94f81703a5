"""What the SQLite engine's helpers (snapshot.py) may use of it: the door.

As Datasette's `execute_fn` / `execute_write_fn`: a helper hands the engine a function of a
connection and never touches its threads, connections or indexes. The helpers take a
`SQLiteDoor`, not the engine class; SQLiteStore satisfies it (mypy checks it where the
engine hands itself to a helper)."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol, TypeVar

from blixard.domain.models import VersionMeta
from blixard.domain.runs import Run
from blixard.store.codec import VersionCodec

T = TypeVar("T")


class SQLiteDoor(Protocol):
    @property
    def engine(self) -> str: ...

    @property
    def path(self) -> Path: ...

    @property
    def codec(self) -> VersionCodec: ...

    @property
    def is_open(self) -> bool: ...

    @property
    def exports(self) -> set[threading.Event]:
        """Stop signals of the exports in progress: close() sets them."""
        ...

    async def execute_fn(self, function: Callable[[sqlite3.Connection], T]) -> T:
        """Run `function(conn)` on a reader thread's connection (read-only)."""
        ...

    def execute_write_fn(
        self,
        function: Callable[[sqlite3.Connection], T],
        on_commit: Callable[[T], None] | None = None,
    ) -> asyncio.Future[T]:
        """Queue `function(conn)` for the one writer thread, inside its transaction (group
        commit: several functions may share one COMMIT); `on_commit(result)` runs after it."""
        ...

    def open_read_connection(self) -> sqlite3.Connection:
        """A new read-only connection of the caller's own, for a read transaction longer
        than a reader thread should hold (an export); the caller closes it."""
        ...

    async def reload_index(self) -> None:
        """Read the in-memory workspace index again (after an import wrote behind it)."""
        ...

    def seal_run(self, run_id: str, kind: str, payload: bytes) -> bytes: ...

    def open_run(self, run_id: str, kind: str, payload: bytes) -> bytes: ...

    def run_from_row(self, row: tuple[Any, ...]) -> Run: ...

    def seal_lock(self, name: str, payload: bytes) -> bytes: ...

    def open_lock(self, name: str, payload: bytes) -> bytes: ...

    def seal_who(self, name: str, who: str | None) -> bytes | None: ...

    def version_meta(self, name: str, row: tuple[Any, ...] | sqlite3.Row) -> VersionMeta: ...
