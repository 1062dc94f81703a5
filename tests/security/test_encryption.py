"""Encryption at rest against real `blixard serve` processes (tests/harness.py).

A state holding a known secret is written with encryption on; neither the SQLite file nor its
WAL ever holds that secret (nor the lock holder's `Who`), while running and after a clean stop;
every version reads back byte-exact; `blixard encryption rotate` moves everything to a new key
while the server serves, after which the new key alone is enough; and the server refuses to
start, in one line with exit status 2, on a wrong key, on a missing key, and on a key newly
set over unencrypted data (until `blixard encryption rotate --data-dir` has encrypted it).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from blixard.store.crypto import generate_key, key_id_of_key
from tests.harness import ServerProcess, free_port

SECRET = "hunter2-db-password-7f3a"
WHO_SECRET = "ops-laptop-SECRET-WHO"
#: Small enough that zstd keeps it as raw literals: unencrypted, SECRET would be in the file.
TINY = json.dumps({"serial": 1, "lineage": "t", "pw": SECRET}, separators=(",", ":")).encode()


def key_id(key: str) -> str:
    return key_id_of_key(base64.b64decode(key))


@pytest.fixture
def keys() -> tuple[str, str]:
    return generate_key(), generate_key()


class History:
    """Similar successive states of one workspace, each holding SECRET, as Terraform writes."""

    def __init__(self, workspace: str, seed: int = 1) -> None:
        self.workspace = workspace
        self.rng = random.Random(seed)
        self.resources = [
            {
                "mode": "managed",
                "type": "terraform_data",
                "name": f"db{i}",
                "instances": [
                    {"attributes": {"id": self.rng.randbytes(8).hex(), "password": SECRET}}
                ],
            }
            for i in range(150)
        ]
        self.bodies: list[bytes] = []

    def next_body(self) -> bytes:
        serial = len(self.bodies) + 1
        if serial > 1:
            changed = self.resources[self.rng.randrange(len(self.resources))]
            changed["instances"][0]["attributes"]["id"] = self.rng.randbytes(8).hex()
        document = {
            "version": 4,
            "terraform_version": "1.15.5",
            "serial": serial,
            "lineage": f"lineage-{self.workspace}",
            "outputs": {},
            "resources": self.resources,
        }
        body = (json.dumps(document, indent=2) + "\n").encode()
        self.bodies.append(body)
        return body

    def write(self, http: httpx.Client, count: int, lock_id: str | None = None) -> None:
        for _ in range(count):
            body = self.next_body()
            md5 = base64.b64encode(hashlib.md5(body).digest()).decode()
            response = http.post(
                f"/state/{self.workspace}",
                content=body,
                params={"ID": lock_id} if lock_id else None,
                headers={"Content-Type": "application/json", "Content-MD5": md5},
            )
            assert response.status_code == 200, response.text

    def check(self, http: httpx.Client) -> None:
        """Every version, deltas included, reads back byte-exact."""
        for number, body in enumerate(self.bodies, start=1):
            response = http.get(f"/state/{self.workspace}", params={"version": number})
            assert response.status_code == 200, (number, response.text)
            assert response.content == body, number


def lock(http: httpx.Client, workspace: str, lock_id: str = "lock-1") -> None:
    info = {"ID": lock_id, "Operation": "OperationTypeApply", "Who": WHO_SECRET, "Info": ""}
    response = http.post(f"/lock/{workspace}", json=info)
    assert response.status_code == 200, response.text


def client(server: ServerProcess) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/api/tofu", timeout=30)


def assert_no_secrets(data_dir: Path, *, expect_wal: bool) -> None:
    names = []
    for path in sorted(data_dir.rglob("*")):
        if not path.is_file():
            continue  # e.g. runs/, where run work directories come and go
        content = path.read_bytes()
        assert SECRET.encode() not in content, f"the secret is readable in {path.name}"
        assert WHO_SECRET.encode() not in content, f"the lock's Who is readable in {path.name}"
        names.append(path.name)
    assert "blixard.db" in names
    if expect_wal:
        assert (data_dir / "blixard.db-wal").stat().st_size > 0


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    """Servers started by a test; stopped (and their logs checked) afterwards."""
    started: list[ServerProcess] = []
    yield started
    for server in started:
        server.stop()
        log = server.log_path.read_text(errors="replace")
        assert "Traceback" not in log, f"server logged a traceback:\n{log[-4000:]}"


def start(
    servers: list[ServerProcess], data_dir: Path, key: str | None, old: str | None = None
) -> ServerProcess:
    env = {"BLIXARD_ENCRYPTION_KEY": key or "", "BLIXARD_ENCRYPTION_OLD_KEYS": old or ""}
    env = {name: value for name, value in env.items() if value}
    server = ServerProcess(data_dir, env=env, log_path=data_dir.parent / f"server-{len(servers)}")
    servers.append(server)
    return server.start()


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BLIXARD_")}
    return {**env, **extra}


def refused_start(data_dir: Path, **env: str) -> str:
    """Run `blixard serve` expecting it to refuse in one line with exit status 2; that line."""
    proc = subprocess.run(
        [
            *(sys.executable, "-m", "blixard", "serve"),
            *("--listen", f"127.0.0.1:{free_port()}", "--data-dir", str(data_dir)),
        ],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, f"exit {proc.returncode}: {proc.stdout}{proc.stderr}"
    assert "Traceback" not in proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr  # one line
    assert proc.stderr.startswith("blixard: "), proc.stderr
    return proc.stderr.strip()


def cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "blixard", *args],
        env=clean_env(**env),
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_secret_never_on_disk_and_every_version_reads_back(
    tmp_path: Path, keys: tuple[str, str], servers: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "data"
    key, _ = keys
    server = start(servers, data_dir, key)
    history = History("prod")
    with client(server) as http:
        history.write(http, 160)
        tiny = http.post("/state/tiny", content=TINY)
        assert tiny.status_code == 200, tiny.text
        lock(http, "prod")
        # While running, before the clean stop's checkpoint: the WAL holds recent pages.
        assert_no_secrets(data_dir, expect_wal=True)
        history.check(http)
        assert http.get("/state/tiny").content == TINY
        assert http.get("/lock/prod").json()["lock"]["Who"] == WHO_SECRET
        status = http.get("/admin/encryption").json()
        assert status["encrypted"] is True and status["current_key_id"] == key_id(key)
        assert status["versions"] == {key_id(key): 161}
        assert status["locks"] == {key_id(key): 1}
        assert status["rotation_needed"] is False
    server.stop()
    assert_no_secrets(data_dir, expect_wal=False)
    # Compressed before encrypted: the history still takes a small fraction of its raw size.
    raw = sum(len(body) for body in history.bodies)
    on_disk = sum(path.stat().st_size for path in data_dir.iterdir())
    assert on_disk < raw * 0.05, (on_disk, raw)

    server = start(servers, data_dir, key)
    with client(server) as http:
        history.check(http)
        assert http.get("/lock/prod").json()["lock"]["Who"] == WHO_SECRET


def test_rotation_while_serving_then_the_new_key_alone(
    tmp_path: Path, keys: tuple[str, str], servers: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "data"
    old_key, new_key = keys
    histories = [History(f"ws{i}", seed=i) for i in range(3)]
    server = start(servers, data_dir, old_key)
    with client(server) as http:
        for history in histories:
            history.write(http, 60)
        lock(http, "ws0")
    server.stop()

    server = start(servers, data_dir, new_key, old=old_key)
    with client(server) as http:
        status = http.get("/admin/encryption").json()
        assert status["versions"] == {key_id(old_key): 180} and status["rotation_needed"]
        assert status["key_ids_in_use"] == sorted([key_id(old_key), key_id(new_key)])

        # Writes keep flowing (under the lock's ID for ws0) while the CLI rotates.
        def keep_writing() -> None:
            with client(server) as writer:
                histories[0].write(writer, 20, lock_id="lock-1")
                histories[1].write(writer, 20)

        writer = threading.Thread(target=keep_writing)
        writer.start()
        rotated = cli("encryption", "rotate", "--url", server.url)
        writer.join()
        assert rotated.returncode == 0, rotated.stderr
        assert f"everything is now sealed with key id {key_id(new_key)}" in rotated.stdout
        assert f"No data uses key ids {key_id(old_key)} any more" in rotated.stdout

        status = http.get("/admin/encryption").json()
        assert status["versions"] == {key_id(new_key): 220}
        assert status["locks"] == {key_id(new_key): 1}
        assert status["key_ids_in_use"] == [key_id(new_key)]
        assert status["removable_key_ids"] == [key_id(old_key)]
        for history in histories:
            history.check(http)
        shown = cli("encryption", "status", "--url", server.url)
        assert shown.returncode == 0 and "may be removed" in shown.stdout
    server.stop()

    # The old key may go now; it alone no longer opens the database.
    message = refused_start(data_dir, BLIXARD_ENCRYPTION_KEY=old_key)
    assert "does not open this database" in message
    server = start(servers, data_dir, new_key)
    with client(server) as http:
        for history in histories:
            history.check(http)
        assert http.get("/lock/ws0").json()["lock"]["Who"] == WHO_SECRET
        again = cli("encryption", "rotate", "--url", server.url, "--json")
        assert again.returncode == 0 and json.loads(again.stdout)["rotated_versions"] == 0


def test_wrong_or_missing_key_refuses_to_start(
    tmp_path: Path, keys: tuple[str, str], servers: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "data"
    key, wrong = keys
    server = start(servers, data_dir, key)
    with client(server) as http:
        History("w").write(http, 3)
    server.stop()

    message = refused_start(data_dir, BLIXARD_ENCRYPTION_KEY=wrong)
    assert message.endswith(
        ": the configured BLIXARD_ENCRYPTION_KEY does not open this database "
        f"(key id {key_id(wrong)}); data is sealed with key ids {key_id(key)}"
    )
    message = refused_start(data_dir)
    assert "is encrypted" in message and "no key is configured" in message
    message = refused_start(data_dir, BLIXARD_ENCRYPTION_KEY="bm90IDMyIGJ5dGVz")
    assert message.endswith(
        "BLIXARD_ENCRYPTION_KEY must be base64 of exactly 32 bytes (it decodes to 12); "
        "generate a key with `blixard encryption generate-key`"
    )
    # The refusals changed nothing: the right key still serves everything.
    server = start(servers, data_dir, key)
    with client(server) as http:
        assert http.get("/state/w").status_code == 200


def test_key_over_unencrypted_data_refuses_until_encrypted_offline(
    tmp_path: Path, keys: tuple[str, str], servers: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "data"
    key, _ = keys
    history = History("legacy")
    server = start(servers, data_dir, None)
    with client(server) as http:
        history.write(http, 40)
        assert http.post("/state/tiny", content=TINY).status_code == 200
        lock(http, "legacy")
        assert http.post("/admin/encryption/rotate").status_code == 409
        # While the server runs, the offline rotation refuses to touch its file.
        busy = cli("encryption", "rotate", "--data-dir", str(data_dir), BLIXARD_ENCRYPTION_KEY=key)
        assert busy.returncode == 1 and "in use by a running server" in busy.stderr
    server.stop()
    assert SECRET.encode() in (data_dir / "blixard.db").read_bytes()  # the control

    message = refused_start(data_dir, BLIXARD_ENCRYPTION_KEY=key)
    assert "holds unencrypted data" in message
    assert f"blixard encryption rotate --data-dir {data_dir}" in message

    done = cli("encryption", "rotate", "--data-dir", str(data_dir), BLIXARD_ENCRYPTION_KEY=key)
    assert done.returncode == 0, done.stderr
    assert "Re-encrypted 41 versions and 1 lock and run payloads" in done.stdout
    assert_no_secrets(data_dir, expect_wal=False)

    server = start(servers, data_dir, key)
    with client(server) as http:
        history.check(http)
        assert http.get("/state/tiny").content == TINY
        assert http.get("/lock/legacy").json()["lock"]["Who"] == WHO_SECRET
    server.stop()
    assert "no key is configured" in refused_start(data_dir)


def test_generate_key() -> None:
    result = cli("encryption", "generate-key")
    assert result.returncode == 0
    key = result.stdout.strip()
    assert len(base64.b64decode(key, validate=True)) == 32
    assert f"key id {key_id(key)}" in result.stderr


def test_offline_key_management_needs_the_encryption_key(
    tmp_path: Path, keys: tuple[str, str], servers: list[ServerProcess]
) -> None:
    data_dir = tmp_path / "data"
    key, _ = keys
    server = start(servers, data_dir, key)
    with client(server) as http:
        lock(http, "w")
    server.stop()
    create = ("keys", "create", "ops", "--role", "admin", "--workspaces", "*")
    refused = cli(*create, "--data-dir", str(data_dir))
    assert refused.returncode == 1 and "no key is configured" in refused.stderr
    assert "Traceback" not in refused.stderr
    created = cli(*create, "--data-dir", str(data_dir), BLIXARD_ENCRYPTION_KEY=key)
    assert created.returncode == 0, created.stderr
    assert_no_secrets(data_dir, expect_wal=False)
