"""Why a store could not be opened: one base class, so callers catch `StoreError` (and the
domain's StorageUnavailable, which any store call may raise) instead of `Exception`.

Each message is one line an operator can act on, without secrets."""

from __future__ import annotations

from blixard.domain.errors import StorageUnavailable


class StoreError(Exception):
    """The store cannot be opened or served as configured."""


class StoreInUse(StoreError, RuntimeError):
    """Another process already serves this database file."""


class StoreCannotConnect(StoreError, StorageUnavailable):
    """The store's cluster or files cannot be reached (still a StorageUnavailable, as before)."""


class StoreCorrupt(StoreError):
    """The database file is not a Blixard database SQLite can read."""
