"""`blixard backup`, `restore` and `migrate` against real servers: a live server's backup,
restored into a fresh data directory (encrypted with another key) and served again, answers
exactly like the original; migrate round-trips; refusals are clear and change nothing."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import zstandard
from typer.testing import CliRunner, Result

from blixard import cli
from blixard.domain.models import VersionMeta
from blixard.domain.runs import Run, RunStatus
from blixard.store.crypto import Cipher, parse_key
from blixard.store.encryption import EncryptionRefused
from blixard.store.snapshot import (
    SnapshotBegin,
    SnapshotCounts,
    SnapshotRecord,
    SnapshotWriter,
    VersionRecord,
    WorkspaceRecord,
    digest_store,
)
from blixard.store.sqlite import SQLiteStore
from tests.harness import ServerProcess
from tests.store.test_snapshot import contents

runner = CliRunner()

ADMIN = "blx_backup-tests-admin-" + uuid.uuid4().hex
KEY_SOURCE = base64.b64encode(os.urandom(32)).decode()
KEY_TARGET = base64.b64encode(os.urandom(32)).decode()
SECRET = "db-password-" + uuid.uuid4().hex  # inside the states: must never be on disk unsealed
RUN_ID = "run-000000000001aaaaaaaaaaaaaaaa"
#: Secrets issued while setting up the source server.
SECRETS: dict[str, str] = {}


def body(serial: int, lineage: str, extra: str = "") -> bytes:
    document = {
        "version": 4,
        "terraform_version": "1.15.5",
        "serial": serial,
        "lineage": lineage,
        "outputs": {"password": {"value": SECRET, "type": "string", "sensitive": True}},
        "resources": [{"type": "terraform_data", "name": f"r{i}", "x": extra} for i in range(5)],
    }
    return orjson.dumps(document, option=orjson.OPT_INDENT_2)


def api(server: ServerProcess, key: str = ADMIN) -> httpx.Client:
    return httpx.Client(base_url=server.url + "/api/tofu", auth=("x", key), timeout=15.0)


def ok(response: httpx.Response) -> httpx.Response:
    assert response.status_code < 300, (response.status_code, response.text)
    return response


async def _seed_run(data_dir: Path) -> None:
    """A finished run with its files, written before the server's first start."""
    store = SQLiteStore(data_dir / "blixard.db", cipher=Cipher(parse_key(KEY_SOURCE, "key")))
    await store.open()
    try:
        run = await store.create_run(
            Run(RUN_ID, "app", RunStatus.queued, 1_700_000_000.0, created_by="admin")
        )
        await store.update_run(
            Run(
                RUN_ID,
                "app",
                RunStatus.errored,
                1_700_000_000.0,
                created_by="admin",
                error="no binary",
                finished_at=1_700_000_001.0,
            ),
            expect_revision=run.revision,
        )
        await store.put_run_blob(RUN_ID, "config", b"config archive \x00\xff")
        await store.append_run_log(RUN_ID, b"Initializing...\n")
        await store.append_run_log(RUN_ID, b"Error: no binary\n")
    finally:
        await store.close()


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    root = tmp_path_factory.mktemp("blixard-backup")
    data = root / "data"
    data.mkdir()
    asyncio.run(_seed_run(data))
    server = ServerProcess(
        data,
        env={"BLIXARD_ADMIN_KEY": ADMIN, "BLIXARD_ENCRYPTION_KEY": KEY_SOURCE},
        log_path=root / "source.log",
    ).start()
    try:
        with api(server) as http:
            for serial in range(1, 6):
                ok(http.post("/state/app", content=body(serial, "app", extra="x" * serial)))
            for serial in range(1, 4):
                ok(http.post("/state/net", content=body(serial, "net")))
            ok(http.post("/rollback/net/1"))
            lock = {
                "ID": "lock-held",
                "Operation": "OperationTypeApply",
                "Who": "ops@laptop",
                "Version": "1.15.5",
                "Created": "2026-01-01T00:00:00Z",
                "Info": "",
                "Path": "",
            }
            ok(http.post("/lock/locked", json=lock))
            ok(http.post("/state/locked", params={"ID": "lock-held"}, content=body(1, "lk")))
            for serial in (1, 2):
                ok(http.post("/state/gone", content=body(serial, "gone")))
            ok(http.delete("/workspaces/gone"))
            writer = ok(
                http.post("/keys", json={"name": "ci", "role": "writer", "workspaces": "app,net"})
            )
            ok(http.post("/keys", json={"name": "retired", "role": "reader", "workspaces": "*"}))
            ok(http.delete("/keys/retired"))
        SECRETS["writer"] = writer.json()["secret"]
        yield server
    finally:
        server.stop()
    log = server.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-4000:]


