"""High availability on a real 3-member etcd cluster with two Blixard nodes (A and B) on the
same prefix: Terraform through either node, one lock across nodes, a killed etcd leader under
write load, server-side runs taken over when the node executing them is killed, and backup /
restore / migrate round trips that keep every version's bytes."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.test_runs import Runs, config_dir, run_processes
from tests.e2e.tfkit import (
    STYLES,
    Api,
    TfProject,
    lock_info,
    lock_race,
    race_winner,
    resource_config,
    unique_name,
)
from tests.etcd_cluster import EtcdCluster, b64
from tests.harness import ServerProcess

pytestmark = pytest.mark.e2e

CONTENDERS = 32
LOCK_ROUNDS = 5
#: The leader-kill test: each writer stops after this many writes or seconds.
MAX_WRITES = 1000
WRITE_SECONDS = 25.0
#: Pause between two writes of one writer (keeps the load steady and the history short).
WRITE_PAUSE = 0.02
#: Generous bound on the write outage after the etcd leader dies (correctness, not speed).
RESUME_BOUND = 15.0
#: The nodes' lease TTL: a killed node's runs are taken over after about this long.
NODE_TTL = 3
#: After SIGINT, how long a run the nodes stop may take before SIGKILL.
GRACE_SECONDS = 2


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def hosts(cluster: EtcdCluster) -> str:
    return ",".join(e.removeprefix("http://") for e in cluster.endpoints)


@dataclass
class Nodes:
    cluster: EtcdCluster
    prefix: str
    a: ServerProcess
    b: ServerProcess
    plan_root: Path
    api_a: Api = field(init=False)
    api_b: Api = field(init=False)

    def __post_init__(self) -> None:
        self.api_a = Api(self.a.url)
        self.api_b = Api(self.b.url)

    @property
    def storage_url(self) -> str:
        return f"etcd://{hosts(self.cluster)}/{self.prefix}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EtcdCluster]:
    with EtcdCluster(tmp_path_factory.mktemp("etcd"), 3) as etcd:
        yield etcd


def node(root: Path, name: str, storage_url: str) -> ServerProcess:
    (root / "plans").mkdir(exist_ok=True)
    return ServerProcess(
        root / name,
        env={
            "BLIXARD_STORAGE_URL": storage_url,
            "BLIXARD_TOFU_BIN": "embedded",
            "BLIXARD_PLAN_ROOTS": str(root / "plans"),
            "BLIXARD_NODE_TTL": str(NODE_TTL),
            "BLIXARD_CANCEL_GRACE_SECONDS": str(GRACE_SECONDS),
        },
        log_path=root / f"{name}.log",
    )


@pytest.fixture(scope="module")
def nodes(cluster: EtcdCluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Nodes]:
    root = tmp_path_factory.mktemp("ha")
    prefix = f"blixard-ha-{uuid.uuid4().hex[:8]}"
    url = f"etcd://{hosts(cluster)}/{prefix}"
    a = node(root, "node-a", url).start()
    try:
        b = node(root, "node-b", url).start()
    except BaseException:
        a.stop()
        raise
    pair = Nodes(cluster, prefix, a, b, root / "plans")
    try:
        yield pair
    finally:
        pair.api_a.close()
        pair.api_b.close()
        a.stop()
        b.stop()
    for srv in (a, b):
        log = srv.log_path.read_text(errors="replace")
        assert "Traceback" not in log, f"{srv.log_path} logged a traceback:\n{log[-4000:]}"


@pytest.fixture
def projects() -> Iterator[list[TfProject]]:
    made: list[TfProject] = []
    yield made
    for proj in made:
        proj.cleanup()


def project(
    made: list[TfProject], tmp_path: Path, env: dict[str, str], name: str, url: str, ws: str
) -> TfProject:
    proj = TfProject(tmp_path / name, env, url, ws, STYLES[0])
    made.append(proj)
    return proj


def versions(api: Api, ws: str) -> list[tuple[int, int, str]]:
    """(version, serial, sha256) of every version of ws, oldest first."""
    return sorted((v["version"], v["serial"], v["sha256"]) for v in api.history(ws))


# --------------------------------------------------------------------------- Terraform


def test_terraform_apply_through_a_then_b(
    nodes: Nodes, tmp_path: Path, tf_env: dict[str, str], projects: list[TfProject]
) -> None:
    ws = unique_name("ha-tf")
    first = project(projects, tmp_path, tf_env, "a", nodes.a.url, ws)
    first.write(resource_config("one"))
    first.run("init", "-input=false")
    first.run("apply", "-auto-approve", "-input=false")

    second = project(projects, tmp_path, tf_env, "b", nodes.b.url, ws)
    second.write(resource_config("two"))
    second.run("init", "-input=false")
    plan = second.run("apply", "-auto-approve", "-input=false")
    # B read A's state: the resource is updated in place, not created again.
    assert "Resources: 0 added, 1 changed, 0 destroyed" in plan.flat, plan.describe()

    seen_a, seen_b = versions(nodes.api_a, ws), versions(nodes.api_b, ws)
    assert seen_a == seen_b
    assert [v for v, _, _ in seen_a] == [1, 2], seen_a
    head_a, head_b = nodes.api_a.state_bytes(ws), nodes.api_b.state_bytes(ws)
    assert head_a == head_b
    assert sha(head_a) == seen_a[-1][2]
    assert json.loads(head_a)["outputs"]["value"]["value"] == "two"
    for number, _, digest in seen_a:
        body_a = nodes.api_a.state_bytes(ws, number)
        assert body_a == nodes.api_b.state_bytes(ws, number)
        assert sha(body_a) == digest


def test_lock_through_a_blocks_terraform_through_b(
    nodes: Nodes, tmp_path: Path, tf_env: dict[str, str], projects: list[TfProject]
) -> None:
    ws = unique_name("ha-lock")
    proj = project(projects, tmp_path, tf_env, "b", nodes.b.url, ws)
    proj.write(resource_config("first"))
    proj.run("init", "-input=false")
    proj.run("apply", "-auto-approve", "-input=false")

    holder = lock_info(f"held-{uuid.uuid4()}", who="ops@node-a")
    taken = nodes.api_a.send_lock("LOCK", "lock", ws, holder)
    assert taken.status_code == 200, (taken.status_code, taken.text)
    assert nodes.api_b.wait_locked(ws, timeout=5)["ID"] == holder["ID"]

    proj.write(resource_config("second"))
    blocked = proj.run("apply", "-auto-approve", "-input=false", ok=False)
    assert blocked.returncode != 0, blocked.describe()
    assert f"HTTP remote state already locked: ID={holder['ID']}" in blocked.flat
    assert f"Who: {holder['Who']}" in blocked.flat, blocked.describe()
    assert len(nodes.api_a.history(ws)) == 1  # nothing written while blocked

    released = nodes.api_b.send_lock("UNLOCK", "unlock", ws, holder)
    assert released.status_code == 200, (released.status_code, released.text)
    assert not nodes.api_a.is_locked(ws)
    proj.run("apply", "-auto-approve", "-input=false")
    seen = versions(nodes.api_a, ws)
    assert [v for v, _, _ in seen] == [1, 2], seen
    assert json.loads(nodes.api_a.state_bytes(ws))["outputs"]["value"]["value"] == "second"
    assert not nodes.api_b.is_locked(ws)


# --------------------------------------------------------------------------- lock race


def test_32_concurrent_locks_over_both_nodes(nodes: Nodes) -> None:
    urls = [nodes.a.url, nodes.b.url]
    clients = [
        httpx.Client(base_url=urls[i % 2] + "/api/tofu", timeout=30.0) for i in range(CONTENDERS)
    ]
    try:
        for client in clients:  # connected before the race starts
            assert client.get("/workspaces").status_code == 200
        ws = unique_name("ha-race")
        for round_no in range(LOCK_ROUNDS):
            # Contenders alternate nodes (client i on node i % 2) and routes.
            outcome = lock_race(
                clients,
                ws,
                round_no,
                who=lambda i: f"racer-{i}@node-{'ab'[i % 2]}",
                route_slot=lambda i: i // 2,
                join_seconds=40,
            )
            winner = race_winner(outcome)
            for api in (nodes.api_a, nodes.api_b):
                status = api.lock_status(ws).json()
                assert status["locked"] is True and status["lock"]["ID"] == winner["ID"]
            released = nodes.api_b.send_lock("UNLOCK", "unlock", ws, winner)
            assert released.status_code == 200, (released.status_code, released.text)
            assert not nodes.api_a.is_locked(ws)
    finally:
        for client in clients:
            client.close()


# --------------------------------------------------------------------------- etcd leader kill


def state_body(serial: int, lineage: str) -> bytes:
    doc = {
        "version": 4,
        "terraform_version": "1.15.5",
        "serial": serial,
        "lineage": lineage,
        "outputs": {"n": {"value": serial, "type": "number"}},
        "resources": [{"type": "terraform_data", "name": f"r{serial}", "pad": "x" * serial}],
        "check_results": None,
    }
    return json.dumps(doc, indent=2).encode()


@dataclass
class Writer:
    """POSTs increasing serials to one workspace through one node until told to stop."""

    url: str
    ws: str
    acked: dict[int, str] = field(default_factory=dict)  # serial -> sha256 of the body
    outcomes: list[tuple[float, float, int | str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        lineage = str(uuid.uuid4())
        deadline = time.monotonic() + WRITE_SECONDS
        with httpx.Client(base_url=self.url + "/api/tofu", timeout=10.0) as http:
            for serial in range(1, MAX_WRITES + 1):
                if self.stop.is_set() or time.monotonic() > deadline:
                    return
                body = state_body(serial, lineage)
                started = time.monotonic()
                try:
                    status: int | str = http.post(f"/state/{self.ws}", content=body).status_code
                except httpx.HTTPError as exc:
                    status = type(exc).__name__
                self.outcomes.append((started, time.monotonic(), status))
                if isinstance(status, int) and 200 <= status < 300:
                    self.acked[serial] = sha(body)
                time.sleep(WRITE_PAUSE)

    def resumed_after(self, moment: float) -> float | None:
        """Seconds from `moment` to the end of the first 2xx write started after it."""
        for started, ended, status in self.outcomes:
            if started >= moment and isinstance(status, int) and 200 <= status < 300:
                return ended - moment
        return None


class EventStream:
    """GET /api/tofu/events on one node with one key, read on a thread: the data events."""

    def __init__(self, url: str, key: str | None = None) -> None:
        self.events: list[dict[str, Any]] = []
        self.ready = threading.Event()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._client = httpx.Client(base_url=url, headers=headers, timeout=60)
        threading.Thread(target=self._read, daemon=True).start()
        assert self.ready.wait(15), "the stream never said ready"

    def _read(self) -> None:
        with (
            contextlib.suppress(httpx.HTTPError),
            self._client.stream("GET", "/api/tofu/events") as stream,
        ):
            for line in stream.iter_lines():
                if line == "event: ready":
                    self.ready.set()
                elif line.startswith('data: {"'):
                    self.events.append(json.loads(line[6:]))

    def wait_for(
        self, workspace: str, kind: str, version: int | None = None, timeout: float = 20.0
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for e in list(self.events):
                if (e["workspace"], e["type"]) == (workspace, kind) and version in (
                    None,
                    e.get("version"),
                ):
                    return
            time.sleep(0.05)
        raise AssertionError(f"no {kind} event of {workspace}: {self.events[-20:]}")

    def seen(self, workspace: str) -> list[tuple[Any, ...]]:
        return [
            (e["type"], e.get("locked"), e.get("lock_id"), e.get("who"), e.get("version"))
            for e in self.events
            if e["workspace"] == workspace
        ]

    def close(self) -> None:
        self._client.close()


def test_etcd_leader_killed_under_write_load(nodes: Nodes) -> None:
    writers = [
        Writer(nodes.a.url, unique_name("ha-load-a")),
        Writer(nodes.b.url, unique_name("ha-load-b")),
    ]
    threads = [threading.Thread(target=w.run, daemon=True) for w in writers]
    leader = nodes.cluster.leader()
    killed = False
    # Node A's live events: its watch must resume across the leader change, losing nothing.
    stream = EventStream(nodes.a.url)
    try:
        try:
            for t in threads:
                t.start()
            time.sleep(1.0)
            assert all(w.acked for w in writers), [w.outcomes[:5] for w in writers]
            assert all(t.is_alive() for t in threads), "a writer stopped before the kill"
            nodes.cluster.kill(leader)
            killed = True
            killed_at = time.monotonic()
            # Keep writing until both writers have come back (bounded), then a little more.
            deadline = killed_at + RESUME_BOUND + 2
            while time.monotonic() < deadline and not all(
                w.resumed_after(killed_at) is not None for w in writers
            ):
                time.sleep(0.1)
            time.sleep(1.0)
            assert all(t.is_alive() for t in threads), "a writer stopped before the end"
        finally:
            for w in writers:
                w.stop.set()
            for t in threads:
                t.join(15)
        assert not any(t.is_alive() for t in threads)
        resumed = [w.resumed_after(killed_at) for w in writers]
        for w, took in zip(writers, resumed, strict=True):
            failures = [o for o in w.outcomes if not (isinstance(o[2], int) and o[2] < 300)]
            assert took is not None, (w.url, failures[-10:])
            assert took < RESUME_BOUND, (w.url, took, failures[-10:])
            print(
                f"{w.ws}: {len(w.acked)} acknowledged, failed {[o[2] for o in failures]}, "
                f"resumed {took:.2f} s after the leader was killed"
            )

        for w in writers:
            assert len(w.acked) >= 10, w.outcomes
            for api in (nodes.api_a, nodes.api_b):
                history = api.history(w.ws)
                by_serial = {v["serial"]: v for v in history}
                for serial, digest in w.acked.items():
                    assert serial in by_serial, (w.ws, serial, sorted(by_serial))
                    meta = by_serial[serial]
                    assert meta["sha256"] == digest, (w.ws, serial, meta)
                    body = api.state_bytes(w.ws, meta["version"])
                    assert sha(body) == digest, (w.ws, serial)
            # Every version, acknowledged or not (a write whose answer the kill lost may
            # have committed), once each, in order, whichever node wrote it.
            numbers = sorted(v["version"] for v in nodes.api_a.history(w.ws))
            stream.wait_for(w.ws, "version", version=numbers[-1])
            assert [e[4] for e in stream.seen(w.ws)] == numbers, stream.seen(w.ws)
    finally:
        stream.close()
        if killed:
            nodes.cluster.restart(leader)
            nodes.cluster.wait_healthy()


# --------------------------------------------------------------------------- backup/migrate


def blixard(*args: str, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "blixard", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result


def everything(url: str, *, bodies: bool) -> dict[str, Any]:
    """Every workspace's versions (number, serial, sha256), head bytes and whether it is locked,
    through the API;
    with `bodies`, every version's bytes checked against its sha256."""
    api = Api(url)
    try:
        resp = api.http.get("/workspaces")
        assert resp.status_code == 200, resp.text
        names = sorted(w["name"] for w in resp.json()["workspaces"])
        seen: dict[str, Any] = {}
        for name in names:
            listed = versions(api, name)
            if bodies:
                for number, _, digest in listed:
                    assert sha(api.state_bytes(name, number)) == digest, (url, name, number)
            head = api.get_state(name)
            assert head.status_code in (200, 404), (url, name, head.status_code, head.text)
            seen[name] = {
                "versions": listed,
                "head": sha(head.content) if head.status_code == 200 else None,
                "locked": api.is_locked(name),
            }
        return seen
    finally:
        api.close()


