"""The etcd engine: state, locks and keys in one etcd cluster, shared by every server.

store.py is the engine, conn.py the connection (endpoints, TLS, auth, leader watch),
batch.py the Txn batcher; snapshot.py and encryption.py are its helpers and are not used
from outside this package."""

from blixard.store.etcd.conn import (
    Compaction,
    EtcdAccess,
    EtcdConnectError,
    EtcdOptions,
    EtcdTarget,
    parse_etcd_url,
)
from blixard.store.etcd.store import EtcdStore, unique_prefix

__all__ = [
    "Compaction",
    "EtcdAccess",
    "EtcdConnectError",
    "EtcdOptions",
    "EtcdStore",
    "EtcdTarget",
    "parse_etcd_url",
    "unique_prefix",
]
