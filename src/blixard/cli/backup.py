"""`blixard backup`, `blixard restore` and `blixard migrate`: snapshots of everything a store holds.

    blixard backup blixard.bxs --url http://127.0.0.1:8080       # a live server (admin key)
    blixard backup blixard.bxs --data-dir ./data                 # a stopped server's data
    blixard backup blixard.bxs --encrypt                         # sealed with the key
    blixard restore blixard.bxs --data-dir ./new-data            # into an empty store, offline
    blixard migrate --from sqlite:///./data/blixard.db --to sqlite:///./copy/blixard.db

The file format and its checks are in blixard.store.snapshot. Every command verifies what it
wrote or read (per-version SHA-256, counts, checksums) and prints the counts and checksum.
Restore and migrate never leave a half-written store behind: into SQLite they write a temporary
file next to the target and rename it into place only once the target's own re-export matches
the snapshot; any engine also refuses to serve a store whose import did not finish. Both refuse
a target that is not empty, so a failed run can simply be run again.

Stores are opened with the encryption keys of the environment (BLIXARD_ENCRYPTION_KEY[_FILE],
BLIXARD_ENCRYPTION_OLD_KEYS) and, for etcd URLs, its BLIXARD_ETCD_* connection settings,
exactly as `blixard serve` would open them (but never compact). Snapshots hold the state
bodies in plaintext.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer

from blixard.cli import common
from blixard.cli.common import DEFAULT_URL, ApiKeyOpt, UrlOpt
from blixard.domain.errors import DomainError

if TYPE_CHECKING:
    from blixard.store.codec import VersionCodec
    from blixard.store.crypto import Cipher
    from blixard.store.protocol import Store
    from blixard.store.snapshot import SnapshotCounts, SnapshotRecord, SnapshotSummary

backup_app = typer.Typer()

BACKUP_PATH = "/api/tofu/admin/backup"

JsonOpt = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]
StorageUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--storage-url",
        help="A storage URL instead of --data-dir, e.g. sqlite:///./data/blixard.db.",
    ),
]

PLAINTEXT_WARNING = (
    "warning: a snapshot holds every state version in plaintext (decrypted), secrets included: "
    "keep it as safe as the states themselves (e.g. encrypt it with age or gpg)"
)


def _warn(message: str) -> None:
    typer.echo(message, err=True)


# --------------------------------------------------------------------------- stores


def _cipher() -> Cipher | None:
    """The keys `blixard serve` would use, from the same environment."""
    from blixard.config import Settings
    from blixard.store.crypto import Cipher

    try:
        return Cipher.from_settings(Settings.load())
    except Exception as exc:
        common.fail(f"the encryption settings are not usable: {exc}")


def _target_cipher(key_file: Path | None, unencrypted: bool) -> Cipher | None:
    """The target's cipher for migrate: the current key only (or --to-key-file, or none)."""
    from blixard.config import Settings
    from blixard.store.crypto import Cipher

    if key_file is not None and unencrypted:
        common.fail("give --to-key-file or --to-unencrypted, not both")
    if unencrypted:
        return None
    try:
        if key_file is not None:
            return Cipher.from_config(None, key_file)
        settings = Settings.load()
        key = settings.encryption_key.get_secret_value() if settings.encryption_key else None
        return Cipher.from_config(key, settings.encryption_key_file)
    except Exception as exc:
        common.fail(f"the encryption settings are not usable: {exc}")


def _data_dir_url(data_dir: Path | None, storage_url: str | None, what: str) -> str:
    if data_dir is not None and storage_url is not None:
        common.fail("give --data-dir or --storage-url, not both")
    if storage_url is not None:
        return storage_url
    if data_dir is not None:
        from blixard.store.bootstrap import data_dir_url

        return data_dir_url(data_dir)
    common.fail(f"say where {what}: --data-dir DIR or --storage-url URL")