def test_backup_restore_and_migrate_round_trip(nodes: Nodes, tmp_path: Path) -> None:
    ws = unique_name("ha-backup")
    with httpx.Client(base_url=nodes.a.url + "/api/tofu", timeout=15.0) as http:
        lineage = str(uuid.uuid4())
        for serial in range(1, 4):
            resp = http.post(f"/state/{ws}", content=state_body(serial, lineage))
            assert resp.status_code == 200, resp.text
    original = everything(nodes.b.url, bodies=False)
    assert ws in original and len(original[ws]["versions"]) == 3

    file = tmp_path / "ha.bxs"
    blixard("backup", str(file), "--url", nodes.a.url)
    restored_dir = tmp_path / "restored"
    blixard("restore", str(file), "--data-dir", str(restored_dir))
    with ServerProcess(restored_dir, log_path=tmp_path / "restored.log") as restored:
        from_restore = everything(restored.url, bodies=True)
    assert from_restore == original

    other_prefix = f"blixard-ha-other-{uuid.uuid4().hex[:8]}"
    etcd_url = f"etcd://{hosts(nodes.cluster)}/{other_prefix}"
    blixard(
        "migrate",
        "--from",
        f"sqlite:///{restored_dir / 'blixard.db'}",
        "--to",
        etcd_url,
        "--to-unencrypted",
    )
    back_dir = tmp_path / "back"
    back_dir.mkdir()
    blixard(
        "migrate",
        "--from",
        etcd_url,
        "--to",
        f"sqlite:///{back_dir / 'blixard.db'}",
        "--to-unencrypted",
    )
    with node(tmp_path, "node-other", etcd_url) as on_etcd:
        from_etcd = everything(on_etcd.url, bodies=False)
    with ServerProcess(back_dir, log_path=tmp_path / "back.log") as back:
        from_back = everything(back.url, bodies=True)
    assert from_etcd == original
    assert from_back == original


