"""Authentication and authorisation: every route x every caller; denials change nothing."""

from __future__ import annotations

import base64
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from tests.api.conftest import ClientFactory, lock_info, snapshot, tfstate

API = "/api/tofu"
ADMIN_SECRET = "test-admin-secret-0123456789"
PRINCIPALS = ("none", "bad", "reader", "writer", "operator", "admin", "other")


@dataclass
class Keys:
    secrets: dict[str, str]

    def headers(self, who: str) -> dict[str, str]:
        if who == "none":
            return {}
        if who == "bad":
            return {"Authorization": "Bearer blx_not-a-real-key"}
        return {"Authorization": f"Bearer {self.secrets[who]}"}


@pytest.fixture
def secured(make_client: ClientFactory) -> tuple[TestClient, Keys]:
    client = make_client(admin_key=ADMIN_SECRET)
    admin = {"Authorization": f"Bearer {ADMIN_SECRET}"}
    secrets = {"admin": ADMIN_SECRET}
    for name, role, scopes in (
        ("reader", "reader", ["*"]),
        ("writer", "writer", ["*"]),
        ("operator", "operator", ["*"]),
        ("other", "writer", ["other-*"]),
    ):
        response = client.post(
            f"{API}/keys", json={"name": name, "role": role, "workspaces": scopes}, headers=admin
        )
        assert response.status_code == 201, response.text
        secrets[name] = response.json()["secret"]
        assert secrets[name].startswith("blx_")
    return client, Keys(secrets)


@dataclass
class Case:
    name: str
    method: str
    path: str
    expected: dict[str, int]
    body: bytes | None = None
    setup: Callable[[TestClient, Keys, str], dict[str, Any]] | None = None

    def request(
        self, client: TestClient, keys: Keys, who: str, ws: str, ctx: dict[str, Any]
    ) -> Any:
        path = self.path.format(ws=ws)
        body = ctx.get("lock_body", self.body)
        body = body.replace(b"WS", ws.encode()) if body else None
        return client.request(self.method, path, content=body, headers=keys.headers(who))


def _statuses(*codes: int) -> dict[str, int]:
    return dict(zip(PRINCIPALS, codes, strict=True))


READ = _statuses(401, 401, 200, 200, 200, 200, 404)
WRITE = _statuses(401, 401, 403, 200, 200, 200, 404)
ADMIN = _statuses(401, 401, 403, 403, 403, 200, 403)
OPEN = _statuses(200, 200, 200, 200, 200, 200, 200)


def _writer_lock(client: TestClient, keys: Keys, ws: str) -> dict[str, Any]:
    info = lock_info(who="writer")
    response = client.request("LOCK", f"{API}/lock/{ws}", json=info, headers=keys.headers("writer"))
    assert response.status_code == 200
    return {"lock_body": orjson.dumps(info)}


def _deleted(client: TestClient, keys: Keys, ws: str) -> dict[str, Any]:
    assert client.delete(f"{API}/workspaces/{ws}", headers=keys.headers("admin")).status_code == 200
    return {}


