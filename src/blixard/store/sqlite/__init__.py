"""The embedded SQLite engine: one file, one writer thread with group commit.

store.py is the engine; snapshot.py, encryption.py and rows.py are its helpers and are not
used from outside this package."""

from blixard.store.errors import StoreInUse
from blixard.store.sqlite.store import SQLiteStore

__all__ = ["SQLiteStore", "StoreInUse"]
