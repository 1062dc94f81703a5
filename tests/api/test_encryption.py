"""Encryption status and online rotation through the admin API, on every engine."""

from __future__ import annotations

import base64
import time
from pathlib import Path

import orjson
import pytest
from starlette.testclient import TestClient

from blixard.store.crypto import generate_key, key_id_of_key
from tests.api.conftest import ClientFactory, lock_info, tfstate

API = "/api/tofu"


def key_id(key: str) -> str:
    return key_id_of_key(base64.b64decode(key))


def test_status_and_rotation_to_a_new_key(make_client: ClientFactory, tmp_path: Path) -> None:
    old, new = generate_key(), generate_key()
    data_dir = tmp_path / "data"
    client = make_client(data_dir=data_dir, encryption_key=old)
    states = [tfstate(serial) for serial in (1, 2, 3)]
    for body in states:
        assert client.post(f"{API}/state/w", content=body).status_code == 200
    info = lock_info(who="alice@ops")
    assert client.request("LOCK", f"{API}/lock/w", json=info).status_code == 200
    assert client.get(f"{API}/admin/encryption").json()["rotation_needed"] is False
    client.__exit__(None, None, None)

    client = make_client(data_dir=data_dir, encryption_key=new, encryption_old_keys=old)
    status = client.get(f"{API}/admin/encryption").json()
    assert status["current_key_id"] == key_id(new)
    assert status["versions"] == {key_id(old): 3} and status["locks"] == {key_id(old): 1}
    assert status["key_ids_in_use"] == sorted([key_id(old), key_id(new)])
    assert status["rotation_needed"] is True and status["pending_versions"] == 3

    refused = client.post(f"{API}/admin/encryption/rotate", params={"max_seconds": 0})
    assert refused.status_code == 400 and refused.json()["error"]
    assert client.get(f"{API}/admin/encryption").json() == status  # nothing changed

    rotated = {"versions": 0, "locks": 0, "retired": []}
    while True:
        step = client.post(f"{API}/admin/encryption/rotate", params={"max_seconds": 0.5})
        assert step.status_code == 200, step.text
        progress = step.json()
        rotated["versions"] += progress["rotated_versions"]
        rotated["locks"] += progress["rotated_locks"]
        rotated["retired"] += progress["retired_key_ids"]
        if progress["done"]:
            break
    assert rotated == {"versions": 3, "locks": 1, "retired": [key_id(old)]}
    assert progress["total_versions"] == 3 and progress["current_key_id"] == key_id(new)

    status = client.get(f"{API}/admin/encryption").json()
    assert status["versions"] == {key_id(new): 3} and status["locks"] == {key_id(new): 1}
    assert status["key_ids_in_use"] == [key_id(new)]
    assert status["removable_key_ids"] == [key_id(old)]
    assert "may be removed" in status["message"]
    for number, body in enumerate(states, start=1):
        assert client.get(f"{API}/state/w", params={"version": number}).content == body
    assert client.get(f"{API}/lock/w").json()["lock"]["Who"] == "alice@ops"
    client.portal.call(client.app_state.audit.flush)  # type: ignore[attr-defined,union-attr]
    events = client.get(f"{API}/audit", params={"action": "admin"}).json()["events"]
    assert any(
        f"encryption rotate to key id {key_id(new)}: 3 versions, 1 locks" in (e["detail"] or "")
        for e in events
    )
    client.__exit__(None, None, None)

    # The new key alone serves everything now.
    client = make_client(data_dir=data_dir, encryption_key=new)
    for number, body in enumerate(states, start=1):
        assert client.get(f"{API}/state/w", params={"version": number}).content == body


def _refusal_details(client: TestClient, count: int) -> list[str]:
    """The details of the refused lock/write requests in the audit trail, once all `count`
    were written (refusals are queued and written in batches, off the request path)."""
    for _ in range(200):
        events = client.get(f"{API}/audit", params={"limit": 100}).json()["events"]
        refused = [e["detail"] for e in events if str(e["outcome"]).startswith("refused:")]
        if len(refused) >= count:
            return refused
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} refusals were audited: {events}")


@pytest.mark.parametrize("encrypted", [True, False], ids=["encrypted", "plaintext"])
def test_the_lock_holders_who_stays_out_of_audit_details_when_encrypted(
    make_client: ClientFactory, encrypted: bool
) -> None:
    who = "alice-SECRET-WHO@ops-laptop"
    client = make_client(encryption_key=generate_key() if encrypted else None)
    assert client.post(f"{API}/state/w", content=tfstate(1)).status_code == 200
    held = lock_info(who=who)
    assert client.request("LOCK", f"{API}/lock/w", json=held).status_code == 200
    other = lock_info(who="bob@host")
    locked = client.request("LOCK", f"{API}/lock/w", json=other)
    assert locked.status_code == 423 and locked.json()["Who"] == who  # clients still see it
    assert client.post(f"{API}/state/w", content=tfstate(2)).status_code == 423
    wrong = orjson.dumps(other)
    assert client.request("UNLOCK", f"{API}/unlock/w", content=wrong).status_code == 409
    details = _refusal_details(client, 3)
    if encrypted:
        assert all(who not in detail for detail in details), details
        assert all(f"by another client (lock ID {held['ID']})" in d for d in details), details
    else:
        assert all(who in detail for detail in details), details
