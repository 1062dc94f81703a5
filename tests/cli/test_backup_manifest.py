"""A backup's manifest checksum is compared on restore (README, "Backup, restore and
migration"): a key record edited to grant itself admin, recompressed into a well-formed zstd
frame with every count and version digest still right, is refused, and the target stays empty."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
import zstandard

from blixard.store.sqlite import SQLiteStore
from tests.cli.test_backup import invoke, one_error
from tests.store.test_engine_suite import append
from tests.store.test_snapshot import recompress


async def _write_states(db: Path) -> None:
    store = SQLiteStore(db)
    await store.open()
    try:
        for serial in (1, 2):
            await append(store, "prod", serial)
    finally:
        await store.close()


@pytest.fixture
def backup(tmp_path: Path) -> Path:
    data = tmp_path / "data"
    asyncio.run(_write_states(data / "blixard.db"))
    created = invoke(
        "keys",
        "create",
        "dashboards",
        "--role",
        "reader",
        "--workspaces",
        "*",
        "--data-dir",
        str(data),
    )
    assert created.exit_code == 0, created.output
    file = tmp_path / "store.bxs"
    made = invoke("backup", str(file), "--data-dir", str(data))
    assert made.exit_code == 0, made.output
    return file


def test_an_untouched_backup_restores(backup: Path, tmp_path: Path) -> None:
    target = tmp_path / "restored"
    result = invoke("restore", str(backup), "--data-dir", str(target))
    assert result.exit_code == 0, result.output
    assert (target / "blixard.db").exists()


def test_a_key_record_promoted_to_admin_is_refused_and_the_target_stays_empty(
    backup: Path, tmp_path: Path
) -> None:
    raw = zstandard.ZstdDecompressor().decompress(backup.read_bytes(), max_output_size=1 << 30)
    assert raw.count(b'"role":"reader"') == 1
    tampered = tmp_path / "tampered.bxs"
    tampered.write_bytes(recompress(raw.replace(b'"role":"reader"', b'"role":"admin"')))
    target = tmp_path / "restored"
    message = one_error(invoke("restore", str(tampered), "--data-dir", str(target)))
    assert "does not match its manifest" in message and "checksum" in message, message
    assert not target.exists() or list(target.iterdir()) == []
