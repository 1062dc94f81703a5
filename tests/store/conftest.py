"""The engine suite runs every test against every engine; add an engine to ENGINES."""

from __future__ import annotations

import hashlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from blixard.store.crypto import Cipher
from blixard.store.protocol import Store
from blixard.store.sqlite import SQLiteStore
from tests.etcd_cluster import shared_cluster_endpoints as etcd_endpoints

StoreFactory = Callable[[], Store]


def _sqlite_factory(tmp_path: Path) -> StoreFactory:
    return lambda: SQLiteStore(tmp_path / "engine.db")


def _sqlite_encrypted_factory(tmp_path: Path) -> StoreFactory:
    """The same engine with encryption at rest on: the contract must not change."""
    cipher = Cipher(b"k" * 32)
    return lambda: SQLiteStore(tmp_path / "engine.db", cipher=cipher)


def _etcd_prefix(tmp_path: Path) -> str:
    """A key prefix unique to the test (and to each store a test builds)."""
    digest = hashlib.sha256(f"{tmp_path}:{os.getpid()}".encode()).hexdigest()[:16]
    return f"/blixard-test/{digest}/"


def _etcd_factory(tmp_path: Path) -> StoreFactory:
    from blixard.store.etcd import EtcdStore

    endpoints, prefix = etcd_endpoints(), _etcd_prefix(tmp_path)
    return lambda: EtcdStore(endpoints, prefix)


def _etcd_encrypted_factory(tmp_path: Path) -> StoreFactory:
    from blixard.store.etcd import EtcdStore

    cipher = Cipher(b"k" * 32)
    endpoints, prefix = etcd_endpoints(), _etcd_prefix(tmp_path)
    return lambda: EtcdStore(endpoints, prefix, cipher=cipher)


ENGINES = {
    "sqlite": _sqlite_factory,
    "sqlite-encrypted": _sqlite_encrypted_factory,
    "etcd": _etcd_factory,
    "etcd-encrypted": _etcd_encrypted_factory,
}


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
