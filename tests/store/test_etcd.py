"""What only the etcd engine has to prove: several nodes on one prefix, chunked bodies that
never leave orphans, storage URLs, a leader failure, health and 503s as members die, the
open-runs index."""

from __future__ import annotations

import asyncio
import hashlib
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest

from blixard.domain.errors import StorageUnavailable
from blixard.store import open_store_from_url
from blixard.store.etcd.conn import parse_etcd_url
from blixard.store.etcd.keyspace import prefix_end
from blixard.store.etcd.store import EtcdStore
from tests.etcd_cluster import EtcdCluster, kv_requests, shared_cluster_endpoints
from tests.store.test_engine_suite import a_lock, append, new_version, state

pytestmark = pytest.mark.anyio


def _prefix(tmp_path: Path) -> str:
    return f"/blixard-etcd-test/{hashlib.sha256(str(tmp_path).encode()).hexdigest()[:16]}/"


def test_storage_url() -> None:
    target = parse_etcd_url("etcd://h1:2379,h2:2379/team/blixard")
    assert (target.endpoints, target.prefix) == (["h1:2379", "h2:2379"], "/team/blixard/")
    target = parse_etcd_url("etcd://h1:2379")
    assert (target.endpoints, target.prefix) == (["h1:2379"], "/blixard/")
    store = open_store_from_url("etcd://127.0.0.1:2379/x")
    assert isinstance(store, EtcdStore) and store.prefix == "/x/"
    with pytest.raises(ValueError):
        parse_etcd_url("etcd:///nohost")


async def test_two_nodes_share_one_prefix(tmp_path: Path) -> None:
    endpoints, prefix = shared_cluster_endpoints(), _prefix(tmp_path)
    a, b = EtcdStore(endpoints, prefix), EtcdStore(endpoints, prefix)
    await a.open()
    await b.open()
    try:
        await append(a, "w", 1)
        seen_by_b = await b.get_workspace("w")
        assert seen_by_b is not None and seen_by_b.head is not None
        # A writes again: B's remembered record is stale and its CAS must fail.
        await append(a, "w", 2, state(2, salt="a"))
        body = state(2, salt="b")
        lost = await b.append_version(
            "w", body, new_version(body, 2), expect_revision=seen_by_b.revision
        )
        assert lost is None
        assert await b.put_lock("w", a_lock(), expect_revision=seen_by_b.revision, now=3) is None
        head = await b.read_head("w")
        assert head is not None and head[1] == state(2, salt="a") and head[0].version == 2
        # B continues from what it reads now, and A sees B's write.
        assert await append(b, "w", 3) == 3
        found = await a.read_version("w", 3)
        assert found is not None and found[1] == state(3)
        assert (await a.stats())["versions"] == (await b.stats())["versions"] == 3
    finally:
        await a.close()
        await b.close()


async def test_large_bodies_racing_leave_no_orphan_chunks(tmp_path: Path) -> None:
    endpoints, prefix = shared_cluster_endpoints(), _prefix(tmp_path)
    store = EtcdStore(endpoints, prefix)
    await store.open()
    try:
        await append(store, "big", 1)
        ws = await store.get_workspace("big")
        assert ws is not None
        # Random hex packs to ~1.5 MiB: every contender uploads two leased chunks.
        bodies = [
            b'{"serial": 2, "x": "' + os.urandom(1536 * 1024).hex().encode() + b'"}'
            for _ in range(4)
        ]
        results = await asyncio.gather(
            *(
                store.append_version("big", b, new_version(b, 2), expect_revision=ws.revision)
                for b in bodies
            )
        )
        winners = [r for r in results if r is not None]
        assert len(winners) == 1
        head = await store.read_head("big")
        assert head is not None and head[1] in bodies
        # Only the winner's chunks remain (the losers revoked their leases).
        blob_prefix = store.keys.key("blob/")
        resp = await store._kv.get(blob_prefix, prefix_end(blob_prefix), keys_only=True)
        uploads = {bytes(kv.key).rsplit(b"/", 1)[0] for kv in resp.kvs}
        assert len(uploads) == 1 and len(resp.kvs) == 2
        # ... and they hold no lease any more: the version outlives its upload lease.
        resp = await store._kv.get(blob_prefix, prefix_end(blob_prefix))
        assert all(kv.lease == 0 for kv in resp.kvs)
    finally:
        await store.close()


