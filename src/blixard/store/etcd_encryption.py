"""Encryption status and online rotation on the etcd engine, with the SQLite engine's semantics
(sqlite_encryption.py, encryption.py).

What is sealed, and where (docs/etcd-notes.md §12):

- versions: `ver/<name>\\0<INV(n)>`, a JSON record whose blob is inline (base64) or in chunks
  under `blob/` (AAD: the workspace);
- lock payloads: `lock.info` (base64) inside the workspace record `ws/<name>`;
- runs: documents `runs/<id>`, files `runblob/<id>\\0<kind>` (inline, or chunks under
  `chunks/`) and log chunks `runlog/<id>\\0<seq>`;
- `meta/encryption`: a canary per key id that may still seal something (see
  EtcdStore._check_encryption).

Rotation re-seals every value that the current key did not seal. Each value is re-put in its
own nested Txn compared on the mod_revision it was read at, up to 100 of them (and ~1 MiB) per
request: a value someone changed meanwhile fails only its own compare and is read again and
re-sealed again (or found already done), so a concurrent write is never overwritten. A chunked
value gets new chunks (leased until published, as uploads are); the Txn publishing them hands the
old chunks to a short lease instead of deleting them, so a reader holding the old pointer still
finds them. Versions go first, within the time budget; lock payloads and run data follow, in
full, once a pass found no version left, and then the old key ids lose their canary. Every call
starts from the beginning and skips what is already under the current key, so an interrupted
rotation simply resumes.

Which key seals a value is remembered by (etcd key, mod_revision): a value at a given revision
never changes, so status and progress reads range over keys only and fetch the values that
changed since they were last seen.
"""

from __future__ import annotations

import secrets
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import orjson

from blixard.store.crypto import Cipher, key_id_of_blob, lock_aad, run_aad, state_aad
from blixard.store.encryption import (
    PLAINTEXT,
    EncryptionNotConfigured,
    EncryptionStatus,
    RotationProgress,
)
from blixard.store.etcd import EtcdStore, _b64, _prefix_end, _unb64
from blixard.store.etcd_batch import get_op, put_op

#: Old chunks of a re-sealed value live this long after the swap (for readers in flight).
RETIRED_CHUNKS_TTL = 30
#: Per request: nested Txns (each one value) and bytes of new values.
_ITEMS_PER_TXN = 100
_BYTES_PER_TXN = 1024 * 1024
#: Keys per keys-only page, and values fetched per Txn of point reads (inline values are at
#: most ~700 KiB of base64: a Txn answer stays far below the 64 MiB receive limit).
_KEYS_PAGE = 1000
_VALUES_PER_READ = 32
#: Attempts to re-seal one value that keeps changing under the rotation (e.g. a busy lock).
_ATTEMPTS = 20
#: Entries of the (key, mod_revision) → key id memory; beyond it values are fetched again.
_MEMORY_LIMIT = 250_000

#: "No sealed payload here" (a workspace record without a lock).
_NONE = ""
_CANARIES = "meta/encryption"


@dataclass(frozen=True, slots=True)
class _Family:
    """One kind of sealed value: where it lives, how it is packed, which AAD seals it."""

    prefix: str
    #: "raw": the value is the blob; "pointer": JSON, blob inline or chunked; "lock": a
    #: workspace record whose lock.info is the blob.
    shape: str
    #: AAD from the key's rest after the prefix.
    aad: Callable[[bytes], bytes]
    #: Where new chunks go, from the key's rest (pointer shape only).
    chunks_under: str = ""


def _name(rest: bytes) -> str:
    return rest.split(b"\x00", 1)[0].decode()


def _run_file_aad(rest: bytes) -> bytes:
    run_id, kind = rest.decode().split("\x00", 1)
    return run_aad(run_id, kind)


def _run_log_aad(rest: bytes) -> bytes:
    run_id, seq = rest.decode().split("\x00", 1)
    return run_aad(run_id, f"log{int(seq)}")


VERSIONS = _Family("ver/", "pointer", lambda rest: state_aad(_name(rest)), "blob/")
LOCKS = _Family("ws/", "lock", lambda rest: lock_aad(rest.decode()))
RUN_DATA = (
    _Family("runs/", "raw", lambda rest: run_aad(rest.decode(), "document")),
    _Family("runblob/", "pointer", _run_file_aad, "chunks/runblob/"),
    _Family("runlog/", "raw", _run_log_aad),
)


@dataclass(slots=True)
class _Value:
    """A sealed value as read: its key, revision and raw etcd value."""

    key: bytes
    mod_revision: int
    raw: bytes


