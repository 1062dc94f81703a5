"""History, rollback, listings, health, metrics and docs."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from starlette.testclient import TestClient

from tests.api.conftest import ClientFactory, lock_info, snapshot, tfstate
from tests.etcd_cluster import EtcdCluster, private_cluster
from tests.harness import etcd_url

API = "/api/tofu"


def write(client: TestClient, ws: str, body: bytes, lock_id: str | None = None) -> None:
    params = {"ID": lock_id} if lock_id else None
    response = client.post(f"{API}/state/{ws}", content=body, params=params)
    assert response.status_code == 200, response.text


def test_history_metadata_and_pagination(client: TestClient) -> None:
    bodies = [tfstate(serial, salt=str(serial), resources=serial) for serial in range(1, 8)]
    for body in bodies:
        write(client, "w", body)
    page = client.get(f"{API}/history/w", params={"limit": 3}).json()
    assert page["workspace"] == "w"
    assert [v["version"] for v in page["versions"]] == [7, 6, 5]
    newest = page["versions"][0]
    assert newest["serial"] == 7 and newest["lineage"] == "lin-1"
    assert newest["size"] == len(bodies[6]) and newest["resource_count"] == 7
    assert newest["terraform_version"] == "1.15.5" and newest["source"] == "write"
    assert newest["created_at"].endswith("Z") and newest["lock_id"] is None
    assert len(newest["sha256"]) == 64 and len(newest["md5"]) == 32
    assert page["next_before"] == 5
    rest = client.get(f"{API}/history/w", params={"limit": 3, "before": 5}).json()
    assert [v["version"] for v in rest["versions"]] == [4, 3, 2]
    last = client.get(f"{API}/history/w", params={"limit": 3, "before": 2}).json()
    assert [v["version"] for v in last["versions"]] == [1] and last["next_before"] is None
    for bad in ({"limit": 0}, {"limit": "x"}, {"before": 0}, {"limit": 100000}):
        response = client.get(f"{API}/history/w", params=bad)
        assert response.status_code == 400 and response.json()["error"] == "invalid_request"
    assert client.get(f"{API}/history/nope").status_code == 404


def test_history_shows_who_held_the_lock_of_each_write(client: TestClient) -> None:
    write(client, "w", tfstate(1, salt="1"))
    info = lock_info(who="alice@laptop")
    assert client.post(f"{API}/lock/w", json=info).status_code == 200
    write(client, "w", tfstate(2, salt="2"), lock_id=info["ID"])
    rolled = client.post(f"{API}/rollback/w/1", params={"ID": info["ID"]})
    assert rolled.status_code == 200 and rolled.json()["who"] == "alice@laptop"
    assert client.post(f"{API}/unlock/w", json=info).status_code == 200
    write(client, "w", tfstate(9, salt="9"))
    versions = client.get(f"{API}/history/w").json()["versions"]
    assert [(v["version"], v["who"]) for v in versions] == [
        (4, None),
        (3, "alice@laptop"),
        (2, "alice@laptop"),
        (1, None),
    ]


def test_rollback_creates_new_version_with_next_serial(client: TestClient) -> None:
    for serial in (1, 2, 3):
        write(client, "w", tfstate(serial, salt=str(serial)))
    response = client.post(f"{API}/rollback/w/2")
    assert response.status_code == 200
    meta = response.json()
    assert meta["version"] == 4 and meta["serial"] == 4
    assert meta["source"] == "rollback" and meta["rolled_back_from"] == 2
    # Only the serial's digits change: every other byte is version 2's.
    restored = client.get(f"{API}/state/w").content
    assert restored == tfstate(2, salt="2").replace(b'"serial": 2,', b'"serial": 4,', 1)
    # History is appended to, never rewritten.
    versions = client.get(f"{API}/history/w").json()["versions"]
    assert [v["version"] for v in versions] == [4, 3, 2, 1]
    assert client.get(f"{API}/state/w", params={"version": 3}).content == tfstate(3, salt="3")
    # Terraform accepts the rolled-back state as newer: a normal write continues from it.
    write(client, "w", tfstate(5, salt="after"))


def test_rollback_keeps_numbers_escapes_and_layout(client: TestClient) -> None:
    exotic = (
        b'{"version":4,"serial":1,"lineage":"x","outputs":{"big":{"value":'
        b'123456789012345678901234567890},"f":{"value":1.50},"h":{"value":"\\u003chtml\\u0026"}},'
        b'"resources":[{"serial":99}]}'
    )
    write(client, "w", exotic)
    write(client, "w", tfstate(2, lineage="x"))
    assert client.post(f"{API}/rollback/w/1").status_code == 200
    assert client.get(f"{API}/state/w").content == exotic.replace(b'"serial":1,', b'"serial":3,')


def test_rollback_respects_the_lock(client: TestClient) -> None:
    write(client, "w", tfstate(1, salt="a"))
    write(client, "w", tfstate(2, salt="b"))
    info = lock_info(who="alice")
    assert client.request("LOCK", f"{API}/lock/w", json=info).status_code == 200
    before = snapshot(client, "w")
    refused = client.post(f"{API}/rollback/w/1")
    assert refused.status_code == 423 and refused.json()["ID"] == info["ID"]
    other = client.post(f"{API}/rollback/w/1", params={"ID": "not-the-holder"})
    assert other.status_code == 423
    assert snapshot(client, "w") == before
    allowed = client.post(f"{API}/rollback/w/1", params={"ID": info["ID"]})
    assert allowed.status_code == 200 and allowed.json()["lock_id"] == info["ID"]


def test_rollback_errors_change_nothing(client: TestClient) -> None:
    write(client, "w", tfstate(1))
    before = snapshot(client, "w")
    assert client.post(f"{API}/rollback/w/9").status_code == 404
    assert client.post(f"{API}/rollback/w/0").status_code == 404
    assert client.post(f"{API}/rollback/w/x").status_code == 400
    assert client.post(f"{API}/rollback/nope/1").status_code == 404
    assert client.post(f"{API}/rollback/.bad/1").status_code == 400
    assert snapshot(client, "w") == before


def test_workspace_listing(client: TestClient) -> None:
    write(client, "beta", tfstate(3, resources=4))
    info = lock_info(who="ci")
    assert client.request("LOCK", f"{API}/lock/alpha", json=info).status_code == 200
    listing = client.get(f"{API}/workspaces").json()
    assert [w["name"] for w in listing["workspaces"]] == ["alpha", "beta"]
    alpha, beta = listing["workspaces"]
    assert alpha["locked"] is True and alpha["lock"]["Who"] == "ci"
    assert alpha["serial"] is None and alpha["version"] is None  # locked before its first write
    assert beta == {
        **beta,
        "serial": 3,
        "lineage": "lin-1",
        "version": 1,
        "size": len(tfstate(3, resources=4)),
        "resource_count": 4,
        "locked": False,
        "lock": None,
    }
    paged = client.get(f"{API}/workspaces", params={"limit": 1}).json()
    assert [w["name"] for w in paged["workspaces"]] == ["alpha"]
    assert paged["next_after"] == "alpha"
    rest = client.get(f"{API}/workspaces", params={"after": "alpha"}).json()
    assert [w["name"] for w in rest["workspaces"]] == ["beta"] and rest["next_after"] is None


def test_health_endpoints(client: TestClient, engine: str) -> None:
    live = client.get("/health")
    assert live.status_code == 200 and live.json()["status"] == "ok"
    storage = client.get("/health/hiqlite").json()
    assert storage["is_healthy"] is True and storage["engine"] == engine
    # SQLite is one node; the test etcd cluster has 3 members, all healthy.
    assert storage["node_count"] == {"sqlite": 1, "etcd": 3}[engine]
    assert storage["has_leader"] is True
    assert "path" not in storage  # nothing about where data lives
    (node,) = storage["blixard_nodes"]  # this server, holding its node lease
    assert node["id"] == client.app_state.runs.executor.node_id  # type: ignore[attr-defined]
    assert str(client.app_state.settings.data_dir) not in node["id"]  # type: ignore[attr-defined]
    assert node["version"] and node["started_at"].endswith("Z")
    assert "blixard-api-test" not in str(storage)  # nor the etcd key prefix


def test_metrics_count_requests_conflicts_and_bytes(client: TestClient) -> None:
    body = tfstate(1)
    write(client, "w", body)
    client.request("LOCK", f"{API}/lock/w", json=lock_info("a"))
    client.request("LOCK", f"{API}/lock/w", json=lock_info("b"))
    text = client.get("/metrics").text
    assert (
        'blixard_http_requests_total{method="LOCK",route="/api/tofu/lock/{workspace}",'
        'status="423"} 1.0' in text
    )
    assert "blixard_lock_conflicts_total 1.0" in text
    assert f"blixard_state_bytes_written_total {float(len(body))}" in text
    assert "blixard_state_versions_stored 1.0" in text
    assert "blixard_http_request_duration_seconds_bucket" in text


def test_unknown_routes_and_methods_are_json(client: TestClient) -> None:
    missing = client.get("/api/tofu/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    wrong = client.patch(f"{API}/state/w")
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"


def test_openapi_documents_every_route(make_client: ClientFactory) -> None:
    client = make_client()
    spec = client.get("/openapi.json").json()
    paths = spec["paths"]
    expected = {
        f"{API}/state/{{workspace}}": {"get", "post", "put", "delete", "lock", "unlock"},
        f"{API}/lock/{{workspace}}": {"get", "post", "lock", "unlock", "delete"},
        f"{API}/unlock/{{workspace}}": {"post", "unlock"},
        f"{API}/workspaces": {"get"},
        f"{API}/history/{{workspace}}": {"get"},
        f"{API}/rollback/{{workspace}}/{{version}}": {"post"},
        f"{API}/workspaces/{{workspace}}": {"delete"},
        f"{API}/workspaces/{{workspace}}/restore": {"post"},
        "/health": {"get"},
        "/health/hiqlite": {"get"},
        "/metrics": {"get"},
    }
    for path, methods in expected.items():
        assert path in paths, path
        assert set(paths[path]) >= methods, (path, set(paths[path]))
        for operation in paths[path].values():
            assert operation.get("summary"), (path, operation)
    rollback = paths[f"{API}/rollback/{{workspace}}/{{version}}"]["post"]
    assert "only operation in which the server changes state bytes" in rollback["description"]
    assert client.get("/docs").status_code == 200


@pytest.fixture
def own_etcd(engine: str) -> Iterator[EtcdCluster | None]:
    """On etcd, a 1-member cluster of the test's own: the NOSPACE alarm is cluster-wide and
    would refuse the writes of every other test on the shared cluster meanwhile (parallel
    workers). None on SQLite."""
    if engine != "etcd":
        yield None
        return
    with private_cluster(1) as cluster:
        yield cluster


def etcd_space_alarm(cluster: EtcdCluster, action: str) -> None:
    """ACTIVATE or DEACTIVATE etcd's NOSPACE alarm: what etcd raises when its quota is used
    up; until it is disarmed every write is refused."""
    with cluster.gateway(cluster.members[0]) as gateway:
        member = gateway.status()["header"]["member_id"]
        body = {"action": action, "memberID": member, "alarm": "NOSPACE"}
        gateway.call("maintenance/alarm", body)


def test_storage_full_is_503_with_retry_after_and_recovers(
    own_etcd: EtcdCluster | None, make_client: ClientFactory
) -> None:
    # own_etcd comes first: its cluster stops only after make_client closed the app.
    overrides = {}
    if own_etcd is not None:
        overrides["storage_url"] = etcd_url(own_etcd.endpoints, "blixard-api-test/full")
    client = make_client(**overrides)
    write(client, "w", tfstate(1))
    before = snapshot(client, "w")
    store = client.app_state.service.store  # type: ignore[attr-defined]

    def full(yes: bool) -> None:
        """The "disk" is full (or has room again)."""
        if own_etcd is not None:
            etcd_space_alarm(own_etcd, "ACTIVATE" if yes else "DEACTIVATE")
            return
        limit = 1_000_000
        if yes:
            limit = client.portal.call(  # type: ignore[union-attr]
                store._read, lambda conn: conn.execute("PRAGMA page_count").fetchone()[0]
            )

        def operation(conn):  # type: ignore[no-untyped-def]
            conn.execute(f"PRAGMA max_page_count = {limit}")

        async def run() -> None:
            await store._write(operation)

        client.portal.call(run)  # type: ignore[union-attr]

    big = tfstate(2, resources=3000, salt="x" * 50)
    full(True)
    try:
        response = client.post(f"{API}/state/w", content=big)
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "storage_unavailable"
        assert response.headers["retry-after"] == "1"
        # Reads are still served, and show that nothing changed.
        assert client.get(f"{API}/state/w").content == tfstate(1)
        assert snapshot(client, "w") == before
    finally:
        full(False)
    assert client.post(f"{API}/state/w", content=big).status_code == 200


def test_oversized_headers_are_refused_with_431(client: TestClient) -> None:
    too_many = {f"x-h{i}": "v" for i in range(150)}
    response = client.get(f"{API}/workspaces", headers=too_many)
    assert response.status_code == 431 and response.json()["error"] == "headers_too_large"
    huge = client.post(f"{API}/state/w", content=tfstate(1), headers={"x-big": "v" * 40_000})
    assert huge.status_code == 431
    assert client.get(f"{API}/state/w").status_code == 404  # nothing was written
