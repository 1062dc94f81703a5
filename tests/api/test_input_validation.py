"""Out-of-range and malformed input is a 400 (never a 500) that changes nothing; a lock's ID
is only good for the key that took it. Every engine, with and without the fast path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from starlette.testclient import TestClient

from blixard.api.app import asgi_app, create_app
from blixard.config import Settings
from tests.api.conftest import ClientFactory, lock_info, snapshot, tfstate

API = "/api/tofu"
BEYOND_INT64 = str(2**63)
ARABIC_INDIC_THREE = "\u0663"  # int() reads it as 3
SUPERSCRIPT_TWO = "\u00b2"  # str.isdigit() says yes, int() raises


def written(client: TestClient, ws: str, *serials: int) -> None:
    for serial in serials:
        response = client.post(f"{API}/state/{ws}", content=tfstate(serial))
        assert response.status_code == 200, response.text


def refused(response: Any, code: str = "invalid_request") -> None:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.json()["error"] == code


@pytest.mark.parametrize("number", [BEYOND_INT64, "9" * 40, ARABIC_INDIC_THREE, SUPERSCRIPT_TWO])
def test_numbers_out_of_range_or_not_ascii_are_400(client: TestClient, number: str) -> None:
    written(client, "w", 1, 2, 3)
    before = snapshot(client, "w")
    refused(client.get(f"{API}/state/w", params={"version": number}))
    refused(client.get(f"{API}/history/w", params={"before": number}))
    refused(client.get(f"{API}/history/w", params={"limit": number}))
    refused(client.get(f"{API}/workspaces", params={"limit": number}))
    refused(client.get(f"{API}/plans/w", params={"limit": number}))
    refused(client.get(f"{API}/audit", params={"before": number}))
    refused(client.post(f"{API}/rollback/w/{number}"))
    refused(client.post(f"{API}/admin/encryption/rotate", params={"max_seconds": number}))
    assert snapshot(client, "w") == before


@pytest.mark.parametrize("serial", [2**63, 2**64, 2**64 + 1, 10**30])
def test_a_state_serial_beyond_int64_is_400(client: TestClient, serial: int) -> None:
    written(client, "w", 1)
    before = snapshot(client, "w")
    body = tfstate(1).replace(b'"serial": 1', f'"serial": {serial}'.encode())
    refused(client.post(f"{API}/state/w", content=body), "invalid_state")
    refused(client.post(f"{API}/state/fresh", content=body), "invalid_state")
    assert snapshot(client, "w") == before
    assert client.get(f"{API}/state/fresh").status_code == 404


def test_the_largest_int64_serial_and_version_numbers_are_fine(client: TestClient) -> None:
    top = 2**63 - 1
    body = tfstate(1).replace(b'"serial": 1', f'"serial": {top}'.encode())
    assert client.post(f"{API}/state/w", content=body).status_code == 200
    assert client.get(f"{API}/state/w").headers["x-blixard-serial"] == str(top)
    missing = client.get(f"{API}/state/w", params={"version": str(top)})
    assert missing.status_code == 404
    assert client.get(f"{API}/history/w", params={"before": str(top)}).status_code == 200


def test_invalid_utf8_inside_a_state_is_400(client: TestClient) -> None:
    written(client, "w", 1)
    before = snapshot(client, "w")
    for bad in (b"\xff\xfe", b"\xc3", b"\xed\xa0\x80", b"\xf4\x90\x80\x80"):
        body = tfstate(2).replace(b'"id": "0"', b'"id": "' + bad + b'"')
        assert bad in body
        response = client.post(f"{API}/state/w", content=body)
        refused(response, "invalid_state")
        assert "UTF-8" in response.json()["message"]
    assert snapshot(client, "w") == before
    # Valid non-ASCII text is of course fine, byte for byte.
    body = tfstate(2).replace(b'"id": "0"', '"id": "smörgåsbord ✓"'.encode())
    assert client.post(f"{API}/state/w", content=body).status_code == 200
    assert client.get(f"{API}/state/w").content == body


def test_nul_characters_are_refused_everywhere(client: TestClient) -> None:
    written(client, "w", 1)
    held = lock_info()
    assert client.request("LOCK", f"{API}/lock/w", json=held).status_code == 200
    before = snapshot(client, "w")
    refused(client.post(f"{API}/state/w", params={"ID": held["ID"] + "\x00"}, content=tfstate(2)))
    refused(client.get(f"{API}/workspaces", params={"after": "a\x00"}))
    refused(client.get(f"{API}/audit", params={"key": "\x00"}))
    refused(client.get(f"{API}/plans/w", params={"before": "\x00"}))
    refused(client.get(f"{API}/state/w", params={"\x00": "1"}))
    refused(
        client.request("LOCK", f"{API}/lock/w", json={**held, "ID": "x\x00"}), "invalid_lock_info"
    )
    refused(
        client.request("LOCK", f"{API}/lock/v", json=lock_info(who="a\x00b")), "invalid_lock_info"
    )
    refused(
        client.request("UNLOCK", f"{API}/unlock/w", json={"ID": held["ID"] + "\x00"}),
        "invalid_lock_info",
    )
    lineage = tfstate(2).replace(b'"lineage": "lin-1"', b'"lineage": "lin-1\\u0000"')
    refused(
        client.post(f"{API}/state/w", params={"ID": held["ID"]}, content=lineage), "invalid_state"
    )
    refused(client.post(f"{API}/keys", json={"name": "a\x00b", "role": "reader"}))
    refused(client.post(f"{API}/plan", json={"workspace": "w", "variables": {"a": "\x00"}}))
    refused(client.get(f"{API}/state/w%00"), "invalid_workspace_name")
    assert snapshot(client, "w") == before
    assert client.get(f"{API}/keys").json()["keys"] == []
    assert client.get(f"{API}/state/v").status_code == 404


def test_405_lists_every_method_of_the_address(client: TestClient) -> None:
    response = client.request("PATCH", f"{API}/state/w")
    assert response.status_code == 405
    assert response.json()["error"] == "method_not_allowed"
    allowed = {m.strip() for m in response.headers["allow"].split(",")}
    assert allowed == {"GET", "POST", "PUT", "DELETE", "LOCK", "UNLOCK"}


# -- lock ownership ----------------------------------------------------------------------

ADMIN_SECRET = "validation-admin-secret-0123456789"


@pytest.fixture
def keyed(make_client: ClientFactory) -> tuple[TestClient, dict[str, dict[str, str]]]:
    client = make_client(admin_key=ADMIN_SECRET)
    headers = {"admin": {"Authorization": f"Bearer {ADMIN_SECRET}"}}
    for name in ("alice", "mallory"):
        created = client.post(
            f"{API}/keys", json={"name": name, "role": "writer"}, headers=headers["admin"]
        )
        assert created.status_code == 201, created.text
        headers[name] = {"Authorization": f"Bearer {created.json()['secret']}"}
    return client, headers


def _audit(client: TestClient, admin: dict[str, str], action: str) -> list[dict[str, Any]]:
    client.portal.call(client.app_state.audit.flush)  # type: ignore[attr-defined,union-attr]
    events: list[dict[str, Any]] = client.get(
        f"{API}/audit", params={"action": action, "workspace": "app"}, headers=admin
    ).json()["events"]
    return events


def test_a_lock_id_is_only_good_for_the_key_that_took_it(
    keyed: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    """Mallory read Alice's lock ID from a 423 body: writing with it is refused exactly as
    unlocking with it is (403 forbidden, audited), and changes nothing."""
    client, keys = keyed
    alice, mallory, admin = keys["alice"], keys["mallory"], keys["admin"]
    assert client.post(f"{API}/state/app", content=tfstate(1), headers=alice).status_code == 200
    held = lock_info(who="alice@laptop")
    assert client.request("LOCK", f"{API}/lock/app", json=held, headers=alice).status_code == 200
    conflict = client.post(f"{API}/state/app", content=tfstate(2), headers=mallory)
    assert conflict.status_code == 423 and conflict.json()["ID"] == held["ID"]
    client.headers.update(admin)
    before = snapshot(client, "app")

    stolen_write = client.post(
        f"{API}/state/app", params={"ID": held["ID"]}, content=tfstate(2), headers=mallory
    )
    stolen_unlock = client.request(
        "UNLOCK", f"{API}/unlock/app", json={"ID": held["ID"]}, headers=mallory
    )
    for refusal in (stolen_write, stolen_unlock):
        assert refusal.status_code == 403, refusal.text
        assert refusal.json()["error"] == "forbidden"
        assert "taken by key 'alice'" in refusal.json()["message"]
    assert snapshot(client, "app") == before

    outcomes = {(e["key"], e["outcome"], e["status"]) for e in _audit(client, admin, "state.write")}
    assert ("mallory", "denied", 403) in outcomes, outcomes
    unlocks = {(e["key"], e["outcome"], e["status"]) for e in _audit(client, admin, "lock.release")}
    assert ("mallory", "denied", 403) in unlocks, unlocks

    # The key that took it writes and unlocks as before.
    own = client.post(
        f"{API}/state/app", params={"ID": held["ID"]}, content=tfstate(2), headers=alice
    )
    assert own.status_code == 200, own.text
    assert orjson.loads(client.get(f"{API}/state/app").content)["serial"] == 2
    released = client.request("UNLOCK", f"{API}/unlock/app", json={"ID": held["ID"]}, headers=alice)
    assert released.status_code == 200


def test_a_typed_parameter_refused_by_the_framework_is_401_without_a_key(tmp_path: Path) -> None:
    """Safety net for routes that declare typed parameters (FastAPI validates them before the
    handler runs): a caller without a valid key gets 401, not a description of its input."""
    app = create_app(Settings.load({"data_dir": tmp_path / "d", "auth": "required"}))

    async def typed(n: int) -> dict[str, int]:
        return {"n": n}

    app.add_api_route("/typed", typed)
    with TestClient(asgi_app(app, fast_path=False)) as client:
        refused = client.get("/typed", params={"n": "x"})
        assert refused.status_code == 401, refused.text
        assert refused.json()["error"] == "unauthorized"


def test_explorer_and_search_check_the_key_before_reading_their_query(
    keyed: tuple[TestClient, dict[str, dict[str, str]]],
) -> None:
    """Their parameters are read after `authorize`: a request without a key is a 401 (and
    audited, as denied) whatever its query string, never a 400 that describes its input."""
    client, keys = keyed
    admin = keys["admin"]
    assert client.post(f"{API}/state/app", content=tfstate(1), headers=admin).status_code == 200
    requests = [
        ("/resources/app", {"limit": "x", "version": BEYOND_INT64, "mode": "weird"}, "state.read"),
        ("/resources/app/terraform_data.a", {"as_of": "x" * 5000}, "state.read"),
        ("/resources/app/terraform_data.a/history", {"before": ARABIC_INDIC_THREE}, "history.read"),
        ("/outputs/app", {"reveal": "maybe", "version": "0"}, "state.read"),
        ("/outputs/app", {"reveal": "true", "version": "-1"}, "sensitive.reveal"),
        ("/diff/app", {"from": SUPERSCRIPT_TWO, "from_workspace": "bad/name"}, "state.read"),
        ("/search", {"limit": "many", "history": "perhaps", "mode": "resource"}, "history.read"),
    ]
    for path, params, _ in requests:
        for headers in ({}, {"Authorization": "Bearer not-a-key"}):
            response = client.get(API + path, params=params, headers=headers)
            assert response.status_code == 401, (path, params, response.text)
            assert response.json()["error"] == "unauthorized"
    client.portal.call(client.app_state.audit.flush)  # type: ignore[attr-defined,union-attr]
    for action in {action for _, _, action in requests}:
        events = client.get(f"{API}/audit", params={"action": action}, headers=admin).json()
        denied = [e for e in events["events"] if (e["outcome"], e["status"]) == ("denied", 401)]
        sent = sum(2 for _, _, wanted in requests if wanted == action)
        assert len(denied) == sent, (action, events)
    # With a key, the same query strings are refused as malformed.
    for path, params, _ in requests:
        refused(client.get(API + path, params=params, headers=admin))