@dataclass(slots=True)
class _Resealed:
    value: _Value
    new_raw: bytes
    #: Chunked values: the upload lease and the ops publishing the new chunks, the old chunk
    #: keys (handed to a short lease when the new ones are published).
    upload_lease: int = 0
    publish: list[Any] | None = None
    old_chunks: list[bytes] | None = None


class EtcdEncryption:
    """Status and rotation for one EtcdStore (which owns the connection and the cipher)."""

    def __init__(self, store: EtcdStore) -> None:
        self.store = store
        self._seen: dict[bytes, tuple[int, str | None]] = {}

    # -- reading ---------------------------------------------------------------------------

    def _remember(self, key: bytes, mod_revision: int, key_id: str | None) -> None:
        if key in self._seen or len(self._seen) < _MEMORY_LIMIT:
            self._seen[key] = (mod_revision, key_id)

    def _known(self, key: bytes, mod_revision: int) -> tuple[bool, str | None]:
        found = self._seen.get(key)
        if found is None or found[0] != mod_revision:
            return False, None
        return True, found[1]

    async def _blob(self, family: _Family, raw: bytes, *, whole: bool) -> bytes | None:
        """The sealed blob in a value (None: no payload); for chunked values only the first
        chunk unless `whole` (enough for the key id)."""
        store = self.store
        if family.shape == "raw":
            return raw
        doc = orjson.loads(raw)
        if family.shape == "lock":
            return _unb64(doc["lock"]["info"]) if doc["lock"] else None
        if "inline" in doc:
            return _unb64(doc["inline"])
        at = store._k(doc["chunks_at"])
        if whole:
            return await store._read_chunks(at, doc["chunks"])
        first = await store._range(at, _prefix_end(at), limit=1)
        return bytes(first.kvs[0].value) if first.kvs else b""

    async def _key_id(self, family: _Family, raw: bytes) -> str | None:
        blob = await self._blob(family, raw, whole=False)
        return _NONE if blob is None else key_id_of_blob(blob)

    async def _fetch(self, keys: list[bytes]) -> list[_Value]:
        """The current values of `keys` (missing ones left out), in one Txn of point reads."""
        store = self.store
        found: list[_Value] = []
        for i in range(0, len(keys), _VALUES_PER_READ):
            resp = await store._txn([], [get_op(key) for key in keys[i : i + _VALUES_PER_READ]], [])
            for response in resp.responses:
                for kv in response.response_range.kvs:
                    found.append(_Value(bytes(kv.key), int(kv.mod_revision), bytes(kv.value)))
        return found

    async def _walk(
        self, family: _Family, fetch_if: Callable[[str | None], bool]
    ) -> AsyncIterator[tuple[str | None, _Value | None]]:
        """(key id, value) of every value of a family, ascending. A value is fetched (a few
        at a time) when its key id is not known at its revision or `fetch_if(key id)`."""
        store = self.store
        start = store._k(family.prefix)
        end = _prefix_end(start)
        while True:
            page = await store._call(
                store._kv.get(start, end, limit=_KEYS_PAGE, keys_only=True, timeout=store.timeout)
            )
            wanted: list[bytes] = []
            last = len(page.kvs) - 1
            for i, kv in enumerate(page.kvs):
                key = bytes(kv.key)
                is_known, key_id = self._known(key, int(kv.mod_revision))
                if is_known and not fetch_if(key_id):
                    yield key_id, None
                else:
                    wanted.append(key)
                if len(wanted) >= _VALUES_PER_READ or (wanted and i == last):
                    for value in await self._fetch(wanted):
                        key_id = await self._key_id(family, value.raw)
                        self._remember(value.key, value.mod_revision, key_id)
                        yield key_id, value
                    wanted = []
            if not page.more or not page.kvs:
                return
            start = bytes(page.kvs[-1].key) + b"\x00"

    async def _count(self, family: _Family) -> Counter[str]:
        counts: Counter[str] = Counter()
        async for key_id, _ in self._walk(family, lambda _: False):
            if key_id != _NONE:
                counts[key_id or PLAINTEXT] += 1
        return counts

    async def _canaries(self) -> tuple[Any | None, dict[str, str]]:
        kv = await self.store._get(self.store._k(_CANARIES))
        return kv, (orjson.loads(kv.value)["canaries"] if kv is not None else {})

    # -- status ----------------------------------------------------------------------------

    async def status(self) -> EncryptionStatus:
        cipher = self.store.cipher
        _, canaries = await self._canaries()
        versions = dict(await self._count(VERSIONS))
        locks = dict(await self._count(LOCKS))
        old = cipher.old_key_ids if cipher else []
        return EncryptionStatus(
            encrypted=bool(canaries),
            current_key_id=cipher.current_id if cipher else None,
            configured_key_ids=cipher.key_ids if cipher else [],
            key_ids_in_use=sorted(canaries),
            versions=versions,
            locks=locks,
            removable_key_ids=[
                key_id
                for key_id in old
                if key_id not in canaries and key_id not in versions and key_id not in locks
            ],
        )

    # -- rotation --------------------------------------------------------------------------

    async def rotate(self, *, max_seconds: float, batch_versions: int = 64) -> RotationProgress:
        cipher = self.store.cipher
        if cipher is None:
            raise EncryptionNotConfigured(
                "Encryption at rest is not enabled on this server: set BLIXARD_ENCRYPTION_KEY "
                "(an etcd prefix holding unencrypted data is encrypted by a backup, then a "
                "restore into a new prefix with the key set)."
            )
        current = cipher.current_id
        rotated_versions, _ = await self._rotate_family(
            cipher, VERSIONS, deadline=time.monotonic() + max_seconds, batch=batch_versions
        )
        versions = await self._count(VERSIONS)
        rotated_locks = 0
        retired: list[str] = []
        if all(key_id == current for key_id in versions):
            # As in SQLite: once no version is left, lock payloads and run data (small next
            # to versions) go in full, then old key ids that nothing uses are forgotten.
            complete = True
            for family in (LOCKS, *RUN_DATA):
                rotated, done = await self._rotate_family(cipher, family)
                rotated_locks += rotated
                complete = complete and done
            if complete:
                retired = await self._retire(cipher)
        locks = await self._count(LOCKS)
        return RotationProgress(
            current_key_id=current,
            rotated_versions=rotated_versions,
            rotated_locks=rotated_locks,
            remaining_versions=sum(n for k, n in versions.items() if k != current),
            remaining_locks=sum(n for k, n in locks.items() if k != current),
            total_versions=sum(versions.values()),
            retired_key_ids=retired,
        )

    async def _rotate_family(
        self,
        cipher: Cipher,
        family: _Family,
        *,
        deadline: float | None = None,
        batch: int = _ITEMS_PER_TXN,
    ) -> tuple[int, bool]:
        """Re-seal what the current key did not seal: (values re-sealed, whether the pass
        reached the end with nothing left behind). With a deadline, stops after the batch
        that passes it."""

        def stale(key_id: str | None) -> bool:
            return key_id not in (_NONE, cipher.current_id)

        rotated = size = 0
        complete = True
        pending: list[_Value] = []
        async for key_id, value in self._walk(family, stale):
            if value is None or not stale(key_id):
                continue
            pending.append(value)
            size += len(value.raw)
            if len(pending) >= batch or size >= 4 * _BYTES_PER_TXN:
                done, failed = await self.reseal(family, pending)
                rotated += done
                complete = complete and not failed
                pending, size = [], 0
                if deadline is not None and time.monotonic() >= deadline:
                    return rotated, False
        done, failed = await self.reseal(family, pending)
        return rotated + done, complete and not failed

    async def reseal(self, family: _Family, values: list[_Value]) -> tuple[int, int]:
        """Re-seal `values` (as read earlier) under the current key, each compared on the
        mod_revision it was read at; a value changed meanwhile is read again and, if still
        not under the current key, re-sealed from its new content. Returns (values re-sealed,
        values still stale after _ATTEMPTS rounds)."""
        cipher = self.store.cipher
        assert cipher is not None
        rotated = 0
        for _ in range(_ATTEMPTS):
            if not values:
                break
            lost: list[_Value] = []
            inline: list[_Resealed] = []
            for value in values:
                resealed = await self._resealed(cipher, family, value)
                if resealed is None:
                    continue
                if resealed.publish is None:
                    inline.append(resealed)
                elif await self._put_chunked(cipher, resealed):
                    rotated += 1
                else:
                    lost.append(value)
            done, conflicts = await self._put_inline(cipher, inline)
            rotated += done
            values = []
            for value in await self._fetch([v.key for v in [*lost, *conflicts]]):
                key_id = await self._key_id(family, value.raw)
                self._remember(value.key, value.mod_revision, key_id)
                if key_id not in (_NONE, cipher.current_id):
                    values.append(value)
        return rotated, len(values)

    async def _resealed(self, cipher: Cipher, family: _Family, value: _Value) -> _Resealed | None:
        store = self.store
        rest = value.key[len(store._k(family.prefix)) :]
        aad = family.aad(rest)
        if family.shape == "raw":
            return _Resealed(value, cipher.reseal(value.raw, aad))
        doc = orjson.loads(value.raw)
        if family.shape == "lock":
            if not doc["lock"]:
                return None
            info = cipher.reseal(_unb64(doc["lock"]["info"]), aad)
            doc["lock"]["info"] = _b64(info)
            return _Resealed(value, orjson.dumps(doc))
        blob = await self._blob(family, value.raw, whole=True)
        assert blob is not None
        sealed = cipher.reseal(blob, aad)
        who = doc.get("meta", {}).get("lock_who") if family is VERSIONS else None
        if who is not None:
            # A version's lock holder is sealed with its blob's key and moves with it.
            doc["meta"]["lock_who"] = _b64(cipher.reseal(_unb64(who), lock_aad(_name(rest))))
        if "stored" in doc:
            doc["stored"] = len(sealed)
        if "inline" in doc:
            doc["inline"] = _b64(sealed)
            return _Resealed(value, orjson.dumps(doc))
        old_at = store._k(doc["chunks_at"])
        old_chunks = [old_at + f"{i:05d}".encode() for i in range(doc["chunks"])]
        new_at = store._k(family.chunks_under) + rest + b"/" + secrets.token_hex(8).encode() + b"/"
        lease, publish = await store._upload_chunks(new_at, sealed)
        doc["chunks_at"] = new_at[len(store._p) :].decode()
        doc["chunks"] = len(publish)
        return _Resealed(value, orjson.dumps(doc), lease, publish, old_chunks)

    async def _put_inline(self, cipher: Cipher, items: list[_Resealed]) -> tuple[int, list[_Value]]:
        """Put re-sealed values, each in a nested Txn compared on its mod_revision, in
        requests of ≤ _ITEMS_PER_TXN values and ~_BYTES_PER_TXN: (put, lost their compare)."""
        from etcd3aio._protobuf import RequestOp, TxnRequest

        store = self.store
        kv = store._kv
        rotated = 0
        lost: list[_Value] = []
        start = 0
        while start < len(items):
            end, size = start, 0
            while end < len(items) and end - start < _ITEMS_PER_TXN:
                if end > start and size + len(items[end].new_raw) > _BYTES_PER_TXN:
                    break
                size += len(items[end].new_raw)
                end += 1
            group = items[start:end]
            start = end
            ops = [
                RequestOp(
                    request_txn=TxnRequest(
                        compare=[store._cmp_mod(item.value.key, item.value.mod_revision)],
                        success=[kv.txn_op_put(item.value.key, item.new_raw)],
                    )
                )
                for item in group
            ]
            resp = await store._txn([], ops, [])
            revision = int(resp.header.revision)
            for item, response in zip(group, resp.responses, strict=True):
                if response.response_txn.succeeded:
                    rotated += 1
                    self._remember(item.value.key, revision, cipher.current_id)
                else:
                    lost.append(item.value)
        return rotated, lost

    async def _put_chunked(self, cipher: Cipher, item: _Resealed) -> bool:
        """Publish a chunked value's new chunks and pointer in one Txn compared on the
        pointer's mod_revision; the old chunks go to a short lease."""
        from etcd3aio._protobuf import PutRequest, RequestOp

        store = self.store
        assert item.publish is not None and item.old_chunks is not None
        try:
            grant = await store._call(
                store._client.lease.grant(RETIRED_CHUNKS_TTL, timeout=store.timeout)
            )
            retire = [
                RequestOp(request_put=PutRequest(key=key, ignore_value=True, lease=int(grant.ID)))
                for key in item.old_chunks
            ]
            resp = await store._txn(
                [store._cmp_mod(item.value.key, item.value.mod_revision)],
                [
                    put_op(item.value.key, item.new_raw),
                    *store._nest([*item.publish, *retire]),
                ],
                [],
            )
            if not resp.succeeded:
                await store._revoke(int(grant.ID))
                return False
            self._remember(item.value.key, int(resp.header.revision), cipher.current_id)
            return True
        finally:
            # Published chunks no longer hold the upload lease; unpublished ones go with it.
            await store._revoke(item.upload_lease)

    async def _retire(self, cipher: Cipher) -> list[str]:
        """Forget the canaries of old key ids (a full pass just found nothing they seal)."""
        store = self.store
        key = store._k(_CANARIES)
        while True:
            kv, canaries = await self._canaries()
            old = sorted(key_id for key_id in canaries if key_id != cipher.current_id)
            if kv is None or not old:
                return []
            keep = {k: v for k, v in canaries.items() if k == cipher.current_id}
            if cipher.current_id not in keep:
                keep[cipher.current_id] = _b64(cipher.canary())
            resp = await store._txn(
                [store._cmp_mod(key, int(kv.mod_revision))],
                [put_op(key, orjson.dumps({"canaries": keep}))],
                [],
            )
            if resp.succeeded:
                return old