def _build(url: str, cipher: Cipher | None, *, codec: VersionCodec | None = None) -> Store:
    from blixard.config import Settings
    from blixard.store.bootstrap import build_store

    try:
        # An etcd URL gets the BLIXARD_ETCD_* connection settings `blixard serve` would use.
        return build_store(Settings.load(), url=url, cipher=cipher, serving=False, codec=codec)
    except ValueError as exc:  # pydantic's ValidationError is one too
        common.fail(str(exc))


def _sqlite_path(store: Store) -> Path | None:
    from blixard.store.sqlite import SQLiteStore

    return store.path if isinstance(store, SQLiteStore) else None


def _open_error(exc: BaseException, url: str) -> str | None:
    """A one-line reason for a store that would not open, or None for unexpected errors."""
    from blixard.store.crypto import EncryptionError
    from blixard.store.errors import StoreError, StoreInUse
    from blixard.store.snapshot import SnapshotError

    if isinstance(exc, StoreInUse):
        return (
            f"{url} is in use by a running Blixard server: stop it first (a live server is "
            "backed up with `blixard backup FILE --url URL`)"
        )
    if isinstance(exc, StoreError | EncryptionError | SnapshotError | OSError):
        return str(exc)
    return None


async def _open_source(url: str, cipher: Cipher | None) -> Store:
    """Open an existing store to read from, encrypted or not.

    With a key configured, an unencrypted source is opened without it (the key then only
    applies to the target).
    """
    store = _build(url, cipher)
    path = _sqlite_path(store)
    if path is not None and not path.is_file():
        common.fail(f"no Blixard database at {path}")
    from blixard.store.crypto import EncryptionError
    from blixard.store.encryption import EncryptionRefused
    from blixard.store.errors import StoreError

    try:
        await store.open()
        return store
    except (StoreError, EncryptionError) as exc:
        first = exc
    if isinstance(first, EncryptionRefused) and cipher is not None:
        store = _build(url, None)
        try:
            await store.open()
            return store
        except (StoreError, EncryptionError):
            pass
    message = _open_error(first, url)
    if message is None:
        raise first
    common.fail(message)


