"""The engine suite runs every test against every engine; add an engine to ENGINES."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from blixard.store.crypto import Cipher
from blixard.store.protocol import Store
from blixard.store.sqlite import SQLiteStore

StoreFactory = Callable[[], Store]


def _sqlite_factory(tmp_path: Path) -> StoreFactory:
    return lambda: SQLiteStore(tmp_path / "engine.db")


def _sqlite_encrypted_factory(tmp_path: Path) -> StoreFactory:
    """The same engine with encryption at rest on: the contract must not change."""
    cipher = Cipher(b"k" * 32)
    return lambda: SQLiteStore(tmp_path / "engine.db", cipher=cipher)


ENGINES = {"sqlite": _sqlite_factory, "sqlite-encrypted": _sqlite_encrypted_factory}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=sorted(ENGINES))
def store_factory(request: pytest.FixtureRequest, tmp_path: Path) -> StoreFactory:
    """Builds unopened stores that all share the same underlying data (for reopen tests)."""
    return ENGINES[request.param](tmp_path)


@pytest.fixture
async def store(store_factory: StoreFactory) -> AsyncIterator[Store]:
    opened = store_factory()
    await opened.open()
    try:
        yield opened
    finally:
        await opened.close()
