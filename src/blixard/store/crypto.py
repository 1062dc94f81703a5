"""Encryption at rest: AES-256-GCM envelopes around compressed version blobs and lock payloads.

A sealed blob is self-describing::

    b"BXE" 0x01 | key id (8 bytes) | nonce (12 random bytes) | AES-256-GCM ciphertext + 16-byte tag

The key id is the first 8 bytes of SHA-256 of the raw 32-byte key, so an operator can compute
it (`base64 -d <<<"$KEY" | sha256sum | cut -c1-16`) and the store can say which key a blob
needs without trying every key. The associated data binds a blob to its purpose and workspace:
a blob copied to another workspace, or a lock payload copied into a version, fails to open.
Opening never returns unauthenticated bytes: an unknown key id, a plaintext blob where a sealed
one is expected, or a failed tag each raise a `DecryptionError` that names what went wrong.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

if TYPE_CHECKING:
    from blixard.config import Settings

#: "BXE" + format version 1. Never a prefix of a zstd frame (those start with 28 B5 2F FD).
MAGIC = b"BXE\x01"
KEY_BYTES = 32
KEY_ID_BYTES = 8
NONCE_BYTES = 12
TAG_BYTES = 16
HEADER_BYTES = len(MAGIC) + KEY_ID_BYTES + NONCE_BYTES
#: What sealing adds to every blob.
OVERHEAD = HEADER_BYTES + TAG_BYTES

_CANARY_PLAINTEXT = b"blixard encryption canary v1"
_URLSAFE = str.maketrans("-_", "+/")


class EncryptionError(Exception):
    """Base of every encryption problem; the message is one line meant for an operator."""


class KeyConfigError(EncryptionError, ValueError):
    """A configured key is missing, unreadable or not base64 of 32 bytes."""


class DecryptionError(EncryptionError):
    """A blob cannot be opened: unknown key id, not sealed, or failed authentication."""


class UnknownKeyId(DecryptionError):
    def __init__(self, key_id: str, available: Iterable[str]) -> None:
        self.key_id = key_id
        super().__init__(
            f"data is sealed with key id {key_id}, which is not among the configured keys "
            f"(key ids {', '.join(available)})"
        )


def state_aad(workspace: str) -> bytes:
    """Associated data of a version blob: only opens as a state of this workspace."""
    return b"blixard/state\x00" + workspace.encode()


def lock_aad(workspace: str) -> bytes:
    """Associated data of a lock payload: only opens as a lock of this workspace."""
    return b"blixard/lock\x00" + workspace.encode()


def run_aad(run_id: str, kind: str) -> bytes:
    """Associated data of a run's document, plan file, configuration or log."""
    return b"blixard/run\x00" + run_id.encode() + b"\x00" + kind.encode()


def canary_aad(key_id: str) -> bytes:
    return b"blixard/canary\x00" + key_id.encode()


def key_id_of_key(key: bytes) -> str:
    return hashlib.sha256(key).digest()[:KEY_ID_BYTES].hex()


def is_sealed(blob: bytes | bytearray | memoryview) -> bool:
    return bytes(blob[: len(MAGIC)]) == MAGIC


def key_id_of_blob(blob: bytes | bytearray | memoryview) -> str | None:
    """The key id a sealed blob needs, or None for a plaintext blob."""
    if not is_sealed(blob) or len(blob) < OVERHEAD:
        return None
    return bytes(blob[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES]).hex()


def generate_key() -> str:
    """A fresh key as BLIXARD_ENCRYPTION_KEY expects it: base64 of 32 random bytes."""
    return base64.b64encode(os.urandom(KEY_BYTES)).decode()


def parse_key(text: str, source: str) -> bytes:
    """Decode one base64 key; errors name `source` and never echo key material."""
    cleaned = "".join(text.split())
    if not cleaned:
        raise KeyConfigError(
            f"{source} is empty; generate a key with `blixard encryption generate-key`"
        )
    padded = cleaned + "=" * (-len(cleaned) % 4)
    try:
        # Standard or URL-safe alphabet, padding optional.
        raw = base64.b64decode(padded.translate(_URLSAFE), validate=True)
    except (binascii.Error, ValueError):
        raise KeyConfigError(
            f"{source} is not valid base64; generate a key with `blixard encryption generate-key`"
        ) from None
    if len(raw) != KEY_BYTES:
        raise KeyConfigError(
            f"{source} must be base64 of exactly {KEY_BYTES} bytes (it decodes to {len(raw)}); "
            "generate a key with `blixard encryption generate-key`"
        )
    return raw


