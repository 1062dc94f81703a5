"""The shared engine test-suite: the Store contract every engine must honour."""

from __future__ import annotations

import asyncio
import hashlib
import random
import sqlite3
import time
from dataclasses import replace
from typing import cast

import orjson
import pytest

from blixard.domain.models import Lock, NewVersion, StateMeta
from blixard.domain.resource_index import ResourceQuery
from blixard.domain.roles import (
    AuditStore,
    AuditTrail,
    KeyStore,
    NodeLeases,
    RunHost,
    RunStore,
    StateStore,
)
from blixard.store.protocol import EncryptionAdmin, Store
from blixard.store.resource_index import ResourceIndexStore
from blixard.store.snapshot import SnapshotStore
from blixard.store.sqlite import SQLiteStore
from tests.store.conftest import StoreFactory

pytestmark = pytest.mark.anyio


def state(serial: int, lineage: str = "L", resources: int = 3, salt: str = "") -> bytes:
    document = {
        "version": 4,
        "terraform_version": "1.15.5",
        "serial": serial,
        "lineage": lineage,
        "resources": [
            {"type": "terraform_data", "name": f"r{i}", "salt": salt} for i in range(resources)
        ],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def new_version(body: bytes, serial: int, *, lock_id: str | None = None) -> NewVersion:
    return NewVersion(
        meta=StateMeta(serial=serial, lineage="L", terraform_version="1.15.5", resource_count=3),
        size=len(body),
        sha256=hashlib.sha256(body).hexdigest(),
        md5=hashlib.md5(body).hexdigest(),
        created_at=1_000_000.0 + serial,
        lock_id=lock_id,
        source="write",
    )


def a_lock(lock_id: str = "L1") -> Lock:
    return Lock(id=lock_id, info={"ID": lock_id, "Who": "tester", "Operation": "x"}, locked_at=5.0)


async def append(store: Store, name: str, serial: int, body: bytes | None = None) -> int:
    ws = await store.get_workspace(name)
    body = body if body is not None else state(serial)
    updated = await store.append_version(
        name, body, new_version(body, serial), expect_revision=ws.revision if ws else None
    )
    assert updated is not None and updated.head is not None
    return updated.head.version


async def test_empty_store_has_nothing(store: Store) -> None:
    assert await store.get_workspace("nope") is None
    assert await store.list_workspaces() == []
    assert await store.read_head("nope") is None
    assert await store.read_version("nope", 1) is None
    assert await store.list_versions("nope") == []
    assert (await store.stats())["versions"] == 0


ROLES = (
    StateStore,
    KeyStore,
    AuditStore,
    AuditTrail,
    RunStore,
    NodeLeases,
    RunHost,
    SnapshotStore,
    EncryptionAdmin,
    Store,
)


@pytest.mark.parametrize("role", ROLES, ids=lambda role: role.__name__)
async def test_engine_plays_every_role(store: Store, role: type) -> None:
    """Each caller depends on one role (domain/roles.py); every engine must play them all.
    (mypy checks the signatures in store/conformance.py; this checks the running object.)"""
    assert isinstance(store, role)
    missing = [
        name
        for name in dir(role)
        if not name.startswith("_")
        and not callable(getattr(store, name, None))
        and name != "engine"
    ]
    assert missing == []


async def test_health_reports_engine(store: Store) -> None:
    report = await store.health()
    assert report["is_healthy"] is True
    assert report["engine"] == store.engine
    assert report["node_count"] >= 1
    assert report["has_leader"] is True


async def test_put_lock_creates_workspace_once(store: Store) -> None:
    created = await store.put_lock("w", a_lock(), expect_revision=None, now=1.0)
    assert created is not None and created.lock is not None
    assert created.lock.id == "L1" and created.lock.info["Who"] == "tester"
    assert created.head is None
    # A second "create" loses the compare-and-set and changes nothing.
    assert await store.put_lock("w", a_lock("L2"), expect_revision=None, now=2.0) is None
    current = await store.get_workspace("w")
    assert current is not None and current.lock is not None and current.lock.id == "L1"


async def test_recent_workspace_is_the_record_a_lost_compare_found(store: Store) -> None:
    """What StateService decides on first; after a lost compare it is current (as_of is at
    or after the lost call), so a refusal can be answered without another read."""
    started = time.monotonic()
    missing, as_of = await store.recent_workspace("w")
    assert missing is None and as_of >= started
    created = await store.put_lock("w", a_lock(), expect_revision=None, now=1.0)
    assert created is not None
    assert (await store.recent_workspace("w"))[0] == created
    before_lost = time.monotonic()
    assert await store.put_lock("w", a_lock("L2"), expect_revision=None, now=2.0) is None
    seen, as_of = await store.recent_workspace("w")
    assert seen == created and as_of >= before_lost


async def test_stale_revision_changes_nothing(store: Store) -> None:
    created = await store.put_lock("w", a_lock(), expect_revision=None, now=1.0)
    assert created is not None
    released = await store.put_lock("w", None, expect_revision=created.revision, now=2.0)
    assert released is not None and released.lock is None
    assert released.revision != created.revision
    # Using the old revision again must fail for every kind of mutation.
    assert await store.put_lock("w", a_lock("X"), expect_revision=created.revision, now=3) is None
    body = state(1)
    stale = await store.append_version(
        "w", body, new_version(body, 1), expect_revision=created.revision
    )
    assert stale is None
    assert await store.set_deleted("w", 9.0, expect_revision=created.revision, now=9.0) is None
    current = await store.get_workspace("w")
    assert current == released
    assert await store.list_versions("w") == []


async def test_versions_are_numbered_from_one_and_read_back_exactly(store: Store) -> None:
    bodies = {}
    for serial in range(1, 6):
        body = state(serial, salt=f"s{serial}")
        bodies[serial] = body
        assert await append(store, "w", serial, body) == serial
    for number, body in bodies.items():
        found = await store.read_version("w", number)
        assert found is not None
        meta, read = found
        assert read == body
        assert meta.version == number and meta.serial == number
        assert meta.sha256 == hashlib.sha256(body).hexdigest()
    head = await store.read_head("w")
    assert head is not None and head[1] == bodies[5] and head[0].version == 5
    assert await store.read_version("w", 6) is None


async def test_versions_keep_the_lock_holders_who(store_factory: StoreFactory) -> None:
    """A version written under a lock keeps the holder's `Who`; one without has none. Both
    read back through every read path and survive a reopen."""
    first = store_factory()
    await first.open()
    try:
        body = state(1)
        held = replace(new_version(body, 1, lock_id="L1"), lock_who="alice@laptop")
        written = await first.append_version("w", body, held, expect_revision=None)
        assert written is not None and written.head is not None
        assert written.head.lock_who == "alice@laptop"
        await append(first, "w", 2)
    finally:
        await first.close()
    second = store_factory()
    await second.open()
    try:
        found = await second.read_version("w", 1)
        assert found is not None and found[0].lock_who == "alice@laptop"
        listed = await second.list_versions("w")
        assert [(m.version, m.lock_who) for m in listed] == [(2, None), (1, "alice@laptop")]
        head = await second.read_head("w")
        assert head is not None and head[0].lock_who is None
    finally:
        await second.close()


async def test_list_versions_newest_first_with_cursor(store: Store) -> None:
    for serial in range(1, 8):
        await append(store, "w", serial)
    page = await store.list_versions("w", limit=3)
    assert [m.version for m in page] == [7, 6, 5]
    page = await store.list_versions("w", before=5, limit=3)
    assert [m.version for m in page] == [4, 3, 2]
    page = await store.list_versions("w", before=2, limit=3)
    assert [m.version for m in page] == [1]


async def test_many_similar_versions_roundtrip_and_compress(store: Store) -> None:
    rng = random.Random(7)
    resources = [{"name": f"r{i}", "id": rng.randbytes(16).hex()} for i in range(400)]
    bodies = []
    for serial in range(1, 151):
        resources[rng.randrange(len(resources))]["id"] = rng.randbytes(16).hex()
        body = orjson.dumps(
            {"serial": serial, "lineage": "L", "resources": resources}, option=orjson.OPT_INDENT_2
        )
        bodies.append(body)
        await append(store, "w", serial, body)
    for number in (1, 2, 63, 64, 65, 100, 150):
        found = await store.read_version("w", number)
        assert found is not None and found[1] == bodies[number - 1]
    stats = await store.stats()
    raw = sum(len(b) for b in bodies)
    assert stats["versions"] == 150
    assert stats["stored_bytes"] < raw * 0.05, (stats["stored_bytes"], raw)


async def test_large_body_roundtrip(store: Store) -> None:
    rng = random.Random(3)
    payload = [rng.randbytes(64).hex() for _ in range(170_000)]  # ~22 MiB of JSON
    body = orjson.dumps({"serial": 1, "lineage": "L", "blobs": payload})
    assert len(body) > 20 * 1024 * 1024
    await append(store, "big", 1, body)
    found = await store.read_version("big", 1)
    assert found is not None and found[1] == body


async def test_soft_delete_and_restore(store: Store) -> None:
    await append(store, "a", 1)
    await append(store, "b", 1)
    ws = await store.get_workspace("a")
    assert ws is not None
    deleted = await store.set_deleted("a", 50.0, expect_revision=ws.revision, now=50.0)
    assert deleted is not None and deleted.deleted
    assert [w.name for w in await store.list_workspaces()] == ["b"]
    assert [w.name for w in await store.list_workspaces(include_deleted=True)] == ["a", "b"]
    assert (await store.read_version("a", 1)) is not None  # history kept
    restored = await store.set_deleted("a", None, expect_revision=deleted.revision, now=60.0)
    assert restored is not None and not restored.deleted
    assert [w.name for w in await store.list_workspaces()] == ["a", "b"]


async def test_list_workspaces_sorted_and_paged(store: Store) -> None:
    for name in ["c", "a", "e", "b", "d"]:
        await append(store, name, 1)
    assert [w.name for w in await store.list_workspaces()] == ["a", "b", "c", "d", "e"]
    assert [w.name for w in await store.list_workspaces(after="b", limit=2)] == ["c", "d"]


async def test_concurrent_creates_exactly_one_wins(store: Store) -> None:
    results = await asyncio.gather(
        *(store.put_lock("race", a_lock(f"L{i}"), expect_revision=None, now=1.0) for i in range(32))
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    current = await store.get_workspace("race")
    assert current is not None and current.lock is not None
    assert winners[0].lock is not None and current.lock.id == winners[0].lock.id


async def test_concurrent_appends_on_same_head_exactly_one_wins(store: Store) -> None:
    await append(store, "w", 1)
    ws = await store.get_workspace("w")
    assert ws is not None
    bodies = [state(2, salt=str(i)) for i in range(16)]
    results = await asyncio.gather(
        *(
            store.append_version("w", b, new_version(b, 2), expect_revision=ws.revision)
            for b in bodies
        )
    )
    winners = [r for r in results if r is not None]
    assert len(winners) == 1
    versions = await store.list_versions("w")
    assert [m.version for m in versions] == [2, 1]
    head = await store.read_head("w")
    assert head is not None and head[1] in bodies


async def test_everything_survives_reopen(store_factory: StoreFactory) -> None:
    first = store_factory()
    await first.open()
    await append(first, "w", 1)
    await append(first, "w", 2, state(2, salt="x"))
    ws = await first.get_workspace("w")
    assert ws is not None
    locked = await first.put_lock("w", a_lock("held"), expect_revision=ws.revision, now=7.0)
    assert locked is not None
    await first.close()

    second = store_factory()
    await second.open()
    try:
        reopened = await second.get_workspace("w")
        assert reopened == locked
        found = await second.read_version("w", 2)
        assert found is not None and found[1] == state(2, salt="x")
        assert (await second.stats())["versions"] == 2
        # Appending after a reopen continues the numbering and keeps deltas decodable.
        assert await append(second, "w", 3) == 3
        found = await second.read_version("w", 3)
        assert found is not None and found[1] == state(3)
    finally:
        await second.close()


async def test_runs_are_stored_compared_and_listed(store: Store) -> None:
    from blixard.domain.runs import Run, RunStatus

    first = await store.create_run(Run("run-001", "w", RunStatus.queued, 1.0, variables={"a": "1"}))
    second = await store.create_run(Run("run-002", "w", RunStatus.queued, 2.0))
    await store.create_run(Run("run-003", "other", RunStatus.queued, 3.0))
    assert first.revision == 1
    found = await store.get_run("run-001")
    assert found == first and found.variables == {"a": "1"}
    planning = await store.update_run(
        replace(first, status=RunStatus.planning), expect_revision=first.revision
    )
    assert planning is not None and planning.revision == 2
    # A stale revision changes nothing.
    assert (
        await store.update_run(replace(first, status=RunStatus.errored), expect_revision=1) is None
    )
    assert (await store.get_run("run-001")) == planning
    assert [r.id for r in await store.list_runs(workspace="w")] == ["run-002", "run-001"]
    assert [r.id for r in await store.list_runs(workspace="w", before="run-002")] == ["run-001"]
    assert [r.id for r in await store.list_runs(statuses=("queued",))] == ["run-003", "run-002"]
    assert second.status == RunStatus.queued
    await store.put_run_blob("run-001", "plan", b"\x00plan-bytes")
    await store.put_run_blob("run-001", "plan", b"\x00plan-bytes-2")
    assert await store.get_run_blob("run-001", "plan") == b"\x00plan-bytes-2"
    assert await store.get_run_blob("run-001", "config") is None
    await store.append_run_log("run-001", b"hello ")
    await store.append_run_log("run-001", b"world")
    assert await store.read_run_log("run-001") == b"hello world"
    assert await store.read_run_log("run-002") == b""


async def test_open_runs_are_listed_by_status_through_their_transitions(store: Store) -> None:
    """What the run sweep reads (engines index open runs): after every transition the open
    listing holds exactly the open runs, newest first, filtered by status, workspace and
    `before`; finished runs stay in the full listing only."""
    from blixard.domain.runs import OPEN, Run, RunStatus

    sweep = tuple(sorted(status.value for status in OPEN))
    runs = {
        n: await store.create_run(Run(f"run-00{n}", ws, RunStatus.queued, float(n)))
        for n, ws in enumerate(("w", "w", "w", "other", "w"), start=1)
    }

    async def check() -> None:
        newest_first = [runs[n] for n in sorted(runs, reverse=True)]
        assert await store.list_runs(limit=100) == newest_first
        open_runs = [run for run in newest_first if run.status in OPEN]
        assert await store.list_runs(statuses=sweep, limit=10_000) == open_runs
        for status in OPEN:
            listed = await store.list_runs(statuses=(status.value,), limit=10_000)
            assert listed == [run for run in open_runs if run.status == status]

    async def move(n: int, *statuses: RunStatus) -> None:
        for status in statuses:
            moved = await store.update_run(
                replace(runs[n], status=status), expect_revision=runs[n].revision
            )
            assert moved is not None
            runs[n] = moved
            await check()

    await check()
    p, a = RunStatus.planning, RunStatus.applying
    await move(1, p, RunStatus.planned, a, RunStatus.applied)
    await move(2, p, RunStatus.errored)
    await move(3, RunStatus.discarded)
    await move(4, p)
    await move(5, p, RunStatus.planned)
    assert [run.status for run in await store.list_runs(limit=100)] == [
        RunStatus.planned,
        RunStatus.planning,
        RunStatus.discarded,
        RunStatus.errored,
        RunStatus.applied,
    ]
    # Workspace filter, as a phase's claim asks it, and paging through the open runs.
    executing = (p.value, a.value)
    assert [r.id for r in await store.list_runs(workspace="w", statuses=executing)] == []
    assert [r.id for r in await store.list_runs(workspace="other", statuses=executing)] == [
        "run-004"
    ]
    assert [r.id for r in await store.list_runs(workspace="w", statuses=sweep)] == ["run-005"]
    assert [r.id for r in await store.list_runs(statuses=sweep, limit=1)] == ["run-005"]
    assert [r.id for r in await store.list_runs(statuses=sweep, before="run-005")] == ["run-004"]
    assert await store.list_runs(statuses=sweep, before="run-004") == []
    assert await store.list_runs(statuses=sweep, limit=0) == []
    # Mixed open and finished statuses (no index on etcd) still filter the same way.
    assert [r.id for r in await store.list_runs(statuses=("planning", "errored"))] == [
        "run-004",
        "run-002",
    ]


async def test_workspace_runs_are_paged_newest_first(store: Store) -> None:
    """What GET /api/tofu/plans/{workspace} reads (etcd: the `runs-ws/` index): one
    workspace's runs only, newest first, paged by `before` and `limit` across many runs,
    with a workspace whose name extends another's ("a", "ab") kept apart."""
    from blixard.domain.runs import Run, RunStatus

    def a_run(n: int) -> Run:
        status = RunStatus.applied if n % 5 == 0 else RunStatus.queued
        return Run(f"run-{n:04d}", "ab" if n % 3 == 0 else "a", status, float(n))

    created = [a_run(n) for n in range(1, 331)]
    for i in range(0, len(created), 64):
        await asyncio.gather(*(store.create_run(run) for run in created[i : i + 64]))
    stored = [replace(run, revision=1) for run in reversed(created)]
    for workspace in ("a", "ab"):
        expected = [run for run in stored if run.workspace == workspace]
        assert await store.list_runs(workspace=workspace, limit=1000) == expected
        pages: list[list[Run]] = []
        before = None
        while page := await store.list_runs(workspace=workspace, before=before, limit=50):
            pages.append(page)
            before = page[-1].id
        assert [run for page in pages for run in page] == expected
        assert [len(page) for page in pages[:-1]] == [50] * (len(pages) - 1)
        # `before` need not be a run of the workspace.
        listed = await store.list_runs(workspace=workspace, before="run-0100", limit=7)
        assert listed == [run for run in expected if run.id < "run-0100"][:7]
        applied = await store.list_runs(workspace=workspace, statuses=("applied",), limit=1000)
        assert applied == [run for run in expected if run.status == RunStatus.applied]
        assert (
            await store.list_runs(
                workspace=workspace, statuses=("applied",), before="run-0200", limit=3
            )
            == [run for run in applied if run.id < "run-0200"][:3]
        )
        assert await store.list_runs(workspace=workspace, limit=0) == []
    assert await store.list_runs(workspace="b") == []
    assert await store.list_runs(workspace="a", before="run-0001") == []


async def test_keys_are_unique_by_active_name_revoked_and_touched(store: Store) -> None:
    from blixard.domain.access import ApiKey, Role

    first = ApiKey("id-1", "ci", Role.writer, ("team-*",), "hash-1", 10.0, created_by="admin")
    assert await store.create_key(first)
    assert not await store.create_key(replace(first, id="id-2", secret_hash="hash-2"))
    assert await store.create_key(ApiKey("id-3", "ops", Role.admin, ("*",), "hash-3", 11.0))
    assert [k.name for k in await store.list_keys()] == ["ci", "ops"]
    await store.touch_keys({"id-1": 50.5, "id-3": 60.25, "id-unknown": 1.0})
    await store.touch_keys({"id-1": 40.0})  # never moves backwards
    keys = {k.id: k for k in await store.list_keys()}
    assert keys["id-1"].last_used_at == 50.5 and keys["id-3"].last_used_at == 60.25
    assert keys["id-1"].scopes == ("team-*",) and keys["id-1"].role == Role.writer
    revoked = await store.revoke_key("ci", 70.0)
    assert revoked is not None and revoked.id == "id-1" and revoked.revoked_at == 70.0
    assert await store.revoke_key("ci", 71.0) is None
    assert [k.name for k in await store.list_keys()] == ["ops"]
    assert [k.id for k in await store.list_keys(include_revoked=True)] == ["id-1", "id-3"]
    # The name is free again once its key is revoked.
    assert await store.create_key(replace(first, id="id-4", created_at=80.0))


async def test_audit_is_listed_newest_first_filtered_and_paged(store: Store) -> None:
    from blixard.domain.access import AuditEvent

    events = [
        AuditEvent(
            at=100.0 + i,
            action="state.write" if i % 2 else "lock.acquire",
            outcome="ok",
            key_name=f"k{i % 3}",
            workspace=f"w{i % 2}",
        )
        for i in range(12)
    ]
    await store.append_audit(events[:6])
    await append(store, "w9", 1)
    ws = await store.get_workspace("w9")
    assert ws is not None
    audited = AuditEvent(at=200.0, action="lock.acquire", outcome="ok", workspace="w9")
    assert await store.put_lock(
        "w9", a_lock(), expect_revision=ws.revision, now=200.0, audit=audited
    )
    await store.append_audit(events[6:])
    everything = await store.list_audit(limit=1000)
    assert len(everything) == 13
    ids = [e.id for e in everything]
    assert all(i is not None for i in ids) and ids == sorted(ids, reverse=True)  # type: ignore[type-var]
    assert [e.at for e in everything if e.workspace != "w9"] == [111.0 - i for i in range(12)]
    assert [e.workspace for e in await store.list_audit(workspace="w9")] == ["w9"]
    assert [e.at for e in await store.list_audit(workspace="w1", limit=2)] == [111.0, 109.0]
    assert [e.at for e in await store.list_audit(key_name="k0")] == [109.0, 106.0, 103.0, 100.0]
    assert [e.at for e in await store.list_audit(key_name="k0", action="lock.acquire")] == [
        106.0,
        100.0,
    ]
    assert [e.at for e in await store.list_audit(since=105.0, until=108.0)] == [107.0, 106.0, 105.0]
    page = await store.list_audit(limit=5)
    assert page == everything[:5]
    assert page[-1].id is not None
    assert await store.list_audit(before_id=page[-1].id, limit=5) == everything[5:10]


async def test_audit_ids_are_exact_as_json_doubles_and_page_without_gaps(store: Store) -> None:
    """A client parsing ids as doubles (JavaScript, jq) pages with exactly the ids it got."""
    from blixard.domain.access import AuditEvent

    await store.append_audit(
        [AuditEvent(at=float(i), action="admin", outcome="ok", detail=str(i)) for i in range(250)]
    )
    everything = await store.list_audit(limit=1000)
    assert [e.detail for e in everything] == [str(i) for i in reversed(range(250))]
    pages: list[AuditEvent] = []
    before: int | None = None
    while page := await store.list_audit(before_id=before, limit=37):
        pages += page
        parsed = orjson.loads(orjson.dumps({"next_before": page[-1].id}))
        before = int(float(parsed["next_before"]))  # what a double-only parser hands back
        assert before == page[-1].id and before < 2**53
    assert pages == everything


async def test_node_leases_expire_unless_renewed(store: Store) -> None:
    """A node is listed while it renews its lease; one that stops renewing drops out."""
    kept = await store.grant_node_lease("node-kept", {"version": "1"}, ttl=1)
    dropped = await store.grant_node_lease("node-dropped", {"version": "1"}, ttl=1)
    assert await store.live_nodes() == {
        "node-kept": {"version": "1"},
        "node-dropped": {"version": "1"},
    }
    deadline = time.monotonic() + 15  # etcd rounds a TTL up to its minimum (~2 s)
    while "node-dropped" in await store.live_nodes():
        assert time.monotonic() < deadline, "a lease nobody renews never expired"
        assert await store.renew_node_lease(kept) is True
        await asyncio.sleep(0.2)
    assert await store.renew_node_lease(dropped) is False
    assert await store.live_nodes() == {"node-kept": {"version": "1"}}

    # A restarted node's new lease replaces its old one; revoking it drops the node at once.
    again = await store.grant_node_lease("node-kept", {"version": "2"}, ttl=30)
    assert await store.live_nodes() == {"node-kept": {"version": "2"}}
    await store.revoke_node_lease(again)
    assert await store.live_nodes() == {}
    await store.revoke_node_lease(kept)


# -- the resource index (store/resource_index.py) -----------------------------------------


def resources_state(serial: int, instances: dict[str, tuple[str, str]]) -> bytes:
    """A state with one instance per address: address → (type, id)."""
    resources = []
    for address, (type_, ident) in sorted(instances.items()):
        resources.append(
            {
                "mode": "managed",
                "type": type_,
                "name": address.split(".")[-1],
                "provider": 'provider["registry.terraform.io/hashicorp/aws"]',
                "instances": [{"attributes": {"id": ident, "arn": f"arn:{ident}"}}],
            }
        )
    document = {"version": 4, "serial": serial, "lineage": "L", "resources": resources}
    return orjson.dumps(document)


def indexed(store: Store) -> ResourceIndexStore:
    """The store's resource index capability (every engine has it)."""
    return cast(ResourceIndexStore, store)


def found(store: Store, **filters: str) -> list[tuple[str, int, str]]:
    index = indexed(store).resource_index
    query = ResourceQuery(**filters)  # type: ignore[arg-type]
    return [(m.workspace, m.version, m.row.address) for m in index.search(query, lambda _: True)]


async def test_resource_index_follows_versions_deletes_and_reopens(
    store_factory: StoreFactory,
) -> None:
    first = store_factory()
    await first.open()
    try:
        await append(first, "a", 1, resources_state(1, {"x.bucket": ("aws_s3_bucket", "b-1")}))
        await append(
            first,
            "a",
            2,
            resources_state(
                2, {"x.bucket": ("aws_s3_bucket", "b-2"), "x.vpc": ("aws_vpc", "shared")}
            ),
        )
        await append(first, "b", 1, resources_state(1, {"y.vpc": ("aws_vpc", "shared")}))
        # Only current versions answer: b-1 was replaced by b-2.
        assert found(first, type="aws_s3_bucket") == [("a", 2, "aws_s3_bucket.bucket")]
        assert found(first, id="b-1") == []
        assert found(first, id="arn:b-2") == [("a", 2, "aws_s3_bucket.bucket")]
        assert found(first, type="aws_vpc") == [("a", 2, "aws_vpc.vpc"), ("b", 1, "aws_vpc.vpc")]
        dupes = indexed(first).resource_index.duplicates(lambda _: True)
        assert [(d.kind, d.value, [m.workspace for m in d.holders]) for d in dupes] == [
            ("arn", "arn:shared", ["a", "b"]),
            ("id", "shared", ["a", "b"]),
        ]
        # Only the current version's document is stored; history builds the others' rows.
        assert await stored_index_versions(first) == {"a": [2], "b": [1]}
        history = await indexed(first).index_history("a")
        assert [(d.version, [r.id for r in d.rows]) for d in history] == [
            (1, ["b-1"]),
            (2, ["b-2", "shared"]),
        ]
        # A soft-deleted workspace drops out; restored, it comes back.
        ws = await first.get_workspace("b")
        assert ws is not None
        deleted = await first.set_deleted("b", 9.0, expect_revision=ws.revision, now=9.0)
        assert deleted is not None
        assert found(first, type="aws_vpc") == [("a", 2, "aws_vpc.vpc")]
        assert first.resource_index.duplicates(lambda _: True) == []  # type: ignore[attr-defined]
        restored = await first.set_deleted("b", None, expect_revision=deleted.revision, now=10.0)
        assert restored is not None
        assert found(first, id="shared") == [("a", 2, "aws_vpc.vpc"), ("b", 1, "aws_vpc.vpc")]
        await first.set_deleted("b", 11.0, expect_revision=restored.revision, now=11.0)
    finally:
        await first.close()

    second = store_factory()
    await second.open()
    try:
        # Loaded from the stored documents, deleted workspaces still hidden.
        assert found(second, type="aws_vpc") == [("a", 2, "aws_vpc.vpc")]
        assert found(second, type="aws_s3_bucket", address="aws_s3_*") == [
            ("a", 2, "aws_s3_bucket.bucket")
        ]
    finally:
        await second.close()


async def stored_index_versions(store: Store) -> dict[str, list[int]]:
    """The versions that have a stored index document, by workspace (the store is open)."""
    found: dict[str, list[int]] = {}
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path)
        rows = conn.execute(
            "SELECT w.name, r.version FROM resource_index r "
            "JOIN workspaces w ON w.id = r.workspace_id ORDER BY w.name, r.version"
        ).fetchall()
        conn.close()
        for name, version in rows:
            found.setdefault(name, []).append(version)
        return found
    from blixard.store.etcd import EtcdStore
    from blixard.store.etcd.keyspace import RESOURCE_INDEX, prefix_end, uninv

    assert isinstance(store, EtcdStore)
    prefix = store.keys.key(RESOURCE_INDEX)
    async for kv in store._scan(prefix, prefix_end(prefix)):
        name, _, inverted = bytes(kv.key)[len(prefix) :].rpartition(b"\x00")
        found.setdefault(name.decode(), []).append(uninv(inverted))
    return {name: sorted(versions) for name, versions in found.items()}


async def drop_index_documents(store: Store, workspace: str | None = None) -> None:
    """Remove index documents (of one workspace, or all) as a store from before the index
    would lack them; the store is open (etcd) or closed (SQLite)."""
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path)
        with conn:
            where = "" if workspace is None else " WHERE workspace_id = (SELECT id FROM workspaces "
            conn.execute(
                "DELETE FROM resource_index" + (where and where + "WHERE name = ?)"),
                () if workspace is None else (workspace,),
            )
        conn.close()
        return
    from blixard.store.etcd import EtcdStore
    from blixard.store.etcd.keyspace import prefix_end

    assert isinstance(store, EtcdStore)
    for family in ("rix/", "rixhead/"):
        key = store.keys.key(family) + (f"{workspace}" if workspace else "").encode()
        await store._kv.delete(key, prefix_end(key))


