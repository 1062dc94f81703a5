"""Audit ids on etcd: below 2**53, never two events under one id (stores forced to make the
same ids, through every path that writes an event, lone and batched), in order within a
workspace whatever the nodes' clocks, and ids of the earlier scheme re-keyed on upgrade
and on import. Clocks are injected, never slept on."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path

import pytest

from blixard.domain.access import ApiKey, AuditEvent, Role
from blixard.store.etcd.keyspace import prefix_end
from blixard.store.etcd.store import AUDIT_EPOCH_MS, AUDIT_LOW_BITS, OLD_AUDIT_IDS, EtcdStore
from blixard.store.snapshot import AuditRecord, SnapshotRecord
from tests.etcd_cluster import shared_cluster_endpoints
from tests.store.test_engine_suite import a_lock, new_version, state

pytestmark = pytest.mark.anyio

#: A fixed instant (2027-01-15) for clocks that do not move.
FROZEN = 1_800_000_000.0


def _prefix(tmp_path: Path) -> str:
    return f"/blixard-audit-test/{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]}/"


def event(detail: str, workspace: str | None = None, key_name: str | None = None) -> AuditEvent:
    return AuditEvent(
        at=1.0, action="admin", outcome="ok", workspace=workspace, key_name=key_name, detail=detail
    )


def same_ids(*stores: EtcdStore) -> None:
    """Make the stores' next ids start over, identically (as two nodes that drew the same
    offset and write in the same millisecond)."""
    for store in stores:
        store._audit_slot = 0
        store._last_audit = 0


async def opened(*stores: EtcdStore) -> None:
    await asyncio.gather(*(store.open() for store in stores))


@contextlib.asynccontextmanager
async def stores_with(
    tmp_path: Path, *clocks: Callable[[], float]
) -> AsyncIterator[tuple[EtcdStore, ...]]:
    stores = tuple(
        EtcdStore(shared_cluster_endpoints(), _prefix(tmp_path), clock=clock) for clock in clocks
    )
    await opened(*stores)
    try:
        yield stores
    finally:
        for store in stores:
            await store.close()


@pytest.fixture
async def twins(tmp_path: Path) -> AsyncIterator[tuple[EtcdStore, ...]]:
    """Two stores on one prefix whose clocks are frozen at the same instant."""
    async with stores_with(tmp_path, lambda: FROZEN, lambda: FROZEN) as stores:
        yield stores


async def audit_keys(store: EtcdStore, family: str) -> list[tuple[bytes, int]]:
    prefix = store.keys.key(family)
    resp = await store._kv.get(prefix, prefix_end(prefix), keys_only=True)
    return [(bytes(kv.key), int(kv.version)) for kv in resp.kvs]


async def test_stores_making_the_same_ids_lose_no_event(twins: tuple[EtcdStore, ...]) -> None:
    a, b = twins
    same_ids(a, b)
    await a.append_audit([event("a0")])
    await b.append_audit([event("b0")])  # the same id: found taken, written under another
    newest, older = await a.list_audit(limit=2)
    assert (older.detail, newest.detail) == ("a0", "b0")
    assert older.id == (int(FROZEN * 1000) - AUDIT_EPOCH_MS) << AUDIT_LOW_BITS
    assert newest.id is not None and newest.id > older.id

    # Every path that writes an event, from both stores at once and in lockstep (each
    # store's calls queue behind its own and go to etcd in batches).
    batches = a._batch.batches + b._batch.batches
    same_ids(a, b)

    async def work(store: EtcdStore, tag: str) -> list[object]:
        calls = []
        for i in range(6):
            name = f"{tag}{i}"
            calls += [
                store.append_audit([event(f"{name} append"), event(f"{name} append 2")]),
                store.put_lock(
                    name, None, expect_revision=None, now=1.0, audit=event(f"{name} create", name)
                ),
                store.create_key(
                    ApiKey(f"id-{name}", name, Role.reader, ("*",), "h", 1.0),
                    audit=event(f"{name} key", key_name=name),
                ),
            ]
        return list(await asyncio.gather(*calls))

    results = await asyncio.gather(work(a, "a"), work(b, "b"))
    for done in results:  # every workspace created, every key made
        assert all(ws is not None for ws in done[1::3]) and all(done[2::3])
    assert a._batch.batches + b._batch.batches > batches
    events = await b.list_audit(limit=1000)
    expected = {"a0", "b0"} | {
        f"{tag}{i} {what}"
        for tag in "ab"
        for i in range(6)
        for what in ("append", "append 2", "create", "key")
    }
    assert sorted(e.detail or "" for e in events) == sorted(expected)
    ids = [e.id for e in events]
    assert len(set(ids)) == len(ids) and all(i is not None and i < 2**53 for i in ids)
    for tag in "ab":
        assert [e.detail for e in await a.list_audit(workspace=f"{tag}3")] == [f"{tag}3 create"]
        assert [e.detail for e in await a.list_audit(key_name=f"{tag}3")] == [f"{tag}3 key"]
    # No event key was written twice.
    assert {version for _, version in await audit_keys(a, "audit/")} == {1}


async def test_a_lost_workspace_compare_is_told_apart_from_an_id_clash(
    twins: tuple[EtcdStore, ...],
) -> None:
    a, b = twins
    same_ids(a, b)
    created = []
    for i in range(8):
        ws = await a.put_lock(
            f"w{i}", None, expect_revision=None, now=1.0, audit=event(f"a create {i}", f"w{i}")
        )
        assert ws is not None
        created.append(ws)
    for ws in created:  # B remembers each record as created, and will CAS on that view
        assert await b.get_workspace(ws.name) == ws
    for ws in created[:4]:
        assert await a.put_lock(
            ws.name, a_lock(), expect_revision=ws.revision, now=2.0, audit=event("a lock", ws.name)
        )

    # Alone: B's first id is taken and its compare is stale: no write, no event.
    same_ids(b)
    assert await b.put_lock("w0", None, expect_revision=created[0].revision, now=3.0) is None
    assert (
        await b.put_lock(
            "w0", None, expect_revision=created[0].revision, now=3.0, audit=event("b stale", "w0")
        )
        is None
    )
    # Batched: eight at once, every first id taken, half of them on a stale revision.
    same_ids(b)
    batches = b._batch.batches
    results = await asyncio.gather(
        *(
            b.put_lock(
                ws.name, a_lock("B"), expect_revision=ws.revision, now=3.0, audit=event("b lock")
            )
            for ws in created
        )
    )
    assert b._batch.batches > batches
    assert [r is not None for r in results] == [False] * 4 + [True] * 4
    for i, ws in enumerate(created):
        found = await a.get_workspace(ws.name)
        assert found is not None and found.lock is not None
        assert found.lock.id == ("L1" if i < 4 else "B")
    details = [e.detail for e in await a.list_audit(limit=100)]
    assert sorted(details) == sorted(
        [f"a create {i}" for i in range(8)] + ["a lock"] * 4 + ["b lock"] * 4
    )


async def test_a_workspace_lists_its_events_in_order_across_skewed_clocks(
    tmp_path: Path,
) -> None:
    """The node an hour behind writes after the node an hour ahead: its event still sorts
    after (the workspace record carries its newest id), though its own clock says earlier."""
    async with stores_with(tmp_path, lambda: time.time() + 3600, time.time) as (ahead, behind):
        await behind.append_audit([event("behind, elsewhere")])
        ws = await ahead.put_lock("w", None, expect_revision=None, now=1.0, audit=event("1", "w"))
        assert ws is not None
        steps = [
            (behind, "put_lock", {"lock": a_lock("B")}),
            (ahead, "append_version", {}),
            (behind, "put_lock", {"lock": None}),
            (ahead, "set_deleted", {"deleted_at": 5.0}),
            (behind, "set_deleted", {"deleted_at": None}),
            (ahead, "put_lock", {"lock": a_lock("A")}),
            (behind, "append_version", {}),
        ]
        for n, (store, method, args) in enumerate(steps, start=2):
            audit = event(str(n), "w")
            if method == "append_version":
                body = state(n)
                ws = await store.append_version(
                    "w", body, new_version(body, n), expect_revision=ws.revision, audit=audit
                )
            elif method == "put_lock":
                ws = await store.put_lock(
                    "w", args["lock"], expect_revision=ws.revision, now=float(n), audit=audit
                )
            else:
                ws = await store.set_deleted(
                    "w", args["deleted_at"], expect_revision=ws.revision, now=float(n), audit=audit
                )
            assert ws is not None
        listed = await behind.list_audit(workspace="w")
        assert [e.detail for e in listed] == [str(n) for n in range(len(steps) + 1, 0, -1)]
        elsewhere = (await behind.list_audit(limit=100))[-1]
        assert elsewhere.detail == "behind, elsewhere" and elsewhere.id is not None
        assert all(e.id is not None and e.id > elsewhere.id for e in listed)


def old_id(at: float, slot: int) -> int:
    """An id of the earlier scheme: (microseconds since 1970 << 8) | a random 8-bit slot."""
    return (round(at * 1_000_000) << 8) | slot


async def test_old_ids_are_rekeyed_once_in_order_by_nodes_opening_at_once(
    tmp_path: Path,
) -> None:
    endpoints, prefix = shared_cluster_endpoints(), _prefix(tmp_path)
    store = EtcdStore(endpoints, prefix)
    await store.open()
    try:
        # As the earlier version left a prefix: 120 events, two or three per millisecond,
        # some with index copies, and no marker.
        start = 1_760_000_000.0
        old = [
            AuditEvent(
                at=start + i * 0.0004,
                action="admin",
                outcome="ok",
                workspace="w" if i % 3 == 0 else None,
                key_name="k" if i % 4 == 0 else None,
                detail=str(i),
                id=old_id(start + i * 0.0004, (i * 37) % 256),
            )
            for i in range(120)
        ]
        for i in range(0, len(old), 30):
            await store._txn([], [op for e in old[i : i + 30] for op in store._audit_ops(e)], [])
        # A new-style event already holds the id the newest old event would get.
        newest_ms = (old[-1].id or 0) // 256 // 1000 - AUDIT_EPOCH_MS
        taken = ((newest_ms + 1) << AUDIT_LOW_BITS) - 1
        await store._txn([], store._audit_ops(AuditEvent(1.0, "admin", "ok", id=taken)), [])
        await store._kv.delete(store.keys.key("meta/auditids"))
    finally:
        await store.close()

    a, b = EtcdStore(endpoints, prefix), EtcdStore(endpoints, prefix)
    await opened(a, b)  # both re-key, taking turns on the marker
    try:
        listed = await a.list_audit(limit=1000)
        assert [e.detail for e in listed] == [None, *(str(i) for i in range(119, -1, -1))]
        assert listed[0].id == taken and listed[1].id == taken - 1
        for before, after in zip(old, reversed(listed[1:]), strict=True):
            assert after == replace(before, id=after.id)
            assert after.id is not None and after.id < 2**53
            # Still the millisecond it happened in.
            assert after.id >> AUDIT_LOW_BITS == (before.id or 0) // 256 // 1000 - AUDIT_EPOCH_MS
        assert [e.detail for e in await b.list_audit(workspace="w", limit=1000)] == [
            str(i) for i in range(117, -1, -3)
        ]
        assert [e.detail for e in await b.list_audit(key_name="k", limit=1000)] == [
            str(i) for i in range(116, -1, -4)
        ]
        # Nothing is left under an old id, and no key was written twice.
        assert len(await audit_keys(a, "audit/")) == 121
        assert len(await audit_keys(a, "audit-ws/")) == 40
        assert len(await audit_keys(a, "audit-key/")) == 30
        for family in ("audit/", "audit-ws/", "audit-key/"):
            assert {version for _, version in await audit_keys(a, family)} == {1}
        # New events sort after them on both nodes.
        await a.append_audit([event("new on a")])
        await b.append_audit([event("new on b")])
        assert {e.detail for e in await a.list_audit(limit=2)} == {"new on a", "new on b"}

        # Once per prefix: an old-style key written now (an old node still running) stays.
        late = replace(old[0], id=old_id(start + 1, 1))
        await a._txn([], a._audit_ops(late), [])
        await a.close()
        await a.open()
        assert (await a.list_audit(limit=1))[0].id == late.id
    finally:
        await a.close()
        await b.close()


async def _replay(records: list[SnapshotRecord]) -> AsyncIterator[SnapshotRecord]:
    for record in records:
        yield record


async def test_imported_ids_are_kept_or_rekeyed_and_sort_before_new_ones(tmp_path: Path) -> None:
    # SQLite's 1..N are kept; an older etcd export's ids are re-keyed after them, in order.
    # A newer export's ids, made on a node whose clock ran years ahead, are kept as well.
    ahead = ((2_000_000_000_000 - AUDIT_EPOCH_MS) << AUDIT_LOW_BITS) + 5
    cases = {
        "old": [1, 2, *(old_id(1_760_000_000.0 + n, 7) for n in range(3))],
        "ahead": [1, 2, ahead],
    }
    for name, ids in cases.items():
        imported = [
            AuditEvent(float(n), "admin", "ok", detail=str(n), id=i) for n, i in enumerate(ids)
        ]
        store = EtcdStore(shared_cluster_endpoints(), _prefix(tmp_path / name))
        await store.open()
        try:
            await store.import_snapshot(_replay([AuditRecord(e) for e in imported]))
            listed = await store.list_audit(limit=100)
            assert [e.detail for e in listed] == [e.detail for e in reversed(imported)]
            got = [e.id or 0 for e in listed]
            assert got == sorted(got, reverse=True) and got[-2:] == [2, 1]
            assert got[0] < OLD_AUDIT_IDS and (name == "old" or got[0] == ahead)
            await store.append_audit([event("new")])
            assert ((await store.list_audit(limit=1))[0].id or 0) > got[0]
        finally:
            await store.close()
        reopened = EtcdStore(shared_cluster_endpoints(), _prefix(tmp_path / name))
        await reopened.open()
        try:
            await reopened.append_audit([event("after reopen")])
            newest = await reopened.list_audit(limit=2)
            assert {e.detail for e in newest} == {"after reopen", "new"}
        finally:
            await reopened.close()
