"""A stored version whose bytes were damaged answers a clear `version_corrupt` error naming
it (not a generic 500), other workspaces go on serving, and a backup that meets it fails
loudly (the CLI exits non-zero and leaves no file; over HTTP the stream is cut, never a
clean 200 with a short snapshot). A real server subprocess on each engine."""

from __future__ import annotations

import asyncio
import base64
import sqlite3
import uuid
from pathlib import Path

import httpx
import orjson
import pytest

from blixard.store import open_store_from_url
from blixard.store.etcd import EtcdStore
from blixard.store.etcd.batch import put_op
from tests.cli.test_backup import invoke
from tests.harness import TEST_ENGINES, ServerProcess, shared_etcd_url


def state(serial: int, marker: str) -> bytes:
    resources = [{"type": "terraform_data", "name": f"r{i}", "m": marker} for i in range(20)]
    return orjson.dumps({"version": 4, "serial": serial, "lineage": marker, "resources": resources})


def flip(blob: bytes) -> bytes:
    damaged = bytearray(blob)
    damaged[len(damaged) // 2] ^= 0x40
    return bytes(damaged)


async def damage_etcd_version(url: str, workspace: str, version: int) -> None:
    store = open_store_from_url(url, cache_bytes=0)
    assert isinstance(store, EtcdStore)
    await store.open()
    try:
        key = store.keys.version(workspace, version)
        doc = orjson.loads((await store._get(key)).value)
        doc["inline"] = base64.b64encode(flip(base64.b64decode(doc["inline"]))).decode()
        await store._txn([], [put_op(key, orjson.dumps(doc))], [])
    finally:
        await store.close()


def damage_sqlite_version(db: Path, workspace: str, version: int) -> None:
    conn = sqlite3.connect(db)
    try:
        (blob,) = conn.execute(
            "SELECT v.blob FROM versions v JOIN workspaces w ON w.id = v.workspace_id "
            "WHERE w.name = ? AND v.version = ?",
            (workspace, version),
        ).fetchone()
        conn.execute(
            "UPDATE versions SET blob = ? WHERE version = ? AND workspace_id = "
            "(SELECT id FROM workspaces WHERE name = ?)",
            (flip(blob), version, workspace),
        )
        conn.commit()
    finally:
        conn.close()


@pytest.mark.parametrize("engine", TEST_ENGINES)
def test_a_damaged_version_is_version_corrupt_and_backup_fails_loudly(
    engine: str, tmp_path: Path
) -> None:
    data = tmp_path / "data"
    url = (
        shared_etcd_url(f"blixard-corrupt-test/{uuid.uuid4().hex}")
        if engine == "etcd"
        else f"sqlite:///{data / 'blixard.db'}"
    )
    server = ServerProcess(data, args=["--storage-url", url], log_path=tmp_path / "server.log")
    with server:
        for workspace in ("broken", "fine"):
            response = httpx.post(
                f"{server.url}/api/tofu/state/{workspace}", content=state(1, workspace)
            )
            assert response.status_code == 200
    if engine == "etcd":
        asyncio.run(damage_etcd_version(url, "broken", 1))
    else:
        damage_sqlite_version(data / "blixard.db", "broken", 1)

    with server:
        broken = httpx.get(f"{server.url}/api/tofu/state/broken")
        assert broken.status_code == 500, broken.text
        error = broken.json()
        assert error["error"] == "version_corrupt"
        assert error["workspace"] == "broken" and error["version"] == 1
        assert "Version 1 of workspace 'broken'" in error["message"]
        fine = httpx.get(f"{server.url}/api/tofu/state/fine")
        assert fine.status_code == 200 and fine.content == state(1, "fine")

        # Over HTTP: never a complete 200 snapshot.
        with (
            pytest.raises(httpx.RemoteProtocolError),
            httpx.stream("GET", f"{server.url}/api/tofu/admin/backup", timeout=30) as stream,
        ):
            assert stream.status_code == 200  # the headers went out before the damage was met
            for _ in stream.iter_bytes():
                pass

        # The CLI: one error naming the version, exit 1, no file.
        file = tmp_path / "backup.bxs"
        result = invoke("backup", str(file), "--url", server.url)
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        assert any(line.startswith("error: ") for line in result.stderr.splitlines())
        assert not file.exists() and not list(tmp_path.glob(".backup.bxs*"))
    assert "Version 1 of workspace 'broken'" in (tmp_path / "server.log").read_text()

    if engine == "sqlite":  # offline, from the data directory: the same refusal
        result = invoke("backup", str(file), "--data-dir", str(data))
        assert result.exit_code == 1, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1, result.stderr
        assert errors[0].startswith("error: backup failed, no file written: Version 1 of ")
        assert not file.exists() and not list(tmp_path.glob(".backup.bxs*"))
