"""The http backend protocol as the stock clients speak it, through the real app and store."""

from __future__ import annotations

import hashlib

import orjson
import pytest
from starlette.testclient import TestClient

from tests.api.conftest import ClientFactory, content_md5, lock_info, snapshot, tfstate

API = "/api/tofu"
HOLDER_FIELDS = ("ID", "Operation", "Info", "Who", "Version", "Created", "Path")


def lock(client: TestClient, ws: str, info: dict[str, str], style: str = "LOCK"):  # type: ignore[no-untyped-def]
    if style == "LOCK":
        return client.request("LOCK", f"{API}/lock/{ws}", json=info)
    if style == "LOCK-state":
        return client.request("LOCK", f"{API}/state/{ws}", json=info)
    return client.post(f"{API}/lock/{ws}", json=info)


def unlock(client: TestClient, ws: str, body: bytes, style: str = "UNLOCK"):  # type: ignore[no-untyped-def]
    if style == "UNLOCK":
        return client.request("UNLOCK", f"{API}/unlock/{ws}", content=body)
    if style == "UNLOCK-lock":
        return client.request("UNLOCK", f"{API}/lock/{ws}", content=body)
    if style == "UNLOCK-state":
        return client.request("UNLOCK", f"{API}/state/{ws}", content=body)
    return client.post(f"{API}/unlock/{ws}", content=body)


def write(client: TestClient, ws: str, body: bytes, lock_id: str | None = None, **headers: str):  # type: ignore[no-untyped-def]
    params = {"ID": lock_id} if lock_id else None
    return client.post(f"{API}/state/{ws}", content=body, params=params, headers=headers)


# -- GET --------------------------------------------------------------------------------------


def test_get_missing_state_is_404_json_and_creates_nothing(client: TestClient) -> None:
    response = client.get(f"{API}/state/fresh")
    assert response.status_code == 404
    assert response.json()["error"] == "not_found"
    assert client.get(f"{API}/workspaces").json()["workspaces"] == []
    assert client.get(f"{API}/lock/fresh").status_code == 404


def test_get_returns_exact_bytes_and_past_versions(client: TestClient) -> None:
    first = tfstate(1) + b"   \n"  # odd trailing whitespace must survive byte-for-byte
    second = tfstate(2, salt="x")
    assert write(client, "w", first).status_code == 200
    assert write(client, "w", second).status_code == 200
    current = client.get(f"{API}/state/w")
    assert current.content == second
    assert current.headers["etag"] == f'"{hashlib.sha256(second).hexdigest()}"'
    assert current.headers["x-blixard-version"] == "2"
    assert client.get(f"{API}/state/w", params={"version": 1}).content == first
    missing = client.get(f"{API}/state/w", params={"version": 3})
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    for bad in ("0", "-1", "x", "1.5"):
        response = client.get(f"{API}/state/w", params={"version": bad})
        assert response.status_code == 400, bad
        assert response.json()["error"] == "invalid_request"


# -- LOCK / UNLOCK ----------------------------------------------------------------------------


@pytest.mark.parametrize("style", ["LOCK", "LOCK-state", "POST"])
def test_lock_grant_retry_and_conflict(client: TestClient, style: str) -> None:
    mine, theirs = lock_info(who="alice"), lock_info(who="bob")
    granted = lock(client, "w", mine, style)
    assert granted.status_code == 200
    assert granted.json()["ID"] == mine["ID"]
    assert lock(client, "w", mine, style).status_code == 200  # a client retry
    refused = lock(client, "w", theirs, style)
    assert refused.status_code == 423
    body = refused.json()
    assert body["error"] == "locked" and "alice" in body["message"]
    for field in HOLDER_FIELDS:
        assert body[field] == mine[field], field
    status = client.get(f"{API}/lock/w").json()
    assert status["locked"] is True and status["lock"]["ID"] == mine["ID"]
    assert status["age_seconds"] >= 0 and status["locked_at"].endswith("Z")


@pytest.mark.parametrize(
    "bad",
    [b"", b"{}", b'{"ID": ""}', b'{"ID": 5}', b"[1]", b"not json", b'{"Who": "x"}'],
)
def test_lock_without_id_is_400_and_creates_nothing(client: TestClient, bad: bytes) -> None:
    response = client.request("LOCK", f"{API}/lock/w", content=bad)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_lock_info"
    assert client.get(f"{API}/workspaces").json()["workspaces"] == []