class _Target:
    """Where a restore or migration writes: empty, and only in place once complete.

    SQLite: the import goes to `<db>.incomplete` next to the target; `commit()` renames it into
    place (after the caller verified it), `abandon()` deletes it. The target's lock file is held
    throughout, so no server starts on it meanwhile. Other engines import in place: they refuse
    to open a store whose import did not finish.
    """

    def __init__(self, url: str, cipher: Cipher | None) -> None:
        self.url = url
        self.cipher = cipher
        self.store = _build(url, cipher)
        self.final = _sqlite_path(self.store)
        self.temp = self.final.with_name(self.final.name + ".incomplete") if self.final else None
        self._lock_fd: int | None = None

    def left_behind(self) -> str:
        """What a failure leaves, for its error message."""
        if self.temp is not None:
            return "nothing was put in place"
        return (
            f"{self.url} holds a partial import that refuses to be served: empty it before "
            "running the command again"
        )

    def describe(self) -> str:
        return str(self.final) if self.final else self.url

    async def open(self) -> Store:
        from blixard.store.codec import VersionCodec

        if self.final is None or self.temp is None:
            await self._open_in_place()
            await self._refuse_if_not_empty(self.store)
            return self.store
        if self.final.exists():
            # An existing file may only be an empty store (e.g. a server started once on it).
            existing = await _open_source(self.url, self.cipher)
            try:
                await self._refuse_if_not_empty(existing)
            finally:
                await existing.close()
        self._lock()
        for leftover in _sqlite_files(self.temp):
            leftover.unlink(missing_ok=True)  # an earlier run that died
        # An import goes one workspace at a time: one delta dictionary is all it needs (the
        # cache counts bodies, and each digested dictionary costs ~10x its body).
        codec = VersionCodec(cipher=self.cipher, dictionary_cache_bytes=1)
        self.store = _build(f"sqlite:///{self.temp}", self.cipher, codec=codec)
        await self._open_in_place()
        return self.store

    async def _open_in_place(self) -> None:
        from blixard.store.crypto import EncryptionError
        from blixard.store.errors import StoreError

        try:
            await self.store.open()
        except (StoreError, EncryptionError) as exc:
            message = _open_error(exc, self.url)
            if message is None:
                raise
            common.fail(message)

    async def _refuse_if_not_empty(self, store: Store) -> None:
        from blixard.store.snapshot import SnapshotBegin

        export = store.export_snapshot()
        try:
            begin = await anext(export)
        finally:
            await export.aclose()
        assert isinstance(begin, SnapshotBegin)
        if begin.counts.records:
            c = begin.counts
            await store.close()
            common.fail(
                f"{self.describe()} is not empty ({c.workspaces} workspaces, {c.versions} "
                f"versions, {c.api_keys} API keys, {c.audit_events} audit events, {c.runs} runs): "
                "restore and migrate only write into an empty store; pick a new location or "
                "move the existing data away"
            )

    def _lock(self) -> None:
        assert self.final is not None
        self.final.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(f"{self.final}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            common.fail(f"{self.final} is in use by a running Blixard server (or another restore)")
        self._lock_fd = fd

    async def commit(self) -> None:
        """Put the verified import in place (SQLite: an atomic rename)."""
        await self.store.close()
        if self.final is None or self.temp is None:
            return
        wal = Path(f"{self.temp}-wal")
        if wal.exists() and wal.stat().st_size > 0:
            common.fail(
                f"{self.temp}: the database was not checkpointed cleanly; nothing was replaced"
            )
        with open(self.temp, "rb") as handle:
            os.fsync(handle.fileno())
        for stale in (Path(f"{self.final}-wal"), Path(f"{self.final}-shm")):
            stale.unlink(missing_ok=True)  # of the empty store being replaced
        os.replace(self.temp, self.final)
        _fsync_dir(self.final.parent)
        for leftover in _sqlite_files(self.temp):
            leftover.unlink(missing_ok=True)
        self._unlock()

    async def abandon(self) -> None:
        with contextlib.suppress(Exception):
            await self.store.close()
        if self.temp is not None:
            for leftover in _sqlite_files(self.temp):
                leftover.unlink(missing_ok=True)
        self._unlock()

    def _unlock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def _sqlite_files(path: Path) -> list[Path]:
    return [path, *(Path(f"{path}{suffix}") for suffix in ("-wal", "-shm", ".lock"))]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --------------------------------------------------------------------------- progress and output


class _Progress:
    """Rich progress bars on stderr, one task per phase, counted in records."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description:<11}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("records {task.fields[detail]}"),
            TimeElapsedColumn(),
            console=common.console(stderr=True),
        )

    def __enter__(self) -> _Progress:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def phase(self, description: str, total: int | None = None) -> _Phase:
        task = self._progress.add_task(description, total=total, detail="")
        return _Phase(self._progress, task)


class _Phase:
    def __init__(self, progress: Any, task: Any) -> None:
        self._progress = progress
        self._task = task
        self.done = 0
        self.body_bytes = 0

    def total(self, total: int) -> None:
        self._progress.update(self._task, total=total)

    def record(self, record: SnapshotRecord) -> None:
        from blixard.domain.shapes import human_size
        from blixard.store.snapshot import SnapshotBegin, VersionRecord

        if isinstance(record, SnapshotBegin):
            self.total(record.counts.records)
            return
        self.done += 1
        if isinstance(record, VersionRecord):
            self.body_bytes += len(record.body)
        if self.done % 16 == 0 or isinstance(record, VersionRecord):
            self._progress.update(
                self._task, completed=self.done, detail=f"({human_size(self.body_bytes)} of state)"
            )

    def finish(self) -> None:
        self._progress.update(self._task, completed=self.done, total=self.done)


async def _counted(
    records: AsyncIterator[Any], on_record: Callable[[Any], None]
) -> AsyncIterator[Any]:
    async for record in records:
        on_record(record)
        yield record


def _summary_json(summary: SnapshotSummary, **extra: Any) -> dict[str, Any]:
    return {**extra, **summary.to_json()}


def _print_summary(title: str, summary: SnapshotSummary, extra: list[tuple[str, str]]) -> None:
    from rich.table import Table
    from rich.text import Text

    from blixard.domain.shapes import human_size

    counts: SnapshotCounts = summary.counts
    console = common.console()
    console.print(title, markup=False)
    table = Table(box=None, show_header=False, pad_edge=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    table.add_column()
    rows = [
        ("Workspaces", counts.workspaces, ""),
        ("Versions", counts.versions, f"{human_size(counts.body_bytes)} of state"),
        ("Locks held", counts.locks, ""),
        ("API keys", counts.api_keys, "hashes only, revoked ones included"),
        ("Audit events", counts.audit_events, ""),
        ("Runs", counts.runs, f"{counts.run_blobs} files, {counts.run_logs} log chunks"),
    ]
    for label, count, note in rows:
        table.add_row(label, str(count), Text(note))
    console.print(table)
    for label, value in [*extra, ("Checksum", f"sha256:{summary.checksum}")]:
        console.print(f"{label + ':':<15} {value}", markup=False, soft_wrap=True)


def _emit_json(value: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
    sys.stdout.flush()


# --------------------------------------------------------------------------- backup


def _partial_for(file: Path) -> Path:
    return file.with_name(f".{file.name}.partial")


def _create_private(path: Path) -> Any:
    """A new file only the owner can read (snapshots hold secrets)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    return os.fdopen(fd, "wb")


class _Output:
    """The partial backup file: private, sealed frame by frame with --encrypt, fsync'd."""

    def __init__(self, path: Path, seal: Cipher | None) -> None:
        from blixard.store.snapshot_seal import SealingWriter

        self._file = _create_private(path)
        self._sealer = SealingWriter(self._file, seal) if seal is not None else None

    def write(self, data: bytes) -> None:
        if self._sealer is not None:
            self._sealer.write(data)
        else:
            self._file.write(data)

    def finish(self) -> None:
        if self._sealer is not None:
            self._sealer.finish()
        self._file.flush()
        os.fsync(self._file.fileno())

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self._file.close()


def _seal_file(partial: Path, file: Path) -> None:
    os.replace(partial, file)
    _fsync_dir(file.parent.resolve())


def _backup_online(
    partial: Path, url: str, api_key: str | None, seal: Cipher | None
) -> SnapshotSummary:
    """Download the snapshot into `partial`, verifying it on the fly."""
    import httpx

    from blixard.cli.client import Client
    from blixard.store.snapshot import SnapshotCorrupt, SnapshotReader

    client = Client(url, api_key)
    try:
        with (
            client.http.stream("GET", BACKUP_PATH) as response,
            _Output(partial, seal) as out,
            _Progress() as progress,
        ):
            if response.status_code >= 400:
                common.fail(client.error_message(response.status_code, response.read()))

            def tee() -> Iterator[bytes]:
                for chunk in response.iter_bytes(1024 * 1024):
                    out.write(chunk)
                    yield chunk

            phase = progress.phase("downloading")
            reader = SnapshotReader(tee())
            try:
                for record in reader:
                    if phase.done == 0 and reader.expected is not None:
                        phase.total(reader.expected.records)
                    phase.record(record)
            except SnapshotCorrupt as exc:
                common.fail(f"the server's snapshot is incomplete or damaged: {exc}")
            phase.finish()
            out.finish()
            if seal is not None:
                checked, _ = _verify_file(partial, progress, "verifying", seal)
                if checked != reader.summary:
                    common.fail(f"{partial} does not read back as downloaded")
    except httpx.TransportError as exc:
        common.fail(f"the backup download from {client.base} failed: {exc or type(exc).__name__}")
    finally:
        client.close()
    assert reader.summary is not None
    return reader.summary


def _verify_file(
    file: Path, progress: _Progress, description: str, cipher: Cipher | None
) -> tuple[SnapshotSummary, Any]:
    from blixard.store.snapshot import SnapshotCorrupt, SnapshotReader
    from blixard.store.snapshot_seal import SealedSnapshotError, snapshot_chunks

    phase = progress.phase(description)
    reader = SnapshotReader(snapshot_chunks(file, cipher))
    try:
        header = reader.read_header()
        assert reader.expected is not None
        phase.total(reader.expected.records)
        for record in reader:
            phase.record(record)
    except SealedSnapshotError as exc:
        common.fail(f"cannot read {file}: {exc}")
    except SnapshotCorrupt as exc:
        common.fail(f"{file} is not a usable Blixard snapshot: {exc}")
    except OSError as exc:
        common.fail(f"cannot read {file}: {exc}")
    phase.finish()
    assert reader.summary is not None
    return reader.summary, header


def _backup_offline(partial: Path, url: str, cipher: Cipher | None, seal: bool) -> SnapshotSummary:
    from blixard.store.snapshot import SnapshotWriter

    async def run(progress: _Progress) -> SnapshotSummary:
        store = await _open_source(url, cipher)
        try:
            writer = SnapshotWriter()
            phase = progress.phase("exporting")
            with _Output(partial, cipher if seal else None) as out:
                try:
                    export = _counted(store.export_snapshot(), phase.record)
                    async for chunk in writer.stream(export):
                        out.write(chunk)
                except DomainError as exc:  # e.g. a version that no longer decodes
                    common.fail(f"backup failed, no file written: {exc.message}")
                out.finish()
            phase.finish()
        finally:
            await store.close()
        assert writer.summary is not None
        return writer.summary

    with _Progress() as progress:
        written = asyncio.run(run(progress))
        checked, _ = _verify_file(partial, progress, "verifying", cipher)
    if checked != written:
        common.fail(
            f"{partial} does not read back as written: " + "; ".join(checked.mismatches(written))
        )
    return checked


@backup_app.command()
def backup(
    file: Annotated[Path, typer.Argument(help="The snapshot file to write, e.g. blixard.bxs.")],
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(
            "--data-dir",
            help="Back up a STOPPED server's data directory directly instead of a live server.",
        ),
    ] = None,
    storage_url: StorageUrlOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite FILE if it exists.")] = False,
    encrypt: Annotated[
        bool,
        typer.Option(
            "--encrypt",
            help="Encrypt FILE with BLIXARD_ENCRYPTION_KEY (AES-256-GCM); restore needs that key.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Back up everything to FILE: a consistent snapshot, verified, with counts and checksum.

    The snapshot holds every workspace and version (exact bodies), the locks, API keys
    (hashes only), the audit trail and runs. From a live server (default; needs an admin key)
    through GET /api/tofu/admin/backup, or offline with --data-dir DIR / --storage-url URL.
    The states are in plaintext in the snapshot unless --encrypt: keep it safe.
    """
    if file.exists() and not force:
        common.fail(f"{file} exists; pass --force to overwrite it")
    if file.is_dir():
        common.fail(f"{file} is a directory")
    if not file.parent.is_dir():
        common.fail(f"no directory {file.parent} to write {file.name} into")
    partial = _partial_for(file)
    online = data_dir is None and storage_url is None
    cipher = _cipher() if encrypt or not online else None
    if encrypt and cipher is None:
        common.fail(
            "--encrypt needs a key: set BLIXARD_ENCRYPTION_KEY or BLIXARD_ENCRYPTION_KEY_FILE "
            "(`blixard encryption generate-key` makes one)"
        )
    if cipher is not None and encrypt:
        _warn(
            f"note: {file} is encrypted with key id {cipher.current_id}; keep that key: "
            "without it this backup cannot be restored"
        )
    else:
        _warn(PLAINTEXT_WARNING)
    try:
        if online:
            summary = _backup_online(partial, url, api_key, cipher if encrypt else None)
            source = url
        else:
            source = _data_dir_url(data_dir, storage_url, "to back up")
            summary = _backup_offline(partial, source, cipher, encrypt)
        _seal_file(partial, file)
    finally:
        partial.unlink(missing_ok=True)
    size = file.stat().st_size
    if as_json:
        key_id = cipher.current_id if cipher is not None and encrypt else None
        _emit_json(
            _summary_json(summary, file=str(file), bytes=size, source=source, encrypted=key_id)
        )
        return
    from blixard.domain.shapes import human_size

    sealed = f"yes, key id {cipher.current_id}" if cipher is not None and encrypt else "no"
    _print_summary(
        f"Backed up {source} to {file} ({human_size(size)}), verified.",
        summary,
        [("Versions hash", f"sha256:{summary.versions_sha256}"), ("Encrypted", sealed)],
    )


# --------------------------------------------------------------------------- restore and migrate


async def _check_target(
    target: _Target, expected: SnapshotSummary, progress: _Progress
) -> SnapshotSummary:
    """Re-export the target and compare it with what was meant to be written."""
    from blixard.store.snapshot import SnapshotError, digest_store

    phase = progress.phase("checking")
    try:
        found = await digest_store(target.store, phase.record)
    except SnapshotError as exc:
        _mismatch(target, [str(exc)])
    phase.finish()
    problems = found.mismatches(expected)
    if problems:
        _mismatch(target, problems)
    return found


def _mismatch(target: _Target, problems: list[str]) -> NoReturn:
    common.fail(
        f"the data written to {target.describe()} does not match the snapshot ("
        + "; ".join(problems)
        + f"); {target.left_behind()}"
    )


async def _import(target: _Target, records: AsyncIterator[SnapshotRecord], what: str) -> None:
    from blixard.store.snapshot import SnapshotError

    try:
        await target.store.import_snapshot(records)
    except (SnapshotError, OSError) as exc:
        common.fail(f"{what} failed, {target.left_behind()}: {exc}")


@backup_app.command()
def restore(
    file: Annotated[Path, typer.Argument(help="A snapshot written by `blixard backup`.")],
    data_dir: Annotated[
        Path | None,
        typer.Option("--data-dir", help="The data directory of the new store (empty or new)."),
    ] = None,
    storage_url: StorageUrlOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Restore a snapshot into an empty store (offline), verified against its checksums.

    Verifies the file (every version's SHA-256, the counts and the checksum), imports it, then
    checks the new store against the snapshot. Nothing is put in place unless every check
    passes, so a failed restore can simply be run again. Encryption at rest follows
    BLIXARD_ENCRYPTION_KEY, as for `blixard serve`; a backup made with --encrypt opens with
    that key or one in BLIXARD_ENCRYPTION_OLD_KEYS.
    """
    from blixard.store.snapshot import SnapshotReader, records_from
    from blixard.store.snapshot_seal import snapshot_chunks

    url = _data_dir_url(data_dir, storage_url, "to restore to")
    if not file.is_file():
        common.fail(f"no snapshot file at {file}")
    cipher = _cipher()

    async def run(progress: _Progress) -> tuple[SnapshotSummary, _Target]:
        target = _Target(url, cipher)
        await target.open()
        try:
            phase = progress.phase("restoring", expected.counts.records)
            reader = SnapshotReader(snapshot_chunks(file, cipher))
            await _import(target, _counted(records_from(reader), phase.record), "the restore")
            phase.finish()
            found = await _check_target(target, expected, progress)
            await target.commit()
        except BaseException:
            await target.abandon()
            raise
        return found, target

    with _Progress() as progress:
        expected, header = _verify_file(file, progress, "verifying", cipher)
        found, target = asyncio.run(run(progress))
    where = target.describe()
    if as_json:
        _emit_json(_summary_json(found, file=str(file), target=where, verified=True))
        return
    _print_summary(
        f"Restored {file} into {where}; the store matches the snapshot.",
        found,
        [
            ("Taken", _iso(header.get("created_at"))),
            ("From engine", str(header.get("engine"))),
            ("Encrypted", "yes" if cipher else "no (set BLIXARD_ENCRYPTION_KEY to encrypt)"),
        ],
    )


def _iso(value: Any) -> str:
    from datetime import UTC, datetime

    if not isinstance(value, int | float):
        return "-"
    return datetime.fromtimestamp(value, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


@backup_app.command()
def migrate(
    source_url: Annotated[
        str,
        typer.Option(
            "--from", help="Storage URL to copy from, e.g. sqlite:///./data/blixard.db (stopped)."
        ),
    ],
    target_url: Annotated[
        str,
        typer.Option("--to", help="Storage URL of an EMPTY store to copy into."),
    ],
    to_key_file: Annotated[
        Path | None,
        typer.Option(
            "--to-key-file",
            help="Encrypt the target with the key in this file (base64, like "
            "BLIXARD_ENCRYPTION_KEY_FILE) instead of BLIXARD_ENCRYPTION_KEY.",
        ),
    ] = None,
    to_unencrypted: Annotated[
        bool,
        typer.Option("--to-unencrypted", help="Store the target without encryption at rest."),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Copy everything from one store to another (e.g. SQLite to etcd), verified.

    Offline: the source must not be served meanwhile. After the copy the target is
    re-exported and its counts, every version's SHA-256 and the checksum are compared with
    the source's and printed. Nothing is put in place unless they match, so a failed
    migration can simply be run again. The source opens with BLIXARD_ENCRYPTION_KEY and
    BLIXARD_ENCRYPTION_OLD_KEYS, as `blixard serve` would (an unencrypted source is read as
    such); the target is sealed with BLIXARD_ENCRYPTION_KEY, or --to-key-file, or not at all
    with --to-unencrypted.
    """
    from blixard.store.snapshot import (
        SnapshotBegin,
        SnapshotDigest,
        VersionRecord,
        check_version,
    )

    if source_url == target_url:
        common.fail("--from and --to are the same store")
    cipher = _cipher()
    target_cipher = _target_cipher(to_key_file, to_unencrypted)

    async def run(progress: _Progress) -> tuple[SnapshotSummary, SnapshotSummary, _Target]:
        source = await _open_source(source_url, cipher)
        try:
            target = _Target(target_url, target_cipher)
            if target.final is not None and target.final == _sqlite_path(source):
                common.fail("--from and --to are the same store")
            await target.open()
            try:
                copied = await copy(source, target, progress)
                found = await _check_target(target, copied, progress)
                await target.commit()
            except BaseException:
                await target.abandon()
                raise
            return copied, found, target
        finally:
            await source.close()

    async def copy(source: Store, target: _Target, progress: _Progress) -> SnapshotSummary:
        digest = SnapshotDigest()
        begin: list[SnapshotBegin] = []
        phase = progress.phase("copying")

        def seen(record: SnapshotRecord) -> None:
            phase.record(record)
            if isinstance(record, SnapshotBegin):
                begin.append(record)
                return
            if isinstance(record, VersionRecord):
                check_version(record)  # a damaged source stops the copy here
            digest.add(record)

        await _import(target, _counted(source.export_snapshot(), seen), "the migration")
        phase.finish()
        copied = digest.summary()
        if not begin:
            common.fail("the source's export did not start with its counts")
        if problems := copied.counts.differences(begin[0].counts):
            common.fail("the source's export is not consistent: " + "; ".join(problems))
        return copied

    with _Progress() as progress:
        copied, found, target = asyncio.run(run(progress))
    where = target.describe()
    if as_json:
        _emit_json(
            {
                "from": source_url,
                "to": target_url,
                "source": copied.to_json(),
                "target": found.to_json(),
                "verified": True,
            }
        )
        return
    _print_summary(
        f"Migrated {source_url} to {where}; every count, version SHA-256 and the checksum match.",
        found,
        [
            ("Versions hash", f"sha256:{found.versions_sha256}"),
            ("Encrypted", "yes" if target_cipher else "no"),
            ("Source sum", f"sha256:{copied.checksum}"),
        ],
    )
