"""README promises that no other test pinned down: each test here fails on a small planted bug
that left the rest of the suite green (issue 10, "Tests that prove what the README promises")."""

from __future__ import annotations

from starlette.testclient import TestClient

from tests.api.conftest import content_md5, lock_info, snapshot, tfstate
from tests.api.test_backend_protocol import API, lock, write


def test_locked_write_with_a_wrong_content_md5_is_refused_and_changes_nothing(
    client: TestClient,
) -> None:
    # Terraform always writes with ?ID= while it holds the lock: the MD5 must be checked then too.
    assert write(client, "w", tfstate(1)).status_code == 200
    info = lock_info()
    assert lock(client, "w", info).status_code == 200
    before = snapshot(client, "w")
    body = tfstate(2, salt="new")
    refused = write(client, "w", body, info["ID"], **{"Content-MD5": content_md5(body + b" ")})
    assert refused.status_code == 400 and refused.json()["error"] == "md5_mismatch"
    assert snapshot(client, "w") == before
    accepted = write(client, "w", body, info["ID"], **{"Content-MD5": content_md5(body)})
    assert accepted.status_code == 200
    assert client.get(f"{API}/state/w").content == body


def test_rollback_sets_serial_to_current_serial_plus_one_not_version_plus_one(
    client: TestClient,
) -> None:
    # Serials 1, 5, 9 in versions 1, 2, 3: rolling back to version 1 must give serial 10
    # (newer than what Terraform last saw), not 2 (its version + 1) nor 4 (versions + 1).
    for serial in (1, 5, 9):
        assert write(client, "w", tfstate(serial, salt=str(serial))).status_code == 200
    response = client.post(f"{API}/rollback/w/1")
    assert response.status_code == 200
    assert response.json()["version"] == 4 and response.json()["serial"] == 10
    restored = client.get(f"{API}/state/w").content
    original = tfstate(1, salt="1")
    assert restored == original.replace(b'"serial": 1,', b'"serial": 10,', 1)
    assert len(restored) == len(original) + 1  # only the serial's digits differ
    # Terraform's next write (serial 11) is accepted on top of it.
    assert write(client, "w", tfstate(11, salt="after")).status_code == 200