@pytest.mark.parametrize("style", ["UNLOCK", "UNLOCK-lock", "UNLOCK-state", "POST"])
def test_unlock_by_holder_other_and_force(client: TestClient, style: str) -> None:
    mine, theirs = lock_info(who="alice"), lock_info(who="bob")
    # Nothing locked: 200.
    assert unlock(client, "w", orjson.dumps(mine), style).status_code == 200
    assert lock(client, "w", mine).status_code == 200
    before = snapshot(client, "w")
    refused = unlock(client, "w", orjson.dumps(theirs), style)
    assert refused.status_code == 409
    assert refused.json()["error"] == "lock_conflict" and refused.json()["ID"] == mine["ID"]
    assert snapshot(client, "w") == before
    released = unlock(client, "w", orjson.dumps(mine), style)
    assert released.status_code == 200 and released.json()["lock"]["ID"] == mine["ID"]
    assert client.get(f"{API}/lock/w").json()["locked"] is False
    # terraform force-unlock: empty body releases whatever is held.
    assert lock(client, "w", theirs).status_code == 200
    assert unlock(client, "w", b"", style).status_code == 200
    assert client.get(f"{API}/lock/w").json()["locked"] is False
    # tofu force-unlock: LockInfo with only ID, matched like any ID.
    assert lock(client, "w", mine).status_code == 200
    assert unlock(client, "w", orjson.dumps({"ID": "wrong"}), style).status_code == 409
    assert unlock(client, "w", orjson.dumps({"ID": mine["ID"]}), style).status_code == 200
    assert client.get(f"{API}/lock/w").json()["locked"] is False


def test_delete_lock_force_unlocks_and_answers_removed_lock(client: TestClient) -> None:
    info = lock_info(who="stuck-ci")
    assert lock(client, "w", info).status_code == 200
    response = client.delete(f"{API}/lock/w")
    assert response.status_code == 200
    assert response.json()["lock"]["ID"] == info["ID"]
    assert client.get(f"{API}/lock/w").json() == {
        "workspace": "w",
        "locked": False,
        "lock": None,
        "locked_at": None,
        "age_seconds": None,
    }
    again = client.delete(f"{API}/lock/w")
    assert again.status_code == 200 and again.json()["lock"] is None


# -- writes -----------------------------------------------------------------------------------


def test_write_rules_while_locked(client: TestClient) -> None:
    mine, theirs = lock_info(), lock_info(who="bob")
    assert write(client, "w", tfstate(1)).status_code == 200
    assert lock(client, "w", mine).status_code == 200
    before = snapshot(client, "w")
    for lock_id in (None, theirs["ID"]):
        refused = write(client, "w", tfstate(2), lock_id)
        assert refused.status_code == 423, lock_id
        assert refused.json()["ID"] == mine["ID"]
    assert snapshot(client, "w") == before
    accepted = write(client, "w", tfstate(2), mine["ID"])
    assert accepted.status_code == 200
    assert accepted.json()["lock_id"] == mine["ID"] and accepted.json()["version"] == 2


def test_write_with_lock_id_after_losing_the_lock_is_409(client: TestClient) -> None:
    mine = lock_info()
    assert lock(client, "w", mine).status_code == 200
    assert client.delete(f"{API}/lock/w").status_code == 200  # someone broke it
    before = snapshot(client, "w")
    refused = write(client, "w", tfstate(1), mine["ID"])
    assert refused.status_code == 409 and refused.json()["error"] == "lock_lost"
    assert snapshot(client, "w") == before


def test_serial_and_lineage_rules(client: TestClient) -> None:
    assert write(client, "w", tfstate(5)).status_code == 200
    before = snapshot(client, "w")
    cases = [
        (tfstate(6, lineage="other"), "lineage_mismatch"),
        (tfstate(4), "serial_regression"),
        (tfstate(5, salt="changed"), "serial_conflict"),
    ]
    for body, code in cases:
        response = write(client, "w", body)
        assert response.status_code == 409, code
        assert response.json()["error"] == code
        assert snapshot(client, "w") == before
    # A byte-identical re-POST (client retry) is harmless: 200 and no new version.
    again = write(client, "w", tfstate(5))
    assert again.status_code == 200 and again.json()["version"] == 1
    assert snapshot(client, "w") == before


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        b"not json",
        b"[]",
        b"{}",
        b'{"serial": "1", "lineage": "x"}',
        b'{"serial": 1.5, "lineage": "x"}',
        b'{"serial": true, "lineage": "x"}',
        b'{"serial": -1, "lineage": "x"}',
        b'{"serial": 1, "lineage": 7}',
        b'{"serial": 1, "lineage": ""}',
        b'{"serial": 1, "lineage": "x"',
    ],
)
def test_invalid_state_is_400_and_changes_nothing(client: TestClient, bad: bytes) -> None:
    assert write(client, "w", tfstate(1)).status_code == 200
    before = snapshot(client, "w")
    response = write(client, "w", bad)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_state"
    assert snapshot(client, "w") == before
    fresh = write(client, "new", bad)
    assert fresh.status_code == 400
    assert client.get(f"{API}/state/new").status_code == 404