async def test_reindex_builds_missing_documents_only_and_resumes(
    store_factory: StoreFactory,
) -> None:
    store = store_factory()
    await store.open()
    try:
        for serial in range(1, 6):
            await append(store, "a", serial, resources_state(serial, {"r.x": ("t", f"a{serial}")}))
        for serial in range(1, 4):
            await append(store, "b", serial, resources_state(serial, {"r.x": ("t", f"b{serial}")}))
        if not isinstance(store, SQLiteStore):
            await drop_index_documents(store)
    finally:
        await store.close()
    if isinstance(store, SQLiteStore):
        await drop_index_documents(store)

    # Opened, the store starts building the 2 missing (current) documents; closed at once,
    # it stops wherever it was (possibly before the first).
    interrupted = store_factory()
    await interrupted.open()
    await interrupted.close()

    resumed = store_factory()
    await resumed.open()
    try:
        await indexed(resumed).reindexer.wait()
        status = indexed(resumed).reindexer.status
        assert status.complete and status.remaining == 0 and status.indexed <= 2
        assert found(resumed, type="t") == [("a", 5, "t.x"), ("b", 3, "t.x")]
        assert found(resumed, id="a5") == [("a", 5, "t.x")]
        history = await indexed(resumed).index_history("a")
        assert [[row.id for row in doc.rows] for doc in history] == [[f"a{n}"] for n in range(1, 6)]
        # Forced, every document is built again; the answers stay the same.
        forced = await indexed(resumed).reindexer.run(force=True)
        assert forced.complete and forced.indexed == 2
        assert await stored_index_versions(resumed) == {"a": [5], "b": [3]}
        assert found(resumed, type="t") == [("a", 5, "t.x"), ("b", 3, "t.x")]
        if not isinstance(resumed, SQLiteStore):
            await drop_index_documents(resumed, "b")
    finally:
        await resumed.close()
    if isinstance(resumed, SQLiteStore):
        await drop_index_documents(resumed, "b")

    # Only what is missing is built: b's current version.
    again = store_factory()
    await again.open()
    try:
        await indexed(again).reindexer.wait()
        assert indexed(again).reindexer.status.indexed == 1
        assert found(again, type="t") == [("a", 5, "t.x"), ("b", 3, "t.x")]
    finally:
        await again.close()


