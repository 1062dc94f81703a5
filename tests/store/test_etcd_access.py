"""Reaching etcd by host name, over TLS with client certificates, as an etcd user; and
compaction that leaves running exports alone.

One etcd member for the whole module serves TLS on 127.0.0.1 (certificate for 127.0.0.1 and
localhost, made here with `cryptography`), requires client certificates and has etcd's
authentication on: root, and a user `blixard` whose role may use `/blx/` only; tokens expire
after one second of disuse. The
certificate the engine presents has a CN that is not an etcd user, so the password is what
lets it in. Host-name tests use the shared plaintext cluster.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from blixard.domain.errors import StorageUnavailable
from blixard.store import open_store_from_url
from blixard.store.etcd import EtcdStore
from blixard.store.etcd.conn import Compaction, EtcdOptions, parse_etcd_url
from blixard.store.snapshot import SnapshotBegin, VersionRecord
from tests.etcd_cluster import (
    ClusterTls,
    EtcdCluster,
    kv_requests,
    leader_endpoint,
    shared_cluster_endpoints,
)
from tests.harness import ServerProcess
from tests.pki import issue
from tests.store.test_engine_suite import append, found, resources_state, state

pytestmark = pytest.mark.anyio

PASSWORD = "s3cret-Blixard-pw"
ROOT_PASSWORD = "r00t-pw-for-tests"


@dataclass(frozen=True)
class Secure:
    cluster: EtcdCluster
    ca: Path
    cert: Path
    key: Path
    password_file: Path
    #: The member's second client listener, on [::1].
    v6_port: int

    @property
    def port(self) -> int:
        return self.cluster.members[0].client_port

    def url(self, prefix: str, host: str = "localhost", **query: str) -> str:
        """etcds:// with the CA and client certificate in the query unless overridden."""
        options = {"ca": str(self.ca), "cert": str(self.cert), "key": str(self.key), **query}
        text = "&".join(f"{k}={v}" for k, v in options.items() if v)
        return f"etcds://{host}:{self.port}/blx/{prefix}?{text}"

    def store(self, prefix: str, *, password: str = PASSWORD, **kwargs: Any) -> EtcdStore:
        opened = open_store_from_url(
            self.url(prefix), etcd=EtcdOptions(user="blixard", password=password, **kwargs)
        )
        assert isinstance(opened, EtcdStore)
        return opened


@pytest.fixture(scope="module")
def secure(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secure]:
    pki = tmp_path_factory.mktemp("etcd-pki")
    ca = issue(pki, "etcd-test-ca", ca=True)
    member = issue(pki, "etcd-member", issuer=ca, server=True, client=True)
    admin = issue(pki, "etcd-admin", issuer=ca, client=True, common_name=False)
    engine = issue(pki, "blixard-client", issuer=ca, client=True)  # CN is no etcd user
    tls = ClusterTls(
        ca.cert_path, member.cert_path, member.key_path, admin.cert_path, admin.key_path
    )
    password_file = pki / "etcd-password"
    password_file.write_text(PASSWORD + "\n")
    root = tmp_path_factory.mktemp("etcd-secure")
    ttl = ["--auth-token-ttl", "1"]  # tokens expire after a second of disuse
    cluster = EtcdCluster(root, 1, tls=tls, extra_args=ttl)
    # Also on [::1] (the later flag wins); the certificate does not name that address.
    with socket.socket(socket.AF_INET6) as sock:
        sock.bind(("::1", 0))
        v6_port = sock.getsockname()[1]
    listen = f"{cluster.members[0].client_url},https://[::1]:{v6_port}"
    cluster.extra_args += ["--listen-client-urls", listen]
    with cluster:
        cluster.enable_auth(ROOT_PASSWORD)
        cluster.run_etcdctl("user", "add", f"blixard:{PASSWORD}")
        cluster.run_etcdctl("role", "add", "blx")
        cluster.run_etcdctl("role", "grant-permission", "blx", "--prefix", "readwrite", "/blx/")
        cluster.run_etcdctl("user", "grant-role", "blixard", "blx")
        yield Secure(
            cluster, ca.cert_path, engine.cert_path, engine.key_path, password_file, v6_port
        )


