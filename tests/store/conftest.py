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


def sqlite_builder(tmp_path: Path) -> Callable[[Cipher | None], Store]:
    """Builds SQLite stores on one file, with the given cipher (None: unencrypted)."""
    return lambda cipher: SQLiteStore(tmp_path / "engine.db", cipher=cipher)


def _etcd_prefix(tmp_path: Path) -> str:
    """A key prefix unique to the test (and to each store a test builds)."""
    digest = hashlib.sha256(f"{tmp_path}:{os.getpid()}".encode()).hexdigest()[:16]
    return f"/blixard-test/{digest}/"


def etcd_builder(tmp_path: Path) -> Callable[[Cipher | None], Store]:
    """Builds etcd stores on one prefix of the shared cluster, with the given cipher."""
    from blixard.store.etcd import EtcdStore

    endpoints, prefix = etcd_endpoints(), _etcd_prefix(tmp_path)
    return lambda cipher: EtcdStore(endpoints, prefix, cipher=cipher)


#: Engines by name, each building stores with a given cipher on the test's own data.
BUILDERS = {"sqlite": sqlite_builder, "etcd": etcd_builder}


def _factory(
    build: Callable[[Path], Callable[[Cipher | None], Store]], cipher: Cipher | None
) -> Callable[[Path], StoreFactory]:
    def at(tmp_path: Path) -> StoreFactory:
        stores = build(tmp_path)
        return lambda: stores(cipher)

    return at


#: Every engine plain and with encryption at rest on: the contract must not change.
ENGINES = {
    **{name: _factory(build, None) for name, build in BUILDERS.items()},
    **{f"{name}-encrypted": _factory(build, Cipher(b"k" * 32)) for name, build in BUILDERS.items()},
}


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
