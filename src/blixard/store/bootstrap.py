"""The one place a store is built from settings: the server, preflight, backup, restore,
migrate and the offline keys and encryption commands all call `build_store`.

A server gets its read cache and etcd compaction; a command-line tool (`serving=False`)
gets neither, so a one-off command never compacts a cluster or holds a large cache."""

from __future__ import annotations

from enum import Enum
from pathlib import Path

from blixard.config import Settings, database_path
from blixard.store import open_store_from_url
from blixard.store.codec import VersionCodec
from blixard.store.crypto import Cipher
from blixard.store.etcd import EtcdOptions
from blixard.store.protocol import Store


class Keys(Enum):
    """Which cipher a store is built with, when the caller does not pass one."""

    FROM_SETTINGS = "from settings"


def build_store(
    settings: Settings,
    *,
    url: str | None = None,
    cipher: Cipher | Keys | None = Keys.FROM_SETTINGS,
    serving: bool = True,
    readers: int | None = None,
    adopt_plaintext: bool = False,
    codec: VersionCodec | None = None,
) -> Store:
    """The (unopened) store the settings describe, or the one `url` names with the settings'
    connection options. Raises ValueError (KeyConfigError is one) for a bad URL or key.

    `readers` and `adopt_plaintext` are the SQLite engine's (a one-reader offline tool, an
    offline rotation that seals what was stored in plaintext); etcd refuses them. `codec`
    replaces the engine's default one (an import's, with a one-entry dictionary cache)."""
    resolved = url if url is not None else settings.resolved_storage_url
    keys = Cipher.from_settings(settings) if cipher is Keys.FROM_SETTINGS else cipher
    return open_store_from_url(
        resolved,
        cache_bytes=settings.cache_bytes if serving else 0,
        cipher=keys,
        etcd=EtcdOptions.from_settings(settings, compact=serving),
        readers=readers,
        adopt_plaintext=adopt_plaintext,
        codec=codec,
    )


def data_dir_url(data_dir: Path) -> str:
    """The storage URL of the embedded store in a data directory."""
    return f"sqlite:///{database_path(data_dir)}"
