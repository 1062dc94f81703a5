"""Storage engines behind one interface (protocol.Store), picked by URL scheme; settings go
through bootstrap.build_store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import urlparse

from blixard.store.codec import VersionCodec
from blixard.store.crypto import Cipher
from blixard.store.protocol import Store

if TYPE_CHECKING:
    from blixard.store.etcd import EtcdOptions

__all__ = ["Cipher", "Store", "open_store_from_url"]


def open_store_from_url(
    url: str,
    *,
    cache_bytes: int = 256 * 1024 * 1024,
    cipher: Cipher | None = None,
    etcd: EtcdOptions | None = None,
    readers: int | None = None,
    adopt_plaintext: bool = False,
    codec: VersionCodec | None = None,
) -> Store:
    """Build (not yet open) the engine a storage URL names; `cipher` turns on encryption,
    `etcd` gives an etcd URL the connection settings it leaves out, and compaction.
    `readers` (read threads) and `adopt_plaintext` are SQLite's alone; `codec` replaces the
    default one (which must use `cipher`). Settings go through
    store.bootstrap.build_store, which calls this."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        from blixard.store.sqlite import SQLiteStore

        # sqlite:///relative/path or sqlite:////absolute/path, like SQLAlchemy.
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else parsed.path
        if not path:
            raise ValueError(
                "sqlite storage URL needs a file path, e.g. sqlite:///./data/blixard.db"
            )
        return SQLiteStore(
            Path(path),
            cache_bytes=cache_bytes,
            cipher=cipher,
            readers=readers if readers is not None else SQLiteStore.DEFAULT_READERS,
            adopt_plaintext=adopt_plaintext,
            codec=codec,
        )
    if parsed.scheme in ("etcd", "etcds"):
        from blixard.store.etcd import EtcdStore, parse_etcd_url

        if readers is not None or adopt_plaintext:
            raise ValueError("readers and adopt_plaintext are options of the sqlite engine only")
        # etcd[s]://host:2379,host:2379/prefix: the endpoints of one cluster and a key prefix.
        target = parse_etcd_url(url, etcd)
        return EtcdStore(
            target.endpoints,
            target.prefix,
            cipher=cipher,
            cache_bytes=cache_bytes,
            access=target.access,
            compaction=etcd.compaction if etcd else None,
            codec=codec,
        )
    raise ValueError(
        f"Unsupported storage URL scheme '{parsed.scheme}' (supported: sqlite, etcd, etcds)."
    )