async def test_documents_of_older_versions_from_an_earlier_layout_are_removed_at_open(
    store_factory: StoreFactory,
) -> None:
    """Stores written when every version had a document: the older versions' documents (and
    an etcd document's chunks) are deleted at the next open; searches are unchanged."""
    store = store_factory()
    await store.open()
    try:
        for serial in range(1, 4):
            await append(store, "a", serial, resources_state(serial, {"r.x": ("t", f"a{serial}")}))
        if not isinstance(store, SQLiteStore):
            from blixard.store.etcd import EtcdStore
            from blixard.store.etcd.keyspace import (
                META_RESOURCE_INDEX_KEY,
                RESOURCE_INDEX,
                RESOURCE_INDEX_BLOBS,
                inv,
            )

            assert isinstance(store, EtcdStore)
            current = store.keys.key(RESOURCE_INDEX, "a", "\x00", inv(3))
            value = bytes((await store._kv.get(current)).kvs[0].value)
            for version in (1, 2):
                await store._kv.put(
                    store.keys.key(RESOURCE_INDEX, "a", "\x00", inv(version)), value
                )
                chunk = store.keys.key(RESOURCE_INDEX_BLOBS, "a", "\x00", inv(version), "/x/00000")
                await store._kv.put(chunk, b"chunk")
            await store._kv.delete(store.keys.key(META_RESOURCE_INDEX_KEY))
            assert await stored_index_versions(store) == {"a": [1, 2, 3]}
    finally:
        await store.close()
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path)
        with conn:
            conn.execute(
                "INSERT INTO resource_index(workspace_id, version, doc) "
                "SELECT workspace_id, version - n, doc FROM resource_index, "
                "(SELECT 1 AS n UNION SELECT 2)"
            )
            conn.execute("DELETE FROM schema_migrations WHERE version = 7")
        conn.close()

    reopened = store_factory()
    await reopened.open()
    try:
        await indexed(reopened).reindexer.wait()
        assert await stored_index_versions(reopened) == {"a": [3]}
        assert found(reopened, type="t") == [("a", 3, "t.x")]
        history = await indexed(reopened).index_history("a")
        assert [[row.id for row in doc.rows] for doc in history] == [["a1"], ["a2"], ["a3"]]
        if not isinstance(reopened, SQLiteStore):
            from blixard.store.etcd import EtcdStore
            from blixard.store.etcd.keyspace import RESOURCE_INDEX_BLOBS, prefix_end

            assert isinstance(reopened, EtcdStore)
            blobs = reopened.keys.key(RESOURCE_INDEX_BLOBS)
            assert [kv async for kv in reopened._scan(blobs, prefix_end(blobs))] == []
    finally:
        await reopened.close()