# --------------------------------------------------------------------------- URLs


def test_url_options_and_settings(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    target = parse_etcd_url(f"etcds://h1,[::1]:2380,10.0.0.3:2379/team/x?ca={ca}")
    assert target.endpoints == ["h1:2379", "[::1]:2380", "10.0.0.3:2379"]
    assert target.prefix == "/team/x/"
    assert target.access.tls and target.access.ca == ca.read_bytes()
    # The user came from the URL, the password from the settings' file.
    target = parse_etcd_url("etcds://blixard@h1/x", EtcdOptions(password_file=pw))
    assert (target.access.user, target.access.password) == ("blixard", "from-file")
    assert "from-file" not in repr(target)
    # Settings fill in what the URL leaves out; the query wins; plaintext URLs ignore TLS.
    settings = EtcdOptions(ca_cert=ca, user="u", password="p")
    assert parse_etcd_url("etcds://h1/x", settings).access.ca == ca.read_bytes()
    assert parse_etcd_url("etcds://h1/x?user=v", settings).access.user == "v"
    plain = parse_etcd_url("etcd://h1/x", settings).access
    assert not plain.tls and plain.ca is None and plain.user == "u"

    refused = {
        "etcd://u:hunter2@h1/x": "do not put the password in the URL",
        "etcd://h1/x?ca=/a": "use etcds:// for TLS",
        "etcds://h1/x?bogus=1": "unknown option bogus",
        "etcds://h1/x?cert=/a": "needs its key",
        "etcds://h1/x?ca=/nonexistent/ca.pem": "/nonexistent/ca.pem: cannot read",
        "etcd://u@h1/x": "etcd user 'u' needs a password",
        "etcd://h1:99999/x": "port must be a number",
        "etcd://h1,/x?user=": "needs exactly one value",
        "http://h1/x": "looks like etcd://",
    }
    for url, message in refused.items():
        with pytest.raises(ValueError, match=message) as caught:
            parse_etcd_url(url)
        assert "hunter2" not in str(caught.value) and "\n" not in str(caught.value)
    with pytest.raises(ValueError, match="no user"):
        parse_etcd_url("etcd://h1/x", EtcdOptions(password="p"))


# --------------------------------------------------------------------------- host names


async def test_endpoints_by_host_name(tmp_path: Path) -> None:
    """localhost resolves to ::1 and 127.0.0.1; the members listen on the latter only."""
    hosts = ",".join("localhost:" + e.rpartition(":")[2] for e in shared_cluster_endpoints())
    digest = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    store = open_store_from_url(f"etcd://{hosts}/blixard-names/{digest}")
    await store.open()
    try:
        assert await append(store, "w", 1) == 1
        head = await store.read_head("w")
        assert head is not None and head[1] == state(1)
        health = await store.health()
        assert health["is_healthy"] and health["healthy_members"] == 3
    finally:
        await store.close()


async def test_calls_go_to_the_leader_found_address_by_address(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Names that resolve to several addresses (here each to ::1, where nothing listens, and
    127.0.0.1, as localhost does on dual-stack hosts): the leader is found by asking each
    address which member answers, and the KV calls go to that member alone."""
    from blixard.store.etcd import conn as etcd_conn

    async def dual_stack(endpoint: str) -> list[str]:
        port = endpoint.rpartition(":")[2]
        return [f"ipv6:[::1]:{port}", f"ipv4:127.0.0.1:{port}"]

    monkeypatch.setattr(etcd_conn, "_resolve", dual_stack)
    endpoints = shared_cluster_endpoints()
    hosts = ",".join("localhost:" + e.rpartition(":")[2] for e in endpoints)
    digest = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    store = open_store_from_url(f"etcd://{hosts}/blixard-leader/{digest}")
    await store.open()
    try:
        leader = leader_endpoint(endpoints)
        before = {e: kv_requests(e) for e in endpoints}
        for serial in range(1, 4):
            assert await append(store, "w", serial) == serial
            assert await store.read_head("w") is not None
        moved = {e: kv_requests(e) - before[e] for e in endpoints}
        assert moved[leader] >= 9, moved
        assert all(n == 0 for e, n in moved.items() if e != leader), moved
    finally:
        await store.close()


async def test_a_user_is_not_needed_where_etcd_auth_is_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Like etcd's own client: a configured user on a cluster without auth is a warning."""
    digest = hashlib.sha256(str(tmp_path).encode()).hexdigest()[:12]
    hosts = ",".join(e.removeprefix("http://") for e in shared_cluster_endpoints())
    store = open_store_from_url(
        f"etcd://{hosts}/blixard-noauth/{digest}", etcd=EtcdOptions(user="u", password="p")
    )
    with caplog.at_level(logging.WARNING, logger="blixard.store.etcd.conn"):
        await store.open()
    try:
        assert "etcd authentication is not enabled on the cluster" in caplog.text
        assert await append(store, "w", 1) == 1
    finally:
        await store.close()


# --------------------------------------------------------------------------- TLS and auth


async def test_tls_client_certificate_and_password(secure: Secure) -> None:
    store = secure.store("tls")
    await store.open()
    try:
        assert await append(store, "w", 1) == 1
        head = await store.read_head("w")
        assert head is not None and head[1] == state(1)
        health = await store.health()
        assert health["is_healthy"] and health["has_leader"]
        # The member was probed on its own https URL with the same certificates.
        assert health["members"][0]["healthy"]
        assert health["members"][0]["client_urls"] == [secure.cluster.members[0].client_url]
    finally:
        await store.close()
    # By IP address too (the certificate names 127.0.0.1), password from a file.
    target = parse_etcd_url(
        secure.url("tls", host="127.0.0.1"),
        EtcdOptions(user="blixard", password_file=secure.password_file),
    )
    again = EtcdStore(target.endpoints, target.prefix, access=target.access)
    await again.open()
    try:
        head = await again.read_head("w")
        assert head is not None and head[0].version == 1
    finally:
        await again.close()


async def test_the_leader_is_found_over_tls_address_by_address(
    secure: Secure, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A name with two addresses over TLS: each address is asked on a channel of its own
    that still checks the certificate against the name (the member's names 127.0.0.1 and
    localhost, not ::1), and the calls then go through the leader's."""
    from blixard.store.etcd import conn as etcd_conn

    async def dual_stack(endpoint: str) -> list[str]:
        port = endpoint.rpartition(":")[2]
        return [f"ipv6:[::1]:{port}", f"ipv4:127.0.0.1:{port}"]

    monkeypatch.setattr(etcd_conn, "_resolve", dual_stack)
    store = secure.store("tls-leader")
    with caplog.at_level(logging.DEBUG, logger="blixard.store.etcd.conn"):
        await store.open()
    try:
        assert f"reached at localhost:{secure.port} at ipv4:127.0.0.1:{secure.port}" in caplog.text
        assert await append(store, "w", 1) == 1
    finally:
        await store.close()


async def test_ipv6_address_and_server_name(secure: Secure) -> None:
    """[::1] is not in the member's certificate: refused with a clear line, accepted when
    server_name= says which name to check the certificate against."""
    url = (
        f"etcds://[::1]:{secure.v6_port}/blx/v6?ca={secure.ca}&cert={secure.cert}&key={secure.key}"
    )
    options = EtcdOptions(user="blixard", password=PASSWORD)
    with pytest.raises(StorageUnavailable, match="does not name that host") as caught:
        await open_store_from_url(url, etcd=options).open()
    assert "\n" not in str(caught.value)
    store = open_store_from_url(url + "&server_name=localhost", etcd=options)
    await store.open()
    try:
        assert await append(store, "w", 1) == 1
    finally:
        await store.close()


async def test_an_expired_token_is_replaced(
    secure: Secure, caplog: pytest.LogCaptureFixture
) -> None:
    """The member runs with --auth-token-ttl 1: a token unused for a second is gone, etcd
    answers "invalid auth token" and the engine authenticates again (no 503, no restart)."""
    store = secure.store("token")
    await store.open()
    try:
        await append(store, "w", 1)
        await asyncio.sleep(2.5)
        with caplog.at_level(logging.INFO, logger="blixard.store.etcd.conn"):
            assert await append(store, "w", 2) == 2
        assert "etcd rejected the auth token; authenticating again" in caplog.text
        head = await store.read_head("w")
        assert head is not None and head[1] == state(2)
    finally:
        await store.close()


async def test_watches_reopened_after_a_member_restart_authenticate_again(
    secure: Secure, caplog: pytest.LogCaptureFixture
) -> None:
    """A restarted member has forgotten every token. Node A, idle meanwhile (no call of its
    own to find its token stale), reopens its watches (resource index, live events) with a
    fresh token: it learns node B's new version through them alone."""
    from blixard.domain.events import EventBus

    first, second = secure.store("watch-token"), secure.store("watch-token")
    bus = EventBus()
    first.feed_changes(bus)
    await first.open()
    await second.open()
    try:
        listener = await bus.subscribe()
        member = secure.cluster.members[0]
        with caplog.at_level(logging.INFO, logger="blixard.store.etcd"):
            secure.cluster.kill(member)
            secure.cluster.restart(member)
            body = resources_state(1, {"x.bucket": ("aws_s3_bucket", "after-restart")})
            assert await append(second, "w", 1, body) == 1
            deadline = time.monotonic() + 15
            while first.resource_index.version_of("w") != 1:
                assert time.monotonic() < deadline, caplog.text
                await asyncio.sleep(0.1)
            while (event := await listener.next(15)) is not None and event.kind != "version":
                pass
        assert event is not None and (event.workspace, event.data["version"]) == ("w", 1)
        assert found(first, id="after-restart") == [("w", 1, "aws_s3_bucket.bucket")]
        assert "etcd rejected the auth token; authenticating again" in caplog.text
        listener.close()
    finally:
        await first.close()
        await second.close()


async def test_a_failed_renewal_leaves_the_watch_to_retry(secure: Secure) -> None:
    """Authenticating again while the member is away fails: the watch is told to retry as
    after any failure (False), not handed the exception that would end it for good."""
    store = secure.store("renew-down")
    await store.open()
    try:
        refused = ConnectionError("etcdserver: invalid auth token")
        assert await store.renew_stale_token(ConnectionError("no route to host")) is False
        member = secure.cluster.members[0]
        secure.cluster.kill(member)
        try:
            assert await store.renew_stale_token(refused) is False
        finally:
            secure.cluster.restart(member)
        assert await store.renew_stale_token(refused) is True
        assert await append(store, "w", 1) == 1
    finally:
        await store.close()


async def test_misconfigurations_are_one_clear_line(secure: Secure) -> None:
    cases = {
        "wrong password": (
            secure.store("x", password="wrong-" + PASSWORD),
            "etcd refused user 'blixard': wrong user name or password",
        ),
        "no CA": (
            open_store_from_url(
                secure.url("x", ca=""), etcd=EtcdOptions(user="blixard", password=PASSWORD)
            ),
            "is not trusted: give the CA that signed it",
        ),
        "no client certificate": (
            open_store_from_url(
                secure.url("x", cert="", key=""),
                etcd=EtcdOptions(user="blixard", password=PASSWORD),
            ),
            "requires a client certificate",
        ),
        "plaintext": (
            open_store_from_url(f"etcd://localhost:{secure.port}/blx/x"),
            "closed the connection: if it serves TLS, use etcds://",
        ),
        "prefix not granted": (
            open_store_from_url(
                secure.url("x").replace("/blx/x", "/elsewhere"),
                etcd=EtcdOptions(user="blixard", password=PASSWORD),
            ),
            "etcd denies user 'blixard' access to prefix /elsewhere/",
        ),
    }
    for what, (store, expected) in cases.items():
        started = time.monotonic()
        with pytest.raises(StorageUnavailable) as caught:
            await store.open()
        message = str(caught.value)
        assert expected in message, what
        assert PASSWORD not in message and "\n" not in message, what
        assert time.monotonic() - started < 8, what


# --------------------------------------------------------------------------- compaction


async def _compacted(store: EtcdStore, revision: int) -> bool:
    """True if etcd no longer serves reads at `revision`."""
    try:
        await store._range(store.keys.key("ws/"), b"", revision=revision)
    except StorageUnavailable as exc:
        assert "compacted" in exc.message
        return True
    return False


async def test_compaction_keeps_the_window_and_current_data(secure: Secure) -> None:
    policy = Compaction(retention=60, interval=10)
    store = secure.store("compact")
    await store.open()
    # The background reindex records its pass in etcd when it ends: let that revision come
    # before the revisions this test counts.
    await store.reindexer.wait()
    try:
        t0 = time.time()
        for serial in range(1, 4):
            await append(store, "w", serial)
        assert await store.compact_once(policy, now=t0) is None  # no sample old enough yet
        sampled = (await store._range(store.keys.key("ws/"), b"")).header.revision
        for serial in range(4, 7):
            await append(store, "w", serial)
        # 30 s later: still inside the window; another node in the same round: skipped.
        assert await store.compact_once(policy, now=t0 + 30) is None
        assert await store.compact_once(policy, now=t0 + 31) is None
        compacted = await store.compact_once(policy, now=t0 + 61)
        assert compacted is not None and sampled - 1 <= compacted <= sampled
        assert await _compacted(store, compacted - 1)
        assert not await _compacted(store, compacted)
        # Current data and the whole version history are untouched.
        versions = await store.list_versions("w")
        assert [v.version for v in versions] == [6, 5, 4, 3, 2, 1]
        for serial in range(1, 7):
            found = await store.read_version("w", serial)
            assert found is not None and found[1] == state(serial)
        records = [r async for r in store.export_snapshot()]
        assert sum(isinstance(r, VersionRecord) for r in records) == 6
    finally:
        await store.close()


async def test_compaction_waits_for_running_exports(secure: Secure) -> None:
    """An export on node A pins its revision; node B's compaction stops there, and A's
    export still reads its whole view after B wrote on and compacted."""
    policy = Compaction(retention=1, interval=1)
    a, b = secure.store("pinned"), secure.store("pinned")
    await a.open()
    await b.open()
    try:
        for serial in range(1, 4):
            await append(a, "w", serial)
        export = a.export_snapshot()
        begin = await anext(export)
        assert isinstance(begin, SnapshotBegin) and begin.counts.versions == 3
        ((lease_id, pin),) = a._pins.items()
        # etcd answers the pin's keep-alive (a stream, through the endpoint channels).
        assert a._conn is not None
        await a._conn.keep_alive(lease_id)
        assert (await a._client.lease.time_to_live(lease_id)).TTL > 20
        for serial in range(4, 8):  # rewrites the workspace record: history to compact
            await append(b, "w", serial)
        t0 = time.time()
        await b.compact_once(policy, now=t0)
        compacted = await b.compact_once(policy, now=t0 + 10)
        assert compacted == pin  # not past it, though the window allows more
        records = [r async for r in export]
        bodies = [r.body for r in records if isinstance(r, VersionRecord)]
        assert bodies == [state(n) for n in range(1, 4)]
        assert not a._pins
        # The export is over: its pin is gone from etcd and compaction moves on.
        assert not await b._pinned_revisions()
        later = await b.compact_once(policy, now=t0 + 20)
        assert later is not None and later > pin
    finally:
        await a.close()
        await b.close()


async def test_the_server_compacts_in_the_background(secure: Secure) -> None:
    store = secure.store("loop", compaction=Compaction(retention=0.2, interval=0.1))
    assert store.compaction is not None
    await store.open()
    try:
        # Writes go on meanwhile (the loop compacts to within a second of the present).
        serial, deadline = 0, time.monotonic() + 20
        doc: dict[str, Any] = {}
        while time.monotonic() < deadline:
            serial += 1
            await append(store, "w", serial)
            found = await store._get(store.keys.key("meta/compaction"))
            doc = orjson.loads(found.value) if found else {}
            # The record names a round's target before the round compacts to it.
            if doc.get("compacted") and await _compacted(store, doc["compacted"] - 1):
                break
        assert doc.get("compacted") and await _compacted(store, doc["compacted"] - 1), doc
        head = await store.read_head("w")
        assert head is not None and head[1] == state(serial)
    finally:
        await store.close()


# --------------------------------------------------------------------------- a server


def test_server_on_tls_and_auth_etcd(secure: Secure, tmp_path: Path) -> None:
    env = {
        "BLIXARD_STORAGE_URL": f"etcds://localhost:{secure.port}/blx/server",
        "BLIXARD_ETCD_CA_CERT": str(secure.ca),
        "BLIXARD_ETCD_CLIENT_CERT": str(secure.cert),
        "BLIXARD_ETCD_CLIENT_KEY": str(secure.key),
        "BLIXARD_ETCD_USER": "blixard",
        "BLIXARD_ETCD_PASSWORD": PASSWORD,
        "BLIXARD_LOG_LEVEL": "debug",
    }
    server = ServerProcess(tmp_path / "data", env=env, log_path=tmp_path / "server.log")
    seen: list[str] = []
    with server, httpx.Client(base_url=server.url + "/api/tofu", timeout=15) as http:
        lock = {"ID": "lock-1", "Who": "test", "Operation": "apply"}
        resp = http.request("LOCK", "/lock/w", json=lock)
        assert resp.status_code == 200, resp.text
        body = state(1)
        resp = http.post("/state/w", params={"ID": "lock-1"}, content=body)
        assert resp.status_code == 200, resp.text
        resp = http.get("/state/w")
        assert resp.status_code == 200 and resp.content == body
        assert http.request("UNLOCK", "/unlock/w", json=lock).status_code == 200
        for path in ("/health", "/health/hiqlite"):
            resp = httpx.get(server.url + path, timeout=10)
            assert resp.status_code == 200, resp.text
            seen.append(resp.text)
        assert orjson.loads(seen[1])["members"][0]["healthy"]
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log
    assert all(PASSWORD not in text for text in [log, *seen])

    # Misconfigured, the server refuses to start: one line on stderr, no secret in it.
    refused = {
        "BLIXARD_ETCD_PASSWORD": (
            "wrong-" + PASSWORD,
            "etcd refused user 'blixard': wrong user name or password",
        ),
        "BLIXARD_ETCD_CA_CERT": (
            "",
            f"the TLS certificate of etcd at localhost:{secure.port} is not trusted: give the "
            "CA that signed it (ca= in the storage URL or BLIXARD_ETCD_CA_CERT)",
        ),
    }
    for variable, (value, expected) in refused.items():
        changed = {**os.environ, **env, "BLIXARD_LOG_LEVEL": "info", variable: value}
        if not value:
            del changed[variable]
        result = subprocess.run(
            [sys.executable, "-m", "blixard", "serve", "--data-dir", str(tmp_path / "data")],
            env=changed,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2, result.stderr
        assert result.stderr.splitlines() == [f"blixard: cannot open the store: {expected}"]
        assert PASSWORD not in result.stderr + result.stdout
