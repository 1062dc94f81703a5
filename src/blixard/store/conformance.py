"""Both engines satisfy every role, checked by mypy (strict) and never run.

As Go's `var _ Interface = (*Engine)(nil)`: a method missing or with a different signature in
either engine fails the type check here, naming the engine and the role."""

from __future__ import annotations

from blixard.domain.roles import (
    AuditStore,
    AuditTrail,
    KeyStore,
    NodeLeases,
    RunHost,
    RunStore,
    StateStore,
)
from blixard.store.etcd import EtcdStore
from blixard.store.protocol import EncryptionAdmin, Store
from blixard.store.snapshot import SnapshotStore
from blixard.store.sqlite import SQLiteStore


def every_engine_plays_every_role(engine: SQLiteStore | EtcdStore) -> None:
    """mypy checks each member of the union against each role."""
    state_store: StateStore = engine
    key_store: KeyStore = engine
    audit_store: AuditStore = engine
    audit_trail: AuditTrail = engine
    run_store: RunStore = engine
    node_leases: NodeLeases = engine
    run_host: RunHost = engine
    snapshot_store: SnapshotStore = engine
    encryption_admin: EncryptionAdmin = engine
    store: Store = engine
    del (
        state_store,
        key_store,
        audit_store,
        audit_trail,
        run_store,
        node_leases,
        run_host,
        snapshot_store,
        encryption_admin,
        store,
    )