# --------------------------------------------------------------------------- runs across nodes


def executing_on(srv: ServerProcess, plan_id: str) -> bool:
    """Whether the run has a work directory under this node's data directory."""
    return any((srv.data_dir / "runs").glob(f"{plan_id}-*"))


def test_killed_node_run_is_interrupted_by_the_other_which_runs_the_queue(nodes: Nodes) -> None:
    """SIGKILL the node executing an apply: the other node marks it interrupted once the
    dead node's lease expires, releases the state lock it held, executes the run that was
    queued behind it on the dead node, and plans as usual."""
    ws = unique_name("ha-run")
    slow = config_dir(nodes.plan_root, "slow")
    clients = {"a": Runs(nodes.a.url, None), "b": Runs(nodes.b.url, None)}
    doomed: ServerProcess | None = None
    try:
        first = clients["a"].create(ws, slow, auto_approve=True, variables={"sleep": "60"})
        clients["a"].wait_log(first["plan_id"], "Provisioning with 'local-exec'")
        held = nodes.api_a.wait_locked(ws, timeout=5)
        queued = clients["a"].create(ws, slow, auto_approve=True, variables={"value": "two"})
        # Node A took the run (unless B's sweep won the claim by a hair): kill the one running it.
        on_a = executing_on(nodes.a, first["plan_id"])
        doomed, survivor = (nodes.a, clients["b"]) if on_a else (nodes.b, clients["a"])
        survivor_api = nodes.api_b if on_a else nodes.api_a
        assert executing_on(doomed, first["plan_id"])
        executor = survivor.get(first["plan_id"])["executor"]
        assert executor and survivor.get(queued["plan_id"])["status"] == "queued"

        doomed.kill()
        killed_at = time.monotonic()
        interrupted = survivor.wait(first["plan_id"], "errored", timeout=NODE_TTL + 12)
        took = time.monotonic() - killed_at
        print(f"run interrupted {took:.1f} s after its node was killed (TTL {NODE_TTL} s)")
        assert took < NODE_TTL + 7, took
        assert interrupted["error"] == f"interrupted: node {executor} is gone (its lease expired)"
        assert interrupted["executor"] == executor and interrupted["finished_at"]
        # Its lock was released by Blixard (audited), and only that lock. The release follows
        # the run's status change in the same sweep: wait for its event, not for a time.
        deadline = time.monotonic() + 15
        while True:
            events = survivor.http.get("/audit", params={"workspace": ws}).json()["events"]
            forced = [e for e in events if e["action"] == "lock.force_unlock"]
            if forced or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert [(e["lock_id"], e["key"]) for e in forced] == [(held["ID"], "blixard")], events
        assert any(first["plan_id"] in (e["detail"] or "") for e in events), events
        # The orphaned `sleep` of the killed node's Terraform was killed with it.
        deadline = time.monotonic() + 10
        while run_processes(doomed):
            assert time.monotonic() < deadline, run_processes(doomed)
            time.sleep(0.1)

        # The run queued on the dead node runs on the live one, with a lock of its own.
        done = survivor.wait(queued["plan_id"], "applied", timeout=60)
        health = httpx.get(f"{survivor_api.base_url}/health/hiqlite", timeout=10)
        assert [n["id"] for n in health.json()["blixard_nodes"]] == [done["executor"]], health.text
        assert survivor.state(ws)["outputs"]["value"]["value"] == "two"
        assert not survivor.locked(ws)
        holder = lock_info(f"after-{uuid.uuid4()}", who="ops@survivor")
        assert survivor_api.send_lock("LOCK", "lock", ws, holder).status_code == 200
        assert survivor_api.send_lock("UNLOCK", "unlock", ws, holder).status_code == 200
        again = survivor.create(ws, slow, variables={"value": "three"})
        assert survivor.wait(again["plan_id"], "planned")["summary"]["change"] == 1
        assert survivor.http.post(f"/plans/{again['plan_id']}/discard").status_code == 200
    finally:
        for client in clients.values():
            client.close()
        if doomed is not None:
            for pid in run_processes(doomed):  # only if the test failed early
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            doomed.start()  # the module's other tests and teardown expect both nodes