CASES = [
    Case("get state", "GET", f"{API}/state/{{ws}}", READ),
    Case("get old version", "GET", f"{API}/state/{{ws}}?version=1", READ),
    Case("post state", "POST", f"{API}/state/{{ws}}", WRITE, tfstate(3)),
    Case("put state", "PUT", f"{API}/state/{{ws}}", WRITE, tfstate(3)),
    Case("LOCK lock address", "LOCK", f"{API}/lock/{{ws}}", WRITE, orjson.dumps(lock_info())),
    Case("POST lock address", "POST", f"{API}/lock/{{ws}}", WRITE, orjson.dumps(lock_info())),
    Case("LOCK state address", "LOCK", f"{API}/state/{{ws}}", WRITE, orjson.dumps(lock_info())),
    Case(
        "UNLOCK own lock",
        "UNLOCK",
        f"{API}/unlock/{{ws}}",
        _statuses(401, 401, 403, 200, 403, 200, 404),
        setup=_writer_lock,
    ),
    Case("UNLOCK empty body (force)", "UNLOCK", f"{API}/unlock/{{ws}}", ADMIN, b""),
    Case("lock status", "GET", f"{API}/lock/{{ws}}", READ),
    Case("DELETE lock", "DELETE", f"{API}/lock/{{ws}}", ADMIN),
    Case("DELETE state", "DELETE", f"{API}/state/{{ws}}", ADMIN),
    Case("DELETE workspace", "DELETE", f"{API}/workspaces/{{ws}}", ADMIN),
    Case("restore", "POST", f"{API}/workspaces/{{ws}}/restore", ADMIN, setup=_deleted),
    Case(
        "list workspaces", "GET", f"{API}/workspaces", _statuses(401, 401, 200, 200, 200, 200, 200)
    ),
    Case("history", "GET", f"{API}/history/{{ws}}", READ),
    Case("rollback", "POST", f"{API}/rollback/{{ws}}/1", ADMIN),
    Case("list keys", "GET", f"{API}/keys", ADMIN),
    Case(
        "create key",
        "POST",
        f"{API}/keys",
        _statuses(401, 401, 403, 403, 403, 201, 403),
        b'{"name": "k-WS", "role": "reader", "workspaces": ["*"]}',
    ),
    Case("revoke key", "DELETE", f"{API}/keys/reader", ADMIN),
    Case("audit", "GET", f"{API}/audit", ADMIN),
    Case("encryption status", "GET", f"{API}/admin/encryption", ADMIN),
    # 409 for the admin: this test server has no encryption key.
    Case(
        "encryption rotate",
        "POST",
        f"{API}/admin/encryption/rotate",
        _statuses(401, 401, 403, 403, 403, 409, 403),
    ),
    Case("health", "GET", "/health", OPEN),
    Case("storage health", "GET", "/health/hiqlite", OPEN),
    Case("metrics", "GET", "/metrics", OPEN),
]


def _prepare(client: TestClient, keys: Keys, ws: str) -> None:
    admin = keys.headers("admin")
    for serial in (1, 2):
        response = client.post(f"{API}/state/{ws}", content=tfstate(serial), headers=admin)
        assert response.status_code == 200


def _admin_snapshot(client: TestClient, keys: Keys, ws: str) -> dict[str, Any]:
    headers = keys.headers("admin")
    original = client.headers
    client.headers = original.copy()
    client.headers.update(headers)
    try:
        snap = snapshot(client, ws)
        snap["keys"] = client.get(f"{API}/keys").json()
        return snap
    finally:
        client.headers = original


@pytest.mark.parametrize("case", CASES, ids=lambda case: case.name)
def test_auth_matrix(secured: tuple[TestClient, Keys], case: Case) -> None:
    client, keys = secured
    for index, who in enumerate(PRINCIPALS):
        ws = f"team-{index}"
        _prepare(client, keys, ws)
        ctx = case.setup(client, keys, ws) if case.setup else {}
        before = _admin_snapshot(client, keys, ws)
        response = case.request(client, keys, who, ws, ctx)
        expected = case.expected[who]
        assert response.status_code == expected, (who, response.status_code, response.text)
        if expected >= 400:
            assert response.headers["content-type"] == "application/json"
            assert response.json()["error"]
            assert _admin_snapshot(client, keys, ws) == before, f"{who} changed something"
        if expected == 401:
            assert response.headers["www-authenticate"].startswith("Basic")
        if case.name == "revoke key" and expected == 200:
            # Put the revoked key back for the next caller.
            recreated = client.post(
                f"{API}/keys",
                json={"name": "reader", "role": "reader", "workspaces": ["*"]},
                headers=keys.headers("admin"),
            )
            keys.secrets["reader"] = recreated.json()["secret"]


def test_out_of_scope_answers_like_a_missing_workspace(secured: tuple[TestClient, Keys]) -> None:
    client, keys = secured
    _prepare(client, keys, "secret-project")
    other = keys.headers("other")
    hidden = client.get(f"{API}/state/secret-project", headers=other)
    missing = client.get(f"{API}/state/other-missing", headers=other)
    assert hidden.status_code == missing.status_code == 404
    assert hidden.json()["error"] == missing.json()["error"]
    assert hidden.json()["message"].replace("secret-project", "X") == missing.json()[
        "message"
    ].replace("other-missing", "X")
    # Lists only show what the key may see.
    assert (
        client.post(f"{API}/state/other-app", content=tfstate(1), headers=other).status_code == 200
    )
    names = [w["name"] for w in client.get(f"{API}/workspaces", headers=other).json()["workspaces"]]
    assert names == ["other-app"]
    everything = client.get(f"{API}/workspaces", headers=keys.headers("reader")).json()
    assert {w["name"] for w in everything["workspaces"]} == {"other-app", "secret-project"}


