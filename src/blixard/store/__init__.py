"""Storage engines behind one interface (protocol.Store)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlparse

from blixard.store.crypto import Cipher
from blixard.store.protocol import Store


def open_store_from_url(
    url: str, *, cache_bytes: int = 256 * 1024 * 1024, cipher: Cipher | None = None
) -> Store:
    """Build (not yet open) the engine a storage URL names; `cipher` turns on encryption."""
    parsed = urlparse(url)
    if parsed.scheme == "sqlite":
        from blixard.store.sqlite import SQLiteStore

        # sqlite:///relative/path or sqlite:////absolute/path, like SQLAlchemy.
        path = url[len("sqlite:///") :] if url.startswith("sqlite:///") else parsed.path
        if not path:
            raise ValueError(
                "sqlite storage URL needs a file path, e.g. sqlite:///./data/blixard.db"
            )
        return SQLiteStore(Path(path), cache_bytes=cache_bytes, cipher=cipher)
    if parsed.scheme == "etcd":
        from blixard.store.etcd import EtcdStore, parse_etcd_url

        # etcd://host:2379,host:2379/prefix: the endpoints of one cluster and a key prefix.
        endpoints, prefix = parse_etcd_url(url)
        return EtcdStore(endpoints, prefix, cipher=cipher, cache_bytes=cache_bytes)
    raise ValueError(f"Unsupported storage URL scheme '{parsed.scheme}' (supported: sqlite, etcd).")