def test_node_that_loses_its_lease_stops_its_run_and_comes_back(nodes: Nodes) -> None:
    """Revoke the lease of the node executing an apply (as etcd does after a partition longer
    than the TTL) while the other node is frozen (SIGSTOP), so that only the node itself
    reacts: it stops its run, marks it interrupted, releases its lock, logs the loss and
    takes a new lease."""
    ws = unique_name("ha-lease")
    clients = {"a": Runs(nodes.a.url, None), "b": Runs(nodes.b.url, None)}
    frozen: ServerProcess | None = None
    try:
        run = clients["a"].create(
            ws, config_dir(nodes.plan_root, "lease"), auto_approve=True, variables={"sleep": "60"}
        )
        clients["a"].wait_log(run["plan_id"], "Provisioning with 'local-exec'")
        on_a = executing_on(nodes.a, run["plan_id"])
        owner, client = (nodes.a, clients["a"]) if on_a else (nodes.b, clients["b"])
        executor = client.get(run["plan_id"])["executor"]
        log_start = owner.log_path.stat().st_size
        frozen = nodes.b if on_a else nodes.a
        assert frozen.proc is not None
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        with nodes.cluster.gateway(nodes.cluster.running_members()[0]) as etcd:
            key = f"/{nodes.prefix}/nodes/{executor}"
            (record,) = etcd.call("kv/range", {"key": b64(key)})["kvs"]
            etcd.call("lease/revoke", {"ID": record["lease"]})

        ended = client.wait(run["plan_id"], "errored", timeout=NODE_TTL + GRACE_SECONDS + 10)
        assert ended["error"] == f"interrupted: node {executor} lost its lease", ended
        client.wait_unlocked(ws, timeout=10)
        assert not run_processes(owner)
    finally:
        if frozen is not None and frozen.proc is not None:
            os.kill(frozen.proc.pid, signal.SIGCONT)
        for client in clients.values():
            client.close()
    # Both nodes hold a lease again (the frozen one lost its own too, and takes a new one).
    deadline = time.monotonic() + 15
    while len(live_node_ids(nodes.a)) < 2:
        assert time.monotonic() < deadline, live_node_ids(nodes.a)
        time.sleep(0.1)
    assert executor in live_node_ids(nodes.b)
    logged = owner.log_path.read_bytes()[log_start:].decode(errors="replace")
    assert f"node {executor} lost its lease" in logged, logged
    assert f"node {executor} holds a new lease" in logged, logged


