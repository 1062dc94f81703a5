"""The data directory is private at rest: 0700, every file in it 0600 (README, docs/security.md).

Checked on a real server subprocess (fresh, and over a directory an earlier version or a hand
left world-readable) and on the SQLite engine alone, under a permissive umask, so nothing here
depends on the umask the tests happen to run with.
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from blixard.datadir import make_private
from blixard.runs.workdir import prepare_workdir
from blixard.store.sqlite import SQLiteStore
from tests.harness import ServerProcess
from tests.store.test_engine_suite import append


@contextlib.contextmanager
def umask(mask: int) -> Iterator[None]:
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def loose_entries(root: Path) -> dict[str, str]:
    """Every entry under root (root included) that group or others may access, with its mode."""
    found = {}
    for path in [root, *root.rglob("*")]:
        st = path.lstat()
        if not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) & 0o077:
            found[str(path.relative_to(root.parent))] = oct(stat.S_IMODE(st.st_mode))
    return found


def write_state(base: str, workspace: str, serial: int) -> None:
    body = orjson.dumps({"version": 4, "serial": serial, "lineage": "l", "resources": []})
    assert httpx.post(f"{base}/api/tofu/state/{workspace}", content=body).status_code == 200
    lock = {"ID": f"lock-{serial}", "Operation": "OperationTypeApply", "Who": "me@host"}
    assert httpx.post(f"{base}/api/tofu/lock/{workspace}", json=lock).status_code == 200


def test_fresh_data_directory_is_0700_with_every_file_0600(tmp_path: Path) -> None:
    data = tmp_path / "fresh" / "data"  # its parent does not exist either
    with umask(0o022), ServerProcess(data, log_path=tmp_path / "server.log") as server:
        write_state(server.url, "w", 1)
        names = {p.name for p in data.iterdir()}
        assert {"blixard.db", "blixard.db-wal", "blixard.db-shm", "runs"} <= names
        assert loose_entries(data) == {}
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
        assert stat.S_IMODE((data / "blixard.db").stat().st_mode) == 0o600
        assert stat.S_IMODE((data / "runs").stat().st_mode) == 0o700


def test_existing_loose_data_directory_is_tightened_at_start_with_one_log_line(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    log = tmp_path / "server.log"
    with umask(0o022), ServerProcess(data, log_path=log) as server:
        write_state(server.url, "w", 1)
    # What an older version, a restore by hand or `cp -r` leaves behind: readable by everyone.
    (data / "notes").mkdir()
    (data / "notes" / "todo.txt").write_text("private")
    outside = tmp_path / "outside.txt"
    outside.write_text("not the data directory's")
    outside.chmod(0o644)
    (data / "notes" / "link").symlink_to(outside)
    for path in [data, *data.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    assert len(loose_entries(data)) >= 5
    log.write_text("")
    with umask(0o022), ServerProcess(data, log_path=log) as server:
        assert loose_entries(data) == {}
        assert stat.S_IMODE(outside.stat().st_mode) == 0o644, "a link's target is not changed"
        write_state(server.url, "other", 2)
        assert loose_entries(data) == {}
        assert stat.S_IMODE((data / "notes" / "todo.txt").stat().st_mode) == 0o600
    lines = [line for line in log.read_text().splitlines() if "removed group/other" in line]
    assert len(lines) == 1, log.read_text()
    assert str(data) in lines[0]


@pytest.mark.anyio
async def test_sqlite_store_creates_its_files_private_whatever_the_umask(tmp_path: Path) -> None:
    path = tmp_path / "new" / "blixard.db"
    with umask(0o022):
        store = SQLiteStore(path)
        await store.open()
        try:
            await append(store, "w", 1)
            files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.iterdir()}
        finally:
            await store.close()
    assert files["blixard.db"] == 0o600
    assert files["blixard.db-wal"] == 0o600 and files["blixard.db-shm"] == 0o600
    assert all(mode & 0o077 == 0 for mode in files.values()), files
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


@pytest.mark.anyio
async def test_sqlite_store_tightens_a_loose_database_it_opens(tmp_path: Path) -> None:
    path = tmp_path / "blixard.db"
    store = SQLiteStore(path)
    await store.open()
    await append(store, "w", 1)
    await store.close()
    path.chmod(0o644)
    store = SQLiteStore(path)
    await store.open()
    await store.close()
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_make_private_creates_and_counts(tmp_path: Path) -> None:
    root = tmp_path / "a" / "b"
    assert make_private(root) == 0
    assert stat.S_IMODE(root.stat().st_mode) == 0o700
    (root / "f").write_text("x")
    (root / "f").chmod(0o664)
    (root / "d").mkdir(mode=0o775)
    (root / "d").chmod(0o775)
    (root / "d" / "exe").write_text("#!/bin/sh\n")
    (root / "d" / "exe").chmod(0o755)
    assert make_private(root) == 3
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "d").stat().st_mode) == 0o700
    assert stat.S_IMODE((root / "d" / "exe").stat().st_mode) == 0o700  # owner keeps its x bit
    assert make_private(root) == 0


def test_a_runs_work_directory_copy_is_private(tmp_path: Path) -> None:
    source = tmp_path / "config"
    source.mkdir()
    (source / "main.tf").write_text('resource "terraform_data" "x" {}\n')
    (source / "hook.sh").write_text("#!/bin/sh\n")
    (source / "hook.sh").chmod(0o755)
    work = tmp_path / "data" / "runs" / "run-1"
    with umask(0o022):
        prepare_workdir(source, work)
    files = {p.name: stat.S_IMODE(p.stat().st_mode) for p in work.iterdir() if p.is_file()}
    assert files["main.tf"] == 0o600 and files["hook.sh"] == 0o700, files
