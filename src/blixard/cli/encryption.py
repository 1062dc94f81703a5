"""`blixard encryption …`: generate keys, show which key ids seal the data, rotate keys.

Rotation with the server running (the usual way):

    export BLIXARD_ENCRYPTION_OLD_KEYS="$BLIXARD_ENCRYPTION_KEY"
    export BLIXARD_ENCRYPTION_KEY="$(blixard encryption generate-key)"
    # restart `blixard serve` with both, then:
    blixard encryption rotate --url http://127.0.0.1:8080

`--data-dir DIR` runs the same rotation directly on a stopped server's data directory, with the
keys taken from the same environment variables; it is also how an unencrypted store with data
gets encrypted.
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from blixard.cli.common import DEFAULT_URL, ApiKeyOpt, UrlOpt
from blixard.store.encryption import RotationProgress

encryption_app = typer.Typer(
    name="encryption",
    help="Encryption at rest: generate keys, show key ids in use, rotate keys.",
    no_args_is_help=True,
)

_STATUS_PATH = "/admin/encryption"

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of text.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="Rotate offline, directly on the data directory of a STOPPED server "
        "(keys from BLIXARD_ENCRYPTION_KEY[_FILE] and BLIXARD_ENCRYPTION_OLD_KEYS).",
    ),
]


@encryption_app.command("generate-key")
def generate_key() -> None:
    """Print a fresh random key (base64 of 32 bytes) for BLIXARD_ENCRYPTION_KEY."""
    from blixard.store.crypto import generate_key as new_key
    from blixard.store.crypto import key_id_of_key, parse_key

    key = new_key()
    sys.stdout.write(key + "\n")
    sys.stdout.flush()
    key_id = key_id_of_key(parse_key(key, "the new key"))
    typer.echo(
        f"key id {key_id}: store this key safely; without it the encrypted data cannot be read",
        err=True,
    )


@encryption_app.command("status")
def status(url: UrlOpt = DEFAULT_URL, api_key: ApiKeyOpt = None, as_json: JsonOpt = False) -> None:
    """Show the current key id, the key ids in use and how many blobs each one seals."""
    from blixard.cli import common
    from blixard.cli.client import open_client

    with open_client(url, api_key) as client:
        raw, body = client.request("GET", _STATUS_PATH)
    if as_json or not isinstance(body, dict):
        common.print_json(raw)
        return
    console = common.console()
    console.print(f"Encrypted:       {'yes' if body.get('encrypted') else 'no'}", markup=False)
    console.print(f"Current key id:  {body.get('current_key_id') or '-'}", markup=False)
    console.print(
        f"Key ids in use:  {', '.join(body.get('key_ids_in_use') or []) or '-'}", markup=False
    )
    for label in ("versions", "locks"):
        counts = body.get(label) or {}
        text = ", ".join(f"{key_id}: {n}" for key_id, n in sorted(counts.items())) or "none"
        console.print(f"{label.capitalize() + ':':<16} {text}", markup=False)
    console.print(str(body.get("message", "")), markup=False)


def _summary(progress: RotationProgress, rotated_versions: int, rotated_locks: int) -> str:
    if rotated_versions or rotated_locks:
        first = (
            f"Re-encrypted {rotated_versions} versions and {rotated_locks} lock and run payloads; "
            f"everything is now sealed with key id {progress.current_key_id}."
        )
    else:
        first = f"Nothing to re-encrypt: all is sealed with key id {progress.current_key_id}."
    lines = [first]
    if progress.retired_key_ids:
        lines.append(
            f"No data uses key ids {', '.join(progress.retired_key_ids)} any more: remove them "
            "from BLIXARD_ENCRYPTION_OLD_KEYS at the next restart."
        )
    return "\n".join(lines)


class _Bar:
    """A rich progress bar on stderr, counted in versions."""

    def __init__(self) -> None:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        from blixard.cli import common

        self._progress = Progress(
            TextColumn("re-encrypting"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("versions"),
            TimeElapsedColumn(),
            console=common.console(stderr=True),
            transient=False,
        )
        self._task: Any = None

    def __enter__(self) -> _Bar:
        self._progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._progress.stop()

    def update(self, progress: RotationProgress) -> None:
        done = progress.total_versions - progress.remaining_versions
        if self._task is None:
            self._task = self._progress.add_task("rotate", total=progress.total_versions)
        self._progress.update(self._task, total=progress.total_versions, completed=done)


def _progress_from_json(body: Any) -> RotationProgress:
    from blixard.cli import common

    try:
        return RotationProgress(
            current_key_id=str(body["current_key_id"]),
            rotated_versions=int(body["rotated_versions"]),
            rotated_locks=int(body["rotated_locks"]),
            remaining_versions=int(body["remaining_versions"]),
            remaining_locks=int(body["remaining_locks"]),
            total_versions=int(body["total_versions"]),
            retired_key_ids=[str(key_id) for key_id in body["retired_key_ids"]],
        )
    except (KeyError, TypeError, ValueError):
        common.fail(f"unexpected answer from the server: {json.dumps(body)[:200]}")


def _rotate_online(url: str, api_key: str | None, as_json: bool) -> None:
    from blixard.cli import common
    from blixard.cli.client import open_client

    versions = locks = 0
    retired: list[str] = []
    with open_client(url, api_key) as client, _Bar() as bar:
        while True:
            _, body = client.request("POST", _STATUS_PATH + "/rotate", {"max_seconds": 1.0})
            progress = _progress_from_json(body)
            versions += progress.rotated_versions
            locks += progress.rotated_locks
            retired += progress.retired_key_ids
            bar.update(progress)
            if progress.done:
                break
    _report(progress, versions, locks, retired, as_json, common.console())


def _report(
    last: RotationProgress,
    versions: int,
    locks: int,
    retired: list[str],
    as_json: bool,
    console: Any,
) -> None:
    total = RotationProgress(
        current_key_id=last.current_key_id,
        rotated_versions=versions,
        rotated_locks=locks,
        remaining_versions=last.remaining_versions,
        remaining_locks=last.remaining_locks,
        total_versions=last.total_versions,
        retired_key_ids=retired,
    )
    if as_json:
        sys.stdout.write(json.dumps(total.to_json(), indent=2) + "\n")
        return
    console.print(_summary(total, versions, locks), markup=False)


def _rotate_offline(data_dir: Path, as_json: bool) -> None:
    from blixard.cli import common
    from blixard.config import Settings, database_path
    from blixard.store.bootstrap import build_store, data_dir_url
    from blixard.store.crypto import Cipher, EncryptionError
    from blixard.store.errors import StoreInUse

    path = database_path(data_dir)
    if not path.is_file():
        common.fail(f"no Blixard database at {path}")
    try:
        cipher = Cipher.from_settings(Settings.load())
    except EncryptionError as exc:
        common.fail(str(exc))
    if cipher is None:
        common.fail(
            "set BLIXARD_ENCRYPTION_KEY (or BLIXARD_ENCRYPTION_KEY_FILE) to the key to encrypt "
            "with, and BLIXARD_ENCRYPTION_OLD_KEYS to the keys the data is sealed with now"
        )

    async def run(bar: _Bar) -> tuple[RotationProgress, int, int, list[str]]:
        store = build_store(
            Settings.load(),
            url=data_dir_url(data_dir),
            cipher=cipher,
            serving=False,
            adopt_plaintext=True,
        )
        await store.open()
        versions = locks = 0
        retired: list[str] = []
        try:
            while True:
                progress = await store.rotate_encryption(max_seconds=0.5)
                versions += progress.rotated_versions
                locks += progress.rotated_locks
                retired += progress.retired_key_ids
                bar.update(progress)
                if progress.done:
                    return progress, versions, locks, retired
        finally:
            await store.close()

    try:
        with _Bar() as bar:
            last, versions, locks, retired = asyncio.run(run(bar))
    except StoreInUse:
        common.fail(
            f"{path} is in use by a running server: rotate through it with "
            "`blixard encryption rotate --url URL`, or stop it first"
        )
    except EncryptionError as exc:
        common.fail(str(exc))
    _report(last, versions, locks, retired, as_json, common.console())


@encryption_app.command("rotate")
def rotate(
    url: UrlOpt = DEFAULT_URL,
    api_key: ApiKeyOpt = None,
    data_dir: DataDirOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Re-encrypt every version and lock payload under the current key.

    Online (default): restart the server with the new key in BLIXARD_ENCRYPTION_KEY and the old
    one in BLIXARD_ENCRYPTION_OLD_KEYS, then run this; it keeps serving meanwhile. Offline:
    --data-dir DIR on a stopped server's data directory, with the same environment variables
    (this is also how existing unencrypted data gets encrypted).
    """
    if data_dir is not None:
        _rotate_offline(data_dir, as_json)
    else:
        _rotate_online(url, api_key, as_json)