def test_cancel_through_the_node_not_executing_the_run(nodes: Nodes) -> None:
    """The executing node picks the cancel request up at its next sweep (TTL/3)."""
    ws = unique_name("ha-cancel")
    clients = [Runs(nodes.a.url, None), Runs(nodes.b.url, None)]
    try:
        run = clients[0].create(
            ws, config_dir(nodes.plan_root, "cancel"), auto_approve=True, variables={"sleep": "60"}
        )
        clients[0].wait_log(run["plan_id"], "Provisioning with 'local-exec'")
        other = clients[1] if executing_on(nodes.a, run["plan_id"]) else clients[0]
        started = time.monotonic()
        resp = other.http.post(f"/plans/{run['plan_id']}/cancel")
        assert resp.status_code == 200, resp.text
        other.wait(run["plan_id"], "cancelled", timeout=NODE_TTL + 10)
        assert time.monotonic() - started < NODE_TTL + 10
        other.wait_unlocked(ws, timeout=10)
    finally:
        for client in clients:
            client.close()


def live_node_ids(srv: ServerProcess) -> list[str]:
    health = httpx.get(f"{srv.url}/health/hiqlite", timeout=10)
    return [n["id"] for n in health.json()["blixard_nodes"]]


# --------------------------------------------------------------------------- live events