def invoke(*args: str, **env: str | None) -> Result:
    base: dict[str, str | None] = {
        "BLIXARD_URL": None,
        "BLIXARD_API_KEY": None,
        "BLIXARD_ENCRYPTION_KEY": None,
        "BLIXARD_ADMIN_KEY": None,
    }
    return runner.invoke(cli.app, list(args), env={**base, **env})


def one_error(result: Result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    return errors[0]


@pytest.fixture(scope="module")
def backup_file(source: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Path:
    file = tmp_path_factory.mktemp("backups") / "live.bxs"
    result = invoke("backup", str(file), "--url", source.url, BLIXARD_API_KEY=ADMIN)
    assert result.exit_code == 0, result.output
    assert "plaintext" in result.stderr  # the warning
    assert "Backed up" in result.stdout and "Checksum:" in result.stdout
    assert oct(file.stat().st_mode & 0o777) == "0o600"
    return file


# --------------------------------------------------------------------------- helpers to compare


def every_version(http: httpx.Client, workspace: str) -> list[tuple[dict[str, Any], bytes]]:
    history = ok(http.get(f"/history/{workspace}", params={"limit": 1000})).json()["versions"]
    return [
        (meta, ok(http.get(f"/state/{workspace}", params={"version": meta["version"]})).content)
        for meta in history
    ]


def observable(server: ServerProcess, max_audit_id: int | None = None) -> dict[str, Any]:
    """What clients see through the API (times of use and lock ages left out)."""
    with api(server) as http:
        names = [ws["name"] for ws in ok(http.get("/workspaces")).json()["workspaces"]]
        seen: dict[str, Any] = {"workspaces": ok(http.get("/workspaces")).json()}
        for name in names:
            lock = ok(http.get(f"/lock/{name}")).json()
            lock.pop("age_seconds", None)
            seen[name] = {
                "versions": every_version(http, name),
                "head": http.get(f"/state/{name}").content,
                "lock": lock,
                "plans": ok(http.get(f"/plans/{name}")).json(),
            }
        keys = ok(http.get("/keys", params={"include_revoked": "true"})).json()["keys"]
        seen["keys"] = [{k: v for k, v in key.items() if k != "last_used_at"} for key in keys]
        events = ok(http.get("/audit", params={"limit": 1000})).json()["events"]
        if max_audit_id is not None:
            events = [event for event in events if event["id"] <= max_audit_id]
        seen["audit"] = events
        seen["run_log"] = ok(http.get(f"/plan/{RUN_ID}/logs")).content
    return seen


async def encrypted(data_dir: Path) -> bool:
    """Whether a data dir refuses to open without a key."""
    store = SQLiteStore(data_dir / "blixard.db")
    try:
        await store.open()
    except EncryptionRefused:
        return True
    finally:
        await store.close()
    return False


# --------------------------------------------------------------------------- tests


def test_backup_of_a_live_server_restores_into_an_identical_server(
    source: ServerProcess, backup_file: Path, tmp_path: Path
) -> None:
    restored = tmp_path / "restored"
    result = invoke(
        "restore", str(backup_file), "--data-dir", str(restored), BLIXARD_ENCRYPTION_KEY=KEY_TARGET
    )
    assert result.exit_code == 0, result.output
    assert "matches the snapshot" in result.stdout
    assert "Encrypted:      yes" in result.stdout
    # Only the finished database is left: no temporary files.
    assert sorted(p.name for p in restored.iterdir()) == ["blixard.db", "blixard.db.lock"]
    # Encryption at rest on the target, with its own key.
    assert asyncio.run(encrypted(restored)) is True
    assert SECRET.encode() not in (restored / "blixard.db").read_bytes()
    # ... while the snapshot itself holds the states in plaintext (as documented).
    raw = zstandard.ZstdDecompressor().decompress(backup_file.read_bytes(), max_output_size=1 << 28)
    assert SECRET.encode() in raw

    copy = ServerProcess(
        restored,
        env={"BLIXARD_ADMIN_KEY": ADMIN, "BLIXARD_ENCRYPTION_KEY": KEY_TARGET},
        log_path=tmp_path / "copy.log",
    ).start()
    try:
        with api(copy) as http:
            audit = ok(http.get("/audit", params={"limit": 1000})).json()["events"]
        assert any(e["detail"] == "backup: snapshot started" for e in audit)
        last_id = max(event["id"] for event in audit)
        mine, theirs = observable(copy), observable(source, max_audit_id=last_id)
        assert mine == theirs
        assert {"app", "net", "locked"} <= set(mine)
        assert (
            len(mine["app"]["versions"]) == 5
            and mine["net"]["versions"][0][0]["source"] == "rollback"
        )
        assert mine["locked"]["lock"]["lock"]["ID"] == "lock-held"
        assert mine["run_log"] == b"Initializing...\nError: no binary\n"
        # Key hashes came along: the writer's secret still works, with its scopes.
        with api(copy, SECRETS["writer"]) as http:
            assert http.get("/state/app").status_code == 200
            assert http.get("/state/locked").status_code == 404  # outside its scopes
        # The held lock still holds; the soft-deleted workspace can be brought back.
        with api(copy) as http:
            assert http.post("/lock/locked", json={"ID": "other"}).status_code in (409, 423)
            ok(http.post("/workspaces/gone/restore"))
            gone = every_version(http, "gone")
            assert [meta["version"] for meta, _ in gone] == [2, 1]
            assert gone[0][1] == body(2, "gone")
    finally:
        copy.stop()
    assert "Traceback" not in copy.log_path.read_text(errors="replace")


def test_migrate_sqlite_to_sqlite_round_trip_is_identical(
    backup_file: Path, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    result = invoke(
        "restore",
        str(backup_file),
        "--data-dir",
        str(first),
        "--json",
        BLIXARD_ENCRYPTION_KEY=KEY_TARGET,
    )
    assert result.exit_code == 0, result.output
    checksum = json.loads(result.stdout)["checksum"]

    # Encrypted → plaintext → encrypted with another key, sqlite → sqlite → sqlite.
    key_file = tmp_path / "target.key"
    key_file.write_text(KEY_SOURCE + "\n")
    urls = [f"sqlite:///{tmp_path / name / 'blixard.db'}" for name in ("first", "middle", "last")]
    hops = [
        (urls[0], urls[1], {"BLIXARD_ENCRYPTION_KEY": KEY_TARGET}, ["--to-unencrypted"]),
        (urls[1], urls[2], {}, ["--to-key-file", str(key_file)]),
    ]
    for source_url, target_url, env, flags in hops:
        result = invoke(
            "migrate", "--from", source_url, "--to", target_url, "--json", *flags, **env
        )
        assert result.exit_code == 0, result.output
        report = json.loads(result.stdout)
        assert report["verified"] is True
        assert report["source"]["checksum"] == report["target"]["checksum"] == checksum
        assert report["source"]["counts"] == report["target"]["counts"]

    async def compare() -> None:
        a = SQLiteStore(first / "blixard.db", cipher=Cipher(parse_key(KEY_TARGET, "k")))
        b = SQLiteStore(tmp_path / "last" / "blixard.db", cipher=Cipher(parse_key(KEY_SOURCE, "k")))
        await a.open()
        await b.open()
        try:
            assert await contents(a) == await contents(b)
            assert (await digest_store(b)).checksum == checksum
        finally:
            await a.close()
            await b.close()

    asyncio.run(compare())
    # The middle hop is not encrypted, the last one is.
    assert asyncio.run(encrypted(tmp_path / "middle")) is False
    assert asyncio.run(encrypted(tmp_path / "last")) is True

    # The human-readable report prints counts and checksums too.
    result = invoke(
        "migrate",
        "--from",
        urls[2],
        "--to",
        f"sqlite:///{tmp_path / 'again.db'}",
        BLIXARD_ENCRYPTION_KEY=KEY_SOURCE,
    )
    assert result.exit_code == 0, result.output
    assert f"sha256:{checksum}" in result.stdout and "Versions" in result.stdout


def test_offline_backup_of_a_data_dir_has_the_same_checksum(
    backup_file: Path, tmp_path: Path
) -> None:
    restored = tmp_path / "restored"
    result = invoke(
        "restore",
        str(backup_file),
        "--data-dir",
        str(restored),
        "--json",
        BLIXARD_ENCRYPTION_KEY=KEY_TARGET,
    )
    assert result.exit_code == 0, result.output
    checksum = json.loads(result.stdout)["checksum"]
    again = tmp_path / "again.bxs"
    result = invoke(
        "backup",
        str(again),
        "--data-dir",
        str(restored),
        "--json",
        BLIXARD_ENCRYPTION_KEY=KEY_TARGET,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checksum"] == checksum
    # Without the key, the encrypted data dir cannot be read, and says so.
    message = one_error(invoke("backup", str(tmp_path / "nokey.bxs"), "--data-dir", str(restored)))
    assert "encrypted" in message and "BLIXARD_ENCRYPTION_KEY" in message
    assert not (tmp_path / "nokey.bxs").exists()
    # An existing file is not overwritten without --force.
    assert "exists" in one_error(invoke("backup", str(again), "--data-dir", str(restored)))


def test_restore_into_a_store_that_is_not_empty_is_refused(
    backup_file: Path, tmp_path: Path
) -> None:
    target = tmp_path / "busy"
    result = invoke(
        "keys",
        "create",
        "someone",
        "--role",
        "reader",
        "--workspaces",
        "*",
        "--data-dir",
        str(target),
    )
    assert result.exit_code == 0, result.output
    before = (target / "blixard.db").read_bytes()
    message = one_error(invoke("restore", str(backup_file), "--data-dir", str(target)))
    assert "not empty" in message and "1 API keys" in message
    assert (target / "blixard.db").read_bytes() == before
    assert not list(target.glob("*.incomplete*"))
    # migrate refuses the same way.
    message = one_error(
        invoke(
            "migrate",
            "--from",
            f"sqlite:///{target / 'blixard.db'}",
            "--to",
            f"sqlite:///{target / 'blixard.db'}",
        )
    )
    assert "same store" in message


def test_corrupted_or_truncated_backups_are_refused_and_change_nothing(
    backup_file: Path, tmp_path: Path
) -> None:
    data = backup_file.read_bytes()
    flipped = bytearray(data)
    flipped[len(data) // 2] ^= 0x01
    cases = {
        "flipped.bxs": (bytes(flipped), "not a usable Blixard snapshot"),
        "truncated.bxs": (data[: len(data) * 2 // 3], "truncated"),
        "other.bxs": (b'{"serial": 1}', "not a Blixard snapshot"),
    }
    for name, (content, expected) in cases.items():
        file = tmp_path / name
        file.write_bytes(content)
        target = tmp_path / f"target-{name}"
        message = one_error(invoke("restore", str(file), "--data-dir", str(target)))
        assert expected in message, message
        assert not target.exists() or not list(target.iterdir()), list(target.iterdir())


def test_backup_needs_an_admin_key_and_a_stopped_server_for_data_dir(
    source: ServerProcess, tmp_path: Path
) -> None:
    file = tmp_path / "denied.bxs"
    message = one_error(
        invoke("backup", str(file), "--url", source.url, BLIXARD_API_KEY=SECRETS["writer"])
    )
    assert "403" in message
    assert not file.exists() and not list(tmp_path.iterdir())
    message = one_error(
        invoke(
            "backup",
            str(file),
            "--data-dir",
            str(source.data_dir),
            BLIXARD_ENCRYPTION_KEY=KEY_SOURCE,
        )
    )
    assert "running Blixard server" in message
    # The refusal is audited like every denied request (written in the background).
    deadline = time.monotonic() + 5
    while True:
        with api(source) as http:
            found = ok(http.get("/audit", params={"action": "admin", "limit": 20})).json()
        events = found["events"]
        if any(e["outcome"] == "denied" and e["key"] == "ci" for e in events):
            break
        assert time.monotonic() < deadline, events
        time.sleep(0.1)
    assert any(str(e["detail"]).startswith("backup: snapshot finished") for e in events)


def test_a_restore_that_fails_part_way_leaves_nothing_behind(tmp_path: Path) -> None:
    """A well-formed snapshot that contradicts itself (a head version that never comes):
    the file verifies, the import fails on it, and the target stays as it was."""

    async def records(head: int) -> AsyncIterator[SnapshotRecord]:
        yield SnapshotBegin("sqlite", SnapshotCounts(workspaces=1, versions=1, body_bytes=3))
        yield WorkspaceRecord("w", 1.0, 2.0, None, head_version=head, lock=None)
        data = b"{}\n"
        meta = VersionMeta(
            "w",
            1,
            1,
            "L",
            3,
            hashlib.sha256(data).hexdigest(),
            hashlib.md5(data).hexdigest(),
            1.0,
            None,
            None,
            None,
            "write",
        )
        yield VersionRecord(meta, data)

    async def write(file: Path, head: int) -> None:
        with file.open("wb") as out:
            async for chunk in SnapshotWriter().stream(records(head)):
                out.write(chunk)

    file = tmp_path / "odd.bxs"
    asyncio.run(write(file, head=9))
    target = tmp_path / "target"
    message = one_error(invoke("restore", str(file), "--data-dir", str(target)))
    assert "nothing was put in place" in message and "head is version 9" in message
    assert not (target / "blixard.db").exists()
    assert not list(target.glob("*.incomplete*"))
    # Once the snapshot is right, the same command goes through.
    asyncio.run(write(file, head=1))
    result = invoke("restore", str(file), "--data-dir", str(target))
    assert result.exit_code == 0, result.output
    assert (target / "blixard.db").exists()


def test_an_encrypted_backup_restores_only_with_its_key(
    source: ServerProcess, backup_file: Path, tmp_path: Path
) -> None:
    backup_key = base64.b64encode(os.urandom(32)).decode()
    file = tmp_path / "sealed.bxs"
    result = invoke(
        "backup",
        str(file),
        "--url",
        source.url,
        "--encrypt",
        "--json",
        BLIXARD_API_KEY=ADMIN,
        BLIXARD_ENCRYPTION_KEY=backup_key,
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    key_id = report["encrypted"]
    assert key_id and f"key id {key_id}" in result.stderr and "plaintext" not in result.stderr
    assert not file.read_bytes().startswith(b"\x28\xb5\x2f\xfd")  # not a bare zstd stream

    message = one_error(invoke("restore", str(file), "--data-dir", str(tmp_path / "a")))
    assert "encrypted" in message and key_id in message
    assert not (tmp_path / "a" / "blixard.db").exists()

    # The backup's key as an old key, the target sealed with its own current key.
    result = invoke(
        "restore",
        str(file),
        "--data-dir",
        str(tmp_path / "b"),
        "--json",
        BLIXARD_ENCRYPTION_KEY=KEY_TARGET,
        BLIXARD_ENCRYPTION_OLD_KEYS=backup_key,
    )
    assert result.exit_code == 0, result.output
    restored = json.loads(result.stdout)
    assert restored["counts"]["versions"] == report["counts"]["versions"] > 0
    assert restored["checksum"] == report["checksum"]

    # Offline, from a data dir, the same way.
    again = tmp_path / "again.bxs"
    result = invoke(
        "backup",
        str(again),
        "--data-dir",
        str(tmp_path / "b"),
        "--encrypt",
        "--json",
        BLIXARD_ENCRYPTION_KEY=KEY_TARGET,
    )
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["checksum"] == report["checksum"]
    message = one_error(
        invoke(
            "backup",
            str(tmp_path / "x.bxs"),
            "--url",
            source.url,
            "--encrypt",
            BLIXARD_API_KEY=ADMIN,
        )
    )
    assert "--encrypt needs a key" in message
