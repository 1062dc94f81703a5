"""Encrypted snapshot files (`blixard backup --encrypt`): the snapshot's bytes, sealed in frames.

A sealed file is ``MAGIC`` + 16 random bytes (the file's id), then frames of a 4-byte
big-endian length and a blob sealed with the encryption key (AES-256-GCM, crypto.Cipher: the
blob names its key id). Each frame's associated data binds it to the file id, its position and
whether it is the last frame, so frames cannot be dropped, reordered, spliced in from another
file, or cut off after a frame boundary without the reader noticing. Inside is the ordinary
snapshot stream (snapshot.py), which carries its own checksums.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import BinaryIO

from blixard.store.crypto import Cipher, EncryptionError, key_id_of_blob
from blixard.store.snapshot import SnapshotCorrupt, file_chunks

MAGIC = b"BLIXARD-SEALED-SNAPSHOT 1\n"
_FILE_ID_BYTES = 16
_FRAME_BYTES = 1024 * 1024
_LENGTH = struct.Struct(">I")
#: A frame can never be larger than this (plaintext frame plus the envelope, with room).
_MAX_FRAME = 2 * _FRAME_BYTES


class SealedSnapshotError(SnapshotCorrupt):
    """An encrypted snapshot cannot be opened (no key, the wrong key, or tampering)."""


def _aad(file_id: bytes, index: int, final: bool) -> bytes:
    return b"blixard/snapshot\x00" + file_id + struct.pack(">Q?", index, final)


class SealingWriter:
    """Wraps a binary file: what is written goes to it sealed, frame by frame."""

    def __init__(self, out: BinaryIO, cipher: Cipher) -> None:
        self._out = out
        self._cipher = cipher
        self._file_id = os.urandom(_FILE_ID_BYTES)
        self._pending = bytearray()
        self._index = 0
        self._closed = False
        out.write(MAGIC + self._file_id)

    @property
    def key_id(self) -> str:
        return self._cipher.current_id

    def _frame(self, data: bytes, final: bool) -> None:
        sealed = self._cipher.seal(data, _aad(self._file_id, self._index, final))
        self._out.write(_LENGTH.pack(len(sealed)) + sealed)
        self._index += 1

    def write(self, data: bytes) -> None:
        self._pending += data
        while len(self._pending) > _FRAME_BYTES:
            chunk = bytes(self._pending[:_FRAME_BYTES])
            del self._pending[:_FRAME_BYTES]
            self._frame(chunk, final=False)

    def finish(self) -> None:
        """Write the last frame (possibly empty): without it the file reads as truncated."""
        if not self._closed:
            self._frame(bytes(self._pending), final=True)
            self._pending.clear()
            self._closed = True


def is_sealed_file(path: Path) -> bool:
    with open(path, "rb") as handle:
        return handle.read(len(MAGIC)) == MAGIC


def sealed_key_id(path: Path) -> str | None:
    """The key id a sealed file's first frame needs (None if it has no frame)."""
    with open(path, "rb") as handle:
        head = handle.read(len(MAGIC) + _FILE_ID_BYTES + _LENGTH.size + 64)
    start = len(MAGIC) + _FILE_ID_BYTES + _LENGTH.size
    return key_id_of_blob(head[start:])


def unseal(chunks: Iterable[bytes], cipher: Cipher | None) -> Iterator[bytes]:
    """The plaintext stream of a sealed file given as chunks (MAGIC included)."""
    buffer = bytearray()
    source = iter(chunks)

    def need(n: int) -> bool:
        while len(buffer) < n:
            chunk = next(source, None)
            if chunk is None:
                return False
            buffer.extend(chunk)
        return True

    if not need(len(MAGIC) + _FILE_ID_BYTES) or bytes(buffer[: len(MAGIC)]) != MAGIC:
        raise SnapshotCorrupt("not an encrypted Blixard snapshot")
    file_id = bytes(buffer[len(MAGIC) : len(MAGIC) + _FILE_ID_BYTES])
    del buffer[: len(MAGIC) + _FILE_ID_BYTES]
    index = 0
    while True:
        if not need(_LENGTH.size):
            if buffer:
                raise SnapshotCorrupt("the encrypted snapshot is truncated")
            raise SnapshotCorrupt(
                "the encrypted snapshot ends before its last frame: the file is truncated"
            )
        (length,) = _LENGTH.unpack(buffer[: _LENGTH.size])
        if length > _MAX_FRAME:
            raise SnapshotCorrupt("the encrypted snapshot is damaged (a frame length is wrong)")
        if not need(_LENGTH.size + length):
            raise SnapshotCorrupt("the encrypted snapshot is truncated")
        blob = bytes(buffer[_LENGTH.size : _LENGTH.size + length])
        del buffer[: _LENGTH.size + length]
        if cipher is None:
            raise SealedSnapshotError(
                f"the snapshot is encrypted (key id {key_id_of_blob(blob) or '?'}): set "
                "BLIXARD_ENCRYPTION_KEY (or add the key to BLIXARD_ENCRYPTION_OLD_KEYS) to the "
                "key it was written with"
            )
        for final in (False, True):
            try:
                plaintext = cipher.open(blob, _aad(file_id, index, final))
            except EncryptionError as exc:
                if final:
                    raise SealedSnapshotError(
                        f"the encrypted snapshot cannot be opened: {exc}"
                    ) from None
                continue
            break
        index += 1
        if plaintext:
            yield plaintext
        if final:
            if buffer or need(1):
                raise SnapshotCorrupt("unexpected data after the end of the encrypted snapshot")
            return


def snapshot_chunks(path: Path, cipher: Cipher | None) -> Iterator[bytes]:
    """The snapshot stream of a file, unsealed first if it is an encrypted snapshot."""
    if is_sealed_file(path):
        return unseal(file_chunks(path), cipher)
    return file_chunks(path)