def test_node_a_streams_what_was_done_through_node_b_once_and_in_scope(nodes: Nodes) -> None:
    """Each node publishes the changes made through any node (an etcd watch), its own
    included, once each; a key scoped elsewhere never hears of them. (Across an etcd leader
    change: test_etcd_leader_killed_under_write_load.)"""
    tag = uuid.uuid4().hex[:8]
    ws, other = f"live-{tag}", f"elsewhere-{tag}"
    open_a = httpx.Client(base_url=nodes.a.url + "/api/tofu", timeout=15)
    created = open_a.post("/keys", json={"name": f"live-admin-{tag}", "role": "admin"})
    assert created.status_code == 201, created.text
    admin_secret = created.json()["secret"]
    admin_a = httpx.Client(
        base_url=nodes.a.url + "/api/tofu",
        headers={"Authorization": f"Bearer {admin_secret}"},
        timeout=15,
    )
    # Node B may still see an open server for a few seconds (its key cache): the key is
    # accepted either way.
    admin_b = httpx.Client(
        base_url=nodes.b.url + "/api/tofu",
        headers={"Authorization": f"Bearer {admin_secret}"},
        timeout=15,
    )
    scoped = admin_a.post(
        "/keys", json={"name": f"live-scoped-{tag}", "role": "reader", "workspaces": "elsewhere-*"}
    )
    assert scoped.status_code == 201, scoped.text
    everything = EventStream(nodes.a.url, admin_secret)
    elsewhere = EventStream(nodes.a.url, scoped.json()["secret"])
    try:
        holder = lock_info(f"live-lock-{tag}", who="live@node-b")
        assert admin_b.post(f"/lock/{ws}", json=holder).status_code == 200
        resp = admin_b.post(f"/state/{ws}?ID={holder['ID']}", content=state_body(1, tag))
        assert resp.status_code == 200, resp.text
        assert admin_b.post(f"/unlock/{ws}", json=holder).status_code == 200
        assert admin_b.post(f"/state/{ws}", content=state_body(2, tag)).status_code == 200
        # Node A's own write, then one through B that only the scoped key may see: once it
        # arrives, everything before it has (one watch, in etcd's order).
        assert admin_a.post(f"/state/{ws}", content=state_body(3, tag)).status_code == 200
        assert admin_b.post(f"/state/{other}", content=state_body(1, tag)).status_code == 200
        everything.wait_for(other, "version")
        elsewhere.wait_for(other, "version")
        holder_id = holder["ID"]
        assert everything.seen(ws) == [
            ("lock", True, holder_id, "live@node-b", None),
            ("version", None, None, None, 1),
            ("lock", False, None, None, None),
            ("version", None, None, None, 2),
            ("version", None, None, None, 3),
        ], everything.events
        assert everything.seen(other) == [("version", None, None, None, 1)]
        assert elsewhere.seen(ws) == [], elsewhere.events
        assert elsewhere.seen(other) == [("version", None, None, None, 1)]
    finally:
        everything.close()
        elsewhere.close()
        for name in (f"live-scoped-{tag}", f"live-admin-{tag}"):
            assert admin_a.delete(f"/keys/{name}").status_code == 200
        # The nodes are open servers again for the other tests (B within its key cache).
        deadline = time.monotonic() + 15
        while httpx.get(nodes.b.url + "/api/tofu/workspaces", timeout=5).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.2)
        for client in (open_a, admin_a, admin_b):
            client.close()