def test_opentofu_encrypted_envelope_is_a_valid_state(client: TestClient) -> None:
    envelope = orjson.dumps(
        {
            "serial": 3,
            "lineage": "enc",
            "meta": {"key_provider.pbkdf2.main": "eyJ..."},
            "encrypted_data": "c2VjcmV0",
            "encryption_version": "v0",
        }
    )
    response = write(client, "enc", envelope)
    assert response.status_code == 200
    assert response.json()["resource_count"] is None and response.json()["serial"] == 3
    assert client.get(f"{API}/state/enc").content == envelope


def test_content_md5_checked(client: TestClient) -> None:
    body = tfstate(1)
    good = write(client, "w", body, **{"Content-MD5": content_md5(body)})
    assert good.status_code == 200
    before = snapshot(client, "w")
    corrupted = tfstate(2)
    bad = write(client, "w", corrupted, **{"Content-MD5": content_md5(body)})
    assert bad.status_code == 400 and bad.json()["error"] == "md5_mismatch"
    garbage = write(client, "w", corrupted, **{"Content-MD5": "%%%"})
    assert garbage.status_code == 400 and garbage.json()["error"] == "md5_mismatch"
    assert snapshot(client, "w") == before
    info = orjson.dumps(lock_info())
    locked = client.request(
        "LOCK", f"{API}/lock/w", content=info, headers={"Content-MD5": content_md5(b"x")}
    )
    assert locked.status_code == 400
    assert snapshot(client, "w") == before


def test_put_is_accepted_like_post(client: TestClient) -> None:
    response = client.put(f"{API}/state/w", content=tfstate(1))
    assert response.status_code == 200 and response.json()["version"] == 1


def test_body_limit_is_inclusive_and_enforced_without_length(make_client: ClientFactory) -> None:
    limit = 2048
    client = make_client(max_state_bytes=limit)
    body = tfstate(1, resources=3)
    exact = body + b" " * (limit - len(body))
    assert len(exact) == limit
    assert write(client, "w", exact).status_code == 200
    before = snapshot(client, "w")
    over = tfstate(2, resources=3) + b" " * (limit - len(body) + 1)
    response = write(client, "w", over)
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"

    def chunks():  # type: ignore[no-untyped-def]
        yield over[:1000]
        yield over[1000:]

    streamed = client.post(f"{API}/state/w", content=chunks())
    assert streamed.status_code == 413
    assert snapshot(client, "w") == before


@pytest.mark.parametrize("name", [".hidden", "a" * 129, "sp ace", "semi;colon", "ünï"])
def test_bad_workspace_names_are_400_and_create_nothing(client: TestClient, name: str) -> None:
    for response in (
        client.get(f"{API}/state/{name}"),
        write(client, name, tfstate(1)),
        lock(client, name, lock_info()),
        client.delete(f"{API}/lock/{name}"),
    ):
        assert response.status_code == 400, response.text
        assert response.json()["error"] == "invalid_workspace_name"
    assert client.get(f"{API}/workspaces").json()["workspaces"] == []


def test_longest_and_odd_valid_names(client: TestClient) -> None:
    for name in ("a" * 128, "a.b", "A_b-9", "-x", "_"):
        assert write(client, name, tfstate(1)).status_code == 200, name
        assert client.get(f"{API}/state/{name}").content == tfstate(1)


# -- delete / restore ------------------------------------------------------------------------


def test_soft_delete_hides_keeps_history_and_restores(client: TestClient) -> None:
    assert write(client, "w", tfstate(1)).status_code == 200
    assert write(client, "w", tfstate(2)).status_code == 200
    info = lock_info()
    assert lock(client, "w", info).status_code == 200
    refused = client.delete(f"{API}/state/w")
    assert refused.status_code == 423 and refused.json()["ID"] == info["ID"]
    assert unlock(client, "w", orjson.dumps(info)).status_code == 200
    assert client.delete(f"{API}/state/w").json() == {"workspace": "w", "deleted": True}
    assert client.get(f"{API}/workspaces").json()["workspaces"] == []
    assert client.get(f"{API}/state/w").status_code == 404
    assert client.get(f"{API}/history/w").status_code == 404
    gone = write(client, "w", tfstate(3))
    assert gone.status_code == 409 and gone.json()["error"] == "workspace_deleted"
    assert lock(client, "w", lock_info()).status_code == 409
    restored = client.post(f"{API}/workspaces/w/restore")
    assert restored.status_code == 200
    assert client.get(f"{API}/state/w").content == tfstate(2)
    versions = client.get(f"{API}/history/w").json()["versions"]
    assert [v["version"] for v in versions] == [2, 1]
    again = client.post(f"{API}/workspaces/w/restore")
    assert again.status_code == 409 and again.json()["error"] == "workspace_not_deleted"
    assert client.delete(f"{API}/workspaces/w").status_code == 200
    assert client.delete(f"{API}/workspaces/w").status_code == 404
    assert client.post(f"{API}/workspaces/never/restore").status_code == 404