def test_every_way_of_presenting_a_key(secured: tuple[TestClient, Keys]) -> None:
    client, keys = secured
    secret = keys.secrets["reader"]
    basic = base64.b64encode(f"api:{secret}".encode()).decode()
    for headers in (
        {"Authorization": f"Basic {basic}"},
        {"Authorization": f"Bearer {secret}"},
        {"X-API-Key": secret},
    ):
        assert client.get(f"{API}/workspaces", headers=headers).status_code == 200, headers
    wrong = base64.b64encode(b"api:blx_wrong").decode()
    assert (
        client.get(f"{API}/workspaces", headers={"Authorization": f"Basic {wrong}"}).status_code
        == 401
    )
    garbage = client.get(f"{API}/workspaces", headers={"Authorization": "Basic %%%"})
    assert garbage.status_code == 401


def test_writers_release_only_their_own_locks(secured: tuple[TestClient, Keys]) -> None:
    client, keys = secured
    info = lock_info(who="operator-run")
    assert (
        client.request(
            "LOCK", f"{API}/lock/w", json=info, headers=keys.headers("operator")
        ).status_code
        == 200
    )
    refused = client.request(
        "UNLOCK", f"{API}/unlock/w", json={"ID": info["ID"]}, headers=keys.headers("writer")
    )
    assert refused.status_code == 403 and refused.json()["error"] == "forbidden"
    assert client.get(f"{API}/lock/w", headers=keys.headers("reader")).json()["locked"] is True
    own = client.request(
        "UNLOCK", f"{API}/unlock/w", json={"ID": info["ID"]}, headers=keys.headers("operator")
    )
    assert own.status_code == 200


def test_revoked_key_stops_working_and_secrets_are_never_listed(
    secured: tuple[TestClient, Keys],
) -> None:
    client, keys = secured
    admin = keys.headers("admin")
    listing = client.get(f"{API}/keys", headers=admin)
    text = listing.text
    for secret in keys.secrets.values():
        assert secret not in text
    assert "hash" not in text
    assert {k["name"] for k in listing.json()["keys"]} == {
        "admin",
        "reader",
        "writer",
        "operator",
        "other",
    }
    assert client.delete(f"{API}/keys/writer", headers=admin).status_code == 200
    assert client.get(f"{API}/workspaces", headers=keys.headers("writer")).status_code == 401
    assert client.delete(f"{API}/keys/writer", headers=admin).status_code == 404
    revoked = client.get(f"{API}/keys", params={"include_revoked": True}, headers=admin).json()
    assert any(k["name"] == "writer" and k["revoked_at"] for k in revoked["keys"])
    duplicate = client.post(f"{API}/keys", json={"name": "reader", "role": "reader"}, headers=admin)
    assert duplicate.status_code == 409
    for bad in (
        {"name": "x", "role": "root"},
        {"name": "bad name", "role": "reader"},
        {"name": "x", "role": "reader", "workspaces": []},
        {"role": "reader"},
    ):
        assert client.post(f"{API}/keys", json=bad, headers=admin).status_code == 400, bad
    metrics = client.get("/metrics").text
    for secret in keys.secrets.values():
        assert secret not in metrics


def test_audit_records_changes_and_denials(secured: tuple[TestClient, Keys]) -> None:
    client, keys = secured
    writer = keys.headers("writer")
    info = lock_info(who="ci")
    assert client.request("LOCK", f"{API}/lock/app", json=info, headers=writer).status_code == 200
    written = client.post(
        f"{API}/state/app", params={"ID": info["ID"]}, content=tfstate(1), headers=writer
    )
    assert written.status_code == 200
    assert (
        client.request("UNLOCK", f"{API}/unlock/app", json=info, headers=writer).status_code == 200
    )
    assert client.delete(f"{API}/lock/app", headers=writer).status_code == 403
    assert (
        client.get(f"{API}/state/app", headers={"Authorization": "Bearer nope"}).status_code == 401
    )
    assert client.get(f"{API}/state/app", headers=keys.headers("other")).status_code == 404
    client.portal.call(client.app_state.audit.flush)  # type: ignore[attr-defined]
    admin = keys.headers("admin")
    events = client.get(f"{API}/audit", params={"workspace": "app"}, headers=admin).json()["events"]
    summary = [(e["action"], e["key"], e["outcome"]) for e in reversed(events)]
    assert summary == [
        ("lock.acquire", "writer", "ok"),
        ("state.write", "writer", "ok"),
        ("lock.release", "writer", "ok"),
        ("lock.force_unlock", "writer", "denied"),
        ("state.read", None, "denied"),
        ("state.read", "other", "denied"),
    ]
    anonymous = next(e for e in events if e["key"] is None)
    assert anonymous["source"] == "testclient" and anonymous["status"] == 401
    bootstrap = client.get(f"{API}/audit", params={"action": "keys.manage"}, headers=admin).json()
    assert any("from BLIXARD_ADMIN_KEY" in (e["detail"] or "") for e in bootstrap["events"])
    write_event = next(e for e in events if e["action"] == "state.write")
    assert write_event["version"] == 1 and write_event["lock_id"] == info["ID"]
    assert write_event["source"] == "testclient" and write_event["role"] == "writer"
    by_key = client.get(f"{API}/audit", params={"key": "writer", "limit": 2}, headers=admin).json()
    assert len(by_key["events"]) == 2 and by_key["next_before"] is not None
    assert (
        client.get(f"{API}/audit", params={"since": "yesterday"}, headers=admin).status_code == 400
    )