@pytest.mark.slow
async def test_calls_follow_the_leader_and_writes_resume_after_it_dies(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KV calls go to the leader alone (a follower would forward them); when leadership
    moves without any call failing (etcdctl move-leader) the periodic look follows it; when
    the leader is killed, writes resume on the new one and no acknowledged write is lost."""
    from blixard.store.etcd import conn as etcd_conn

    monkeypatch.setattr(etcd_conn, "LEADER_REFRESH", 1.0)  # a move is followed within ~1 s
    with EtcdCluster(tmp_path / "etcd", 3) as cluster:
        store = EtcdStore(cluster.endpoints, "/failover/", timeout=1.0)
        await store.open()
        written: list[int] = []

        async def write_and_read() -> dict[str, int]:
            """One write and one read: the Txn and Range requests each running member got,
            or {} if the write failed (503 during an election; a lost answer looks like a
            lost compare and is retried with the same serial)."""
            urls = {m.name: m.client_url for m in cluster.running_members()}
            before = {name: kv_requests(url) for name, url in urls.items()}
            serial = len(written) + 1
            try:
                await append(store, "w", serial)
                await store.read_head("w")
            except (StorageUnavailable, AssertionError):
                await asyncio.sleep(0.2)
                return {}
            written.append(serial)
            return {name: kv_requests(url) - before[name] for name, url in urls.items()}

        async def follow(leader: Any, within: float) -> None:
            started = time.monotonic()
            while True:
                moved = await write_and_read()
                if moved and moved[leader.name] > 0 and sum(moved.values()) == moved[leader.name]:
                    return
                assert time.monotonic() - started < within, f"not only {leader.name}: {moved}"
                await asyncio.sleep(0.1)

        try:
            leader = cluster.leader()
            moved = await write_and_read()
            assert moved[leader.name] >= 3 and sum(moved.values()) == moved[leader.name], moved

            target = next(m for m in cluster.members if m is not leader)
            cluster.run_etcdctl("move-leader", f"{target.member_id:x}")
            assert cluster.leader() is target
            await follow(target, within=10)

            cluster.kill(target)
            started = time.monotonic()
            await follow(cluster.leader(timeout=15), within=20)
            assert time.monotonic() - started < 20, "writes did not resume"
            versions = await store.list_versions("w", limit=100)
            assert {v.serial for v in versions} == set(written) and versions[0].serial > 2
            health = await store.health()
            assert health["is_healthy"] and health["node_count"] == 3
        finally:
            await store.close()


async def test_keys_that_cannot_open_the_prefix_are_refused(tmp_path: Path) -> None:
    from blixard.store.crypto import Cipher
    from blixard.store.encryption import EncryptionRefused

    endpoints = shared_cluster_endpoints()
    key, other = Cipher(b"k" * 32), Cipher(b"o" * 32)
    encrypted, plain = _prefix(tmp_path / "enc"), _prefix(tmp_path / "plain")
    store = EtcdStore(endpoints, encrypted, cipher=key)
    await store.open()
    await append(store, "w", 1)
    await store.close()
    for refused in (EtcdStore(endpoints, encrypted), EtcdStore(endpoints, encrypted, cipher=other)):
        with pytest.raises(EncryptionRefused):
            await refused.open()
    # The old key next to a new current one opens it (and the new key gets its canary).
    rotated = EtcdStore(endpoints, encrypted, cipher=Cipher(b"o" * 32, [b"k" * 32]))
    await rotated.open()
    found = await rotated.read_version("w", 1)
    assert found is not None and found[1] == state(1)
    await rotated.close()

    store = EtcdStore(endpoints, plain)
    await store.open()
    await append(store, "w", 1)
    await store.close()
    with pytest.raises(EncryptionRefused, match="unencrypted"):
        await EtcdStore(endpoints, plain, cipher=key).open()


async def _run_index(store: EtcdStore) -> dict[str, dict[str, str]]:
    prefix = store.keys.key("runopen/")
    resp = await store._kv.get(prefix, prefix_end(prefix))
    return {bytes(kv.key)[len(prefix) :].decode(): orjson.loads(kv.value) for kv in resp.kvs}


async def _ws_index(store: EtcdStore) -> set[str]:
    prefix = store.keys.key("runs-ws/")
    resp = await store._kv.get(prefix, prefix_end(prefix))
    assert all(kv.value == b"" for kv in resp.kvs)
    return {bytes(kv.key)[len(prefix) :].decode() for kv in resp.kvs}


async def test_open_runs_index_follows_the_runs_is_backfilled_and_imported(
    tmp_path: Path,
) -> None:
    """`runopen/` holds exactly the open runs and `runs-ws/` every run by workspace (written
    in each run's Txn); a prefix written before an index gets it once at open; a snapshot
    import writes both, export omits them."""
    from blixard.domain.runs import Run, RunStatus

    endpoints, prefix = shared_cluster_endpoints(), _prefix(tmp_path)
    store = EtcdStore(endpoints, prefix)
    await store.open()
    try:
        runs = [
            await store.create_run(Run(f"run-00{n}", ws, RunStatus.queued, float(n)))
            for n, ws in enumerate(("w", "w", "w", "other"), start=1)
        ]
        for run, status in ((runs[0], RunStatus.applied), (runs[2], RunStatus.planning)):
            assert await store.update_run(replace(run, status=status), expect_revision=1)
        expected = {
            "run-002": {"workspace": "w", "status": "queued"},
            "run-003": {"workspace": "w", "status": "planning"},
            "run-004": {"workspace": "other", "status": "queued"},
        }
        assert await _run_index(store) == expected
        by_ws = {"w\x00run-001", "w\x00run-002", "w\x00run-003", "other\x00run-004"}
        assert await _ws_index(store) == by_ws
        in_w = await store.list_runs(workspace="w")
        assert [r.id for r in in_w] == ["run-003", "run-002", "run-001"]
        sweep = ("queued", "planned", "planning", "applying")
        listed = await store.list_runs(statuses=sweep)
        assert [r.id for r in listed] == ["run-004", "run-003", "run-002"]

        # As an older version left it: no entries and no marker, or entries gone stale.
        index = store.keys.key("runopen/")
        await store._kv.delete(index, prefix_end(index))
        await store._kv.put(index + b"run-001", b'{"workspace":"w","status":"applying"}')
        await store._kv.delete(store.keys.key("meta/runindex"))
        ws_index = store.keys.key("runs-ws/")
        await store._kv.delete(ws_index, prefix_end(ws_index))
        await store._kv.delete(store.keys.key("meta/runindex-ws"))
    finally:
        await store.close()
    reopened = EtcdStore(endpoints, prefix)
    await reopened.open()
    try:
        assert await _run_index(reopened) == expected
        assert await reopened.list_runs(statuses=sweep) == listed
        assert await _ws_index(reopened) == by_ws
        assert await reopened.list_runs(workspace="w") == in_w
        # Once per prefix and index: a marker stops later opens from reading every run again.
        await reopened._kv.delete(index + b"run-004")
        await reopened._kv.delete(ws_index + b"other\x00run-004")
        await reopened.close()
        await reopened.open()
        assert "run-004" not in await _run_index(reopened)
        assert await _ws_index(reopened) == by_ws - {"other\x00run-004"}
        await reopened._kv.delete(reopened.keys.key("meta/runindex-ws"))
        await reopened._index_runs()
        assert await _ws_index(reopened) == by_ws
        assert "run-004" not in await _run_index(reopened)
        await reopened._kv.delete(reopened.keys.key("meta/runindex"))
        await reopened._index_runs()
        await reopened._index_runs()
        assert await _run_index(reopened) == expected
        assert await _ws_index(reopened) == by_ws

        # Export carries runs, not their index; the import writes it.
        records = [record async for record in reopened.export_snapshot()]
        copy = EtcdStore(endpoints, _prefix(tmp_path / "copy"))
        await copy.open()
        try:
            await copy.import_snapshot(_replay(records))
            assert await _run_index(copy) == expected
            assert await _ws_index(copy) == by_ws
            assert await copy.list_runs(workspace="w") == in_w
            assert await copy.list_runs(statuses=sweep) == listed
            assert [record async for record in copy.export_snapshot()] == records
        finally:
            await copy.close()
    finally:
        await reopened.close()


async def _replay(records: list[Any]) -> AsyncIterator[Any]:
    for record in records:
        yield record


async def _health_until(
    store: EtcdStore, check: Callable[[dict[str, Any]], bool], timeout: float = 10.0
) -> dict[str, Any]:
    """Poll health until `check` holds (a just-killed member may still be picked once)."""
    deadline = time.monotonic() + timeout
    while True:
        started = time.monotonic()
        report = await store.health()
        # The report is capped at 2 s; the margin is for a loaded machine (CI shares 2 cores
        # between the test, three etcd members and their restarts).
        assert time.monotonic() - started < 4.0, "health must answer within its deadline"
        if check(report) or time.monotonic() > deadline:
            return report
        await asyncio.sleep(0.2)


def _member(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(m for m in report["members"] if m["name"] == name)


def _unhealthy(report: dict[str, Any], name: str) -> bool:
    """For polling: the member is listed and reported unhealthy (the member list itself can
    be missing from a report while the endpoint the client asked is the one just killed)."""
    return any(m["name"] == name and not m["healthy"] for m in report["members"])


@pytest.mark.slow
async def test_health_and_unavailability_as_members_die(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import httpx

    from tests import etcd_cluster

    # This process runs gRPC threads: a Python preexec_fn (dlopen in the forked child)
    # sometimes dies with SIGSEGV before etcd starts. The cluster still stops its members.
    monkeypatch.setattr(etcd_cluster, "_die_with_parent", None)

    from blixard.api.app import asgi_app, create_app
    from blixard.config import Settings

    with EtcdCluster(tmp_path / "etcd", 3) as cluster:
        store = EtcdStore(cluster.endpoints, "/ha/")  # the default deadlines, as served
        app = create_app(Settings.load({"data_dir": tmp_path / "data"}), store)
        transport = httpx.ASGITransport(app=asgi_app(app))
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(transport=transport, base_url="http://blixard") as http,
        ):
            # All members up: quorum, a leader, three healthy members.
            report = await _health_until(
                store, lambda r: r["is_healthy"] and r["healthy_members"] == 3
            )
            assert report["engine"] == "etcd" and report["quorum"] is True
            assert report["stale_reads"] is False and report["node_count"] == 3
            assert report["has_leader"] and report["raft_term"] >= 1
            leader = cluster.leader()
            assert report["leader"]["name"] == leader.name
            assert {m["name"] for m in report["members"]} == {"m0", "m1", "m2"}
            assert _member(report, leader.name)["is_leader"]
            assert all(m["client_urls"] for m in report["members"])
            public = await http.get("/health/hiqlite")
            assert public.status_code == 200
            # The endpoint needs no credentials: it does not publish how to reach etcd.
            assert all("client_urls" not in m for m in public.json()["members"])
            assert (await http.post("/api/tofu/state/w", content=state(1))).status_code == 200

            # One follower dies: still quorum (2 of 3), that member reported unhealthy.
            first, second = [m for m in cluster.members if m is not leader]
            cluster.kill(first)
            report = await _health_until(
                store, lambda r: r["is_healthy"] and _unhealthy(r, first.name)
            )
            assert report["is_healthy"] and report["quorum"] and not report["stale_reads"]
            assert report["node_count"] == 3 and report["healthy_members"] == 2
            assert not _member(report, first.name)["healthy"]
            assert (await http.post("/api/tofu/state/w", content=state(2))).status_code == 200

            # A second dies: no quorum. Health says so quickly; writes fail fast with 503.
            cluster.kill(second)
            report = await _health_until(
                store, lambda r: not r["is_healthy"] and r["node_count"] == 3
            )
            assert not report["is_healthy"] and not report["quorum"]
            assert report["stale_reads"] is True and report["node_count"] == 3
            assert report["healthy_members"] <= 1
            response = await http.get("/health/hiqlite")
            assert response.status_code == 503 and response.json()["quorum"] is False

            ws, _ = await store.recent_workspace("w")  # remembered: no etcd read
            assert ws is not None
            started = time.monotonic()
            with pytest.raises(StorageUnavailable):
                await store.put_lock("w", a_lock(), expect_revision=ws.revision, now=3)
            assert time.monotonic() - started < 10
            started = time.monotonic()
            response = await http.post("/api/tofu/state/w", content=state(3))
            assert time.monotonic() - started < 10
            assert response.status_code == 503 and response.headers["Retry-After"] == "1"
            assert response.json()["error"] == "storage_unavailable"
            # Reads fail rather than serve stale data.
            response = await http.get("/api/tofu/state/w")
            assert response.status_code == 503 and "Retry-After" in response.headers

            # Both come back: healthy again, writes work.
            cluster.restart(first)
            cluster.restart(second)
            back = time.monotonic()
            report = await _health_until(
                store, lambda r: r["is_healthy"] and r["healthy_members"] == 3, timeout=15
            )
            assert report["is_healthy"] and report["healthy_members"] == 3
            # restart() returned once each member served a linearizable read, and the
            # probes dial afresh: health says so at once. (Probes that shared the store's
            # connections reported the members dead until gRPC's reconnect backoff ran out:
            # 7-10 s here under load, up to 2 min after a long outage.)
            assert time.monotonic() - back < 6.0, "recovered members reported late"
            assert report["has_leader"] and not report["stale_reads"]
            assert (await http.post("/api/tofu/state/w", content=state(3))).status_code == 200
            head = await store.read_head("w")
            assert head is not None and head[0].serial == 3


async def test_resource_index_of_one_node_follows_the_writes_of_another(tmp_path: Path) -> None:
    """Every node answers searches from memory, kept current by a watch on the head markers."""
    from tests.store.test_engine_suite import found, resources_state

    endpoints, prefix = shared_cluster_endpoints(), _prefix(tmp_path)
    a, b = EtcdStore(endpoints, prefix), EtcdStore(endpoints, prefix)
    await a.open()
    await b.open()
    try:
        await append(a, "w", 1, resources_state(1, {"x.vpc": ("aws_vpc", "v-1")}))
        await append(a, "w", 2, resources_state(2, {"x.vpc": ("aws_vpc", "v-2")}))

        async def settled(expected: list[tuple[str, int, str]], **filters: str) -> None:
            for _ in range(200):
                if found(b, **filters) == expected:
                    return
                await asyncio.sleep(0.05)
            assert found(b, **filters) == expected

        await settled([("w", 2, "aws_vpc.vpc")], id="v-2")
        ws = await a.get_workspace("w")
        assert ws is not None
        await a.set_deleted("w", 5.0, expect_revision=ws.revision, now=5.0)
        await settled([], type="aws_vpc")
    finally:
        await a.close()
        await b.close()


async def test_change_feed_past_a_compaction_reports_lost_events_then_follows() -> None:
    """A watch resuming from a compacted revision cannot replay what it missed: every
    listener is told it lost events (pages re-read), and changes from then on still come,
    sealed lock payloads opened as a lock read opens them."""
    from blixard.domain.events import EventBus
    from blixard.store.crypto import Cipher
    from blixard.store.etcd.changes import ChangeFeed
    from tests.etcd_cluster import private_cluster

    with private_cluster(1) as cluster:
        store = EtcdStore(cluster.endpoints, "/blixard-feed/", cipher=Cipher(b"k" * 32))
        await store.open()
        bus = EventBus()
        listener = bus.listen()
        feed = ChangeFeed(store, bus)
        try:
            root = store.keys.root
            before = int((await store.read_range(root, prefix_end(root), limit=1)).header.revision)
            await append(store, "w", 1)
            await append(store, "w", 2)
            now = int((await store.read_range(root, prefix_end(root), limit=1)).header.revision)
            cluster.run_etcdctl("compaction", str(now))
            feed.start(before)  # as if the watch had stopped at `before`
            woken = await listener.next(10)
            assert woken is not None and woken.is_wake and listener.lost >= 1
            await append(store, "w", 3)
            # Each watched family (records, runs) says so once; then the new version only:
            # versions 1 and 2 are never replayed.
            events = []
            while (event := await listener.next(0.5)) is not None:
                events.append(event)
            assert [(e.kind, e.data.get("version")) for e in events if not e.is_wake] == [
                ("version", 3)
            ]
            assert listener.lost == 2
            # A sealed lock payload: the event names its holder as a lock read would.
            ws = await store.get_workspace("w")
            assert ws is not None
            assert await store.put_lock("w", a_lock(), expect_revision=ws.revision, now=6)
            record = await store.get_kv(store.keys.workspace("w"))
            assert record is not None and b"tester" not in bytes(record.value)
            event = await listener.next(10)
            assert event is not None and event.kind == "lock", event
            expected = {"locked": True, "lock_id": "L1", "who": "tester", "operation": "x"}
            assert event.data == expected
        finally:
            await feed.stop()
            await store.close()


async def test_change_feed_watches_only_while_someone_listens(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nobody listening, no watch (it costs CPU per change anywhere in the cluster); the
    first subscriber starts it before it returns, and it stops a while after the last left."""
    from blixard.domain.events import EventBus
    from blixard.domain.runs import Run, RunStatus
    from blixard.store.etcd import changes

    monkeypatch.setattr(changes, "LINGER_SECONDS", 0.1)
    store = EtcdStore(shared_cluster_endpoints(), _prefix(tmp_path))
    bus = EventBus()
    store.feed_changes(bus)
    await store.open()
    try:
        feed = bus.feeder
        assert isinstance(feed, changes.ChangeFeed) and not feed.running
        await append(store, "w", 1)  # nobody listens: published nowhere
        listener = await bus.subscribe()
        assert feed.running
        await append(store, "w", 2)
        event = await listener.next(10)
        assert event is not None and (event.kind, event.data["version"]) == ("version", 2)
        run = await store.create_run(Run("run-1", "w", RunStatus.queued, 1.0))
        await store.update_run(replace(run, status=RunStatus.planning), expect_revision=1)
        for status in ("queued", "planning"):
            event = await listener.next(10)
            assert event is not None and (event.kind, event.workspace) == ("run", "w"), event
            assert event.data == {"plan_id": "run-1", "status": status}
        listener.close()
        second = await bus.subscribe()  # within the linger: the same watch goes on
        second.close()
        for _ in range(100):
            if not feed.running:
                break
            await asyncio.sleep(0.05)
        assert not feed.running
    finally:
        await store.close()