class Cipher:
    """The current key (seals everything new) and older keys (still open what they sealed)."""

    def __init__(self, current: bytes, old: Iterable[bytes] = ()) -> None:
        if len(current) != KEY_BYTES:
            raise KeyConfigError(f"an encryption key must be {KEY_BYTES} bytes")
        self.current_id = key_id_of_key(current)
        self._aeads: dict[str, AESGCM] = {self.current_id: AESGCM(current)}
        self._current = self._aeads[self.current_id]
        for key in old:
            if len(key) != KEY_BYTES:
                raise KeyConfigError(f"an encryption key must be {KEY_BYTES} bytes")
            self._aeads.setdefault(key_id_of_key(key), AESGCM(key))

    @property
    def key_ids(self) -> list[str]:
        """The current key id first, then the old ones in configuration order."""
        return list(self._aeads)

    @property
    def old_key_ids(self) -> list[str]:
        return [key_id for key_id in self._aeads if key_id != self.current_id]

    def has(self, key_id: str) -> bool:
        return key_id in self._aeads

    def seal(self, plaintext: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        """Encrypt under the current key with a fresh random nonce."""
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._current.encrypt(nonce, plaintext, aad)
        return b"".join((MAGIC, bytes.fromhex(self.current_id), nonce, sealed))

    def open(self, blob: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        """Decrypt and authenticate a sealed blob with whichever configured key sealed it."""
        view = memoryview(blob)
        if len(view) < OVERHEAD or not is_sealed(view):
            raise DecryptionError(
                "found an unencrypted blob where encrypted data was expected; the database "
                "mixes plaintext and ciphertext (run `blixard encryption rotate --data-dir`)"
            )
        key_id = bytes(view[len(MAGIC) : len(MAGIC) + KEY_ID_BYTES]).hex()
        aead = self._aeads.get(key_id)
        if aead is None:
            raise UnknownKeyId(key_id, self.key_ids)
        nonce = view[len(MAGIC) + KEY_ID_BYTES : HEADER_BYTES]
        try:
            return aead.decrypt(nonce, view[HEADER_BYTES:], aad)
        except InvalidTag:
            raise DecryptionError(
                f"a blob sealed with key id {key_id} failed authentication: it was altered, "
                "moved from another workspace, or the key is wrong"
            ) from None

    def reseal(self, blob: bytes | bytearray | memoryview, aad: bytes) -> bytes:
        """`blob` under the current key: opened first if sealed, sealed as is if plaintext."""
        plaintext = self.open(blob, aad) if is_sealed(blob) else blob
        return self.seal(plaintext, aad)

    def canary(self) -> bytes:
        """A known plaintext sealed with the current key, kept to check the key at start."""
        return self.seal(_CANARY_PLAINTEXT, canary_aad(self.current_id))

    def opens_canary(self, key_id: str, canary: bytes) -> bool:
        try:
            return self.open(canary, canary_aad(key_id)) == _CANARY_PLAINTEXT
        except DecryptionError:
            return False

    @classmethod
    def from_config(
        cls,
        key: str | None,
        key_file: Path | None = None,
        old_keys: str | None = None,
    ) -> Cipher | None:
        """The cipher the settings describe, or None when encryption is not configured."""
        if key is not None and key_file is not None:
            raise KeyConfigError(
                "set either BLIXARD_ENCRYPTION_KEY or BLIXARD_ENCRYPTION_KEY_FILE, not both"
            )
        if key_file is not None:
            try:
                key = Path(key_file).read_text()
            except OSError as exc:
                raise KeyConfigError(
                    f"cannot read BLIXARD_ENCRYPTION_KEY_FILE {key_file}: {exc.strerror or exc}"
                ) from None
            current = parse_key(key, f"the key in {key_file}")
        elif key is not None:
            current = parse_key(key, "BLIXARD_ENCRYPTION_KEY")
        else:
            current = None
        old = [
            parse_key(part, f"BLIXARD_ENCRYPTION_OLD_KEYS entry {index}")
            for index, part in enumerate((old_keys or "").split(","), start=1)
            if part.strip()
        ]
        if current is None:
            if old:
                raise KeyConfigError(
                    "BLIXARD_ENCRYPTION_OLD_KEYS is set but there is no current key: set "
                    "BLIXARD_ENCRYPTION_KEY (or BLIXARD_ENCRYPTION_KEY_FILE) too"
                )
            return None
        return cls(current, old)

    @classmethod
    def from_settings(cls, settings: Settings) -> Cipher | None:
        return cls.from_config(
            settings.encryption_key.get_secret_value() if settings.encryption_key else None,
            settings.encryption_key_file,
            settings.encryption_old_keys.get_secret_value()
            if settings.encryption_old_keys
            else None,
        )