def test_audit_trail_is_append_only(secured: tuple[TestClient, Keys], engine: str) -> None:
    client, keys = secured
    store = client.app_state.service.store  # type: ignore[attr-defined]
    if engine == "sqlite":
        import sqlite3

        async def tamper(statement: str) -> None:
            await store._write(lambda conn: conn.execute(statement))

        # Triggers refuse any change to a written row, whoever issues it.
        for statement in ("UPDATE audit SET outcome = 'ok'", "DELETE FROM audit"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                client.portal.call(tamper, statement)  # type: ignore[union-attr]
        return

    # etcd has no triggers (anyone with write access to the prefix could change keys), so
    # here it is the engine that must never rewrite an event: after writes, denials and key
    # changes, every audit key (events and their index copies) is still at version 1.
    write = client.post(f"{API}/state/app", content=tfstate(1), headers=keys.headers("writer"))
    assert write.status_code == 200
    assert client.get(f"{API}/state/app", headers=keys.headers("other")).status_code == 404
    client.portal.call(client.app_state.audit.flush)  # type: ignore[attr-defined,union-attr]

    async def audit_key_versions() -> dict[bytes, int]:
        from blixard.store.etcd.keyspace import prefix_end

        versions = {}
        for prefix in (
            store.keys.key("audit/"),
            store.keys.key("audit-ws/"),
            store.keys.key("audit-key/"),
        ):
            async for kv in store._scan(prefix, prefix_end(prefix)):
                versions[bytes(kv.key)] = int(kv.version)
        return versions

    versions = client.portal.call(audit_key_versions)  # type: ignore[union-attr]
    assert len(versions) > 10 and set(versions.values()) == {1}


def test_required_auth_with_no_keys_refuses_everything(make_client: ClientFactory) -> None:
    client = make_client(auth="required")
    response = client.get(f"{API}/workspaces")
    assert response.status_code == 401
    assert client.get("/health").status_code == 200


def test_no_keys_means_open_and_first_key_closes_it(make_client: ClientFactory) -> None:
    client = make_client()
    assert client.post(f"{API}/state/w", content=tfstate(1)).status_code == 200
    created = client.post(f"{API}/keys", json={"name": "first", "role": "admin"})
    assert created.status_code == 201
    assert client.get(f"{API}/state/w").status_code == 401
    secret = created.json()["secret"]
    assert client.get(f"{API}/state/w", headers={"X-API-Key": secret}).status_code == 200


def test_refusal_audit_survives_a_failed_flush(secured: tuple[TestClient, Keys]) -> None:
    """Events queued while the store refuses writes are kept and written later, in order."""
    client, keys = secured
    sink = client.app_state.audit  # type: ignore[attr-defined]
    store = client.app_state.service.store  # type: ignore[attr-defined]
    assert client.get(f"{API}/state/x", headers={"Authorization": "Bearer nope"}).status_code == 401
    original = store.append_audit

    async def refuse(events: list[Any]) -> None:
        raise RuntimeError("store down")

    store.append_audit = refuse
    with pytest.raises(RuntimeError):
        client.portal.call(sink.flush)  # type: ignore[union-attr]
    store.append_audit = original
    client.portal.call(sink.flush)  # type: ignore[union-attr]
    events = client.get(
        f"{API}/audit", params={"workspace": "x"}, headers=keys.headers("admin")
    ).json()["events"]
    assert [(e["action"], e["status"]) for e in events] == [("state.read", 401)]
