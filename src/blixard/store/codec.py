"""How state versions are packed into bytes at rest, shared by every engine.

Successive versions of a workspace differ by a few resources, so each version is stored either
*full* (zstd alone) or as a *delta*: zstd with a recent full version of the same workspace as a
raw-content dictionary. A delta always points at a full version, so reading any version costs at
most two decompressions. A new full version is started every `full_every` versions, or sooner
when deltas stop paying off, which bounds how far a delta's base can lag behind.

With a cipher, every blob is compressed first and then sealed (AES-256-GCM, see crypto.py), so
encryption costs the history nothing in size. A delta's dictionary is its base's *decrypted*
body: decoding a delta opens and decompresses the base, then opens and decompresses the delta.
"""

from __future__ import annotations

import hashlib
import math
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Literal

import zstandard

from blixard.domain.errors import VersionCorrupt
from blixard.domain.models import Body
from blixard.store.crypto import Cipher, DecryptionError, is_sealed, state_aad

Encoding = Literal["zstd", "zstd-delta"]

#: Above this size a version is always stored full: dictionaries that big cost more than they save.
DELTA_MAX_BYTES = 16 * 1024 * 1024
#: zstd refuses windows past 2**27 unless told otherwise; deltas stay far below it.
MAX_WINDOW_LOG = 27


@dataclass(frozen=True, slots=True)
class Encoded:
    encoding: Encoding
    base_version: int | None
    blob: bytes


@dataclass(frozen=True, slots=True)
class DeltaBase:
    """A full version usable as a dictionary, with what the policy needs to know about it."""

    version: int
    body: bytes
    stored_size: int
    deltas_since: int


def _dictionary_cost(body_size: int) -> int:
    """Memory a digested level-6 dictionary holds: its content plus match tables (measured:
    ~1.4 MiB for a 100 KB body, ~3.6 MiB for 1 MB)."""
    return body_size * 5 // 2 + 1_310_720


class _Dictionaries:
    """An LRU of zstd dictionaries built from base bodies, bounded by their memory."""

    def __init__(self, max_bytes: int) -> None:
        self._max_bytes = max_bytes
        self._bytes = 0
        self._items: OrderedDict[tuple[str, int], tuple[zstandard.ZstdCompressionDict, int]] = (
            OrderedDict()
        )
        self._lock = threading.Lock()

    def get(
        self, key: tuple[str, int], body: bytes, params: zstandard.ZstdCompressionParameters
    ) -> zstandard.ZstdCompressionDict:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found[0]
        built = zstandard.ZstdCompressionDict(body, dict_type=zstandard.DICT_TYPE_RAWCONTENT)
        # Digesting the dictionary once makes each delta ~6x cheaper to compress.
        built.precompute_compress(compression_params=params)
        cost = _dictionary_cost(len(body))
        with self._lock:
            if key not in self._items:
                self._items[key] = (built, cost)
                self._bytes += cost
            while self._bytes > self._max_bytes and len(self._items) > 1:
                _, (_, evicted_cost) = self._items.popitem(last=False)
                self._bytes -= evicted_cost
        return built


class VersionCodec:
    def __init__(
        self,
        *,
        level: int = 3,
        delta_level: int = 6,
        full_every: int = 64,
        dictionary_cache_bytes: int = 256 * 1024 * 1024,
        cipher: Cipher | None = None,
    ) -> None:
        self.level = level
        self.cipher = cipher
        # Level 3's small match tables cannot index a MiB-sized dictionary; level 6 finds
        # nearly every match (a one-resource change of a 2 MB state packs to ~1.5 KB).
        self.delta_level = delta_level
        self.full_every = full_every
        self._dictionaries = _Dictionaries(dictionary_cache_bytes)
        self._params_by_window: dict[int, zstandard.ZstdCompressionParameters] = {}

    def wants_full(self, body_size: int, base_size: int, deltas_since: int) -> bool:
        """Whether a body must be stored full; engines ask before fetching a base body."""
        return (
            deltas_since + 1 >= self.full_every
            or body_size > DELTA_MAX_BYTES
            or base_size > DELTA_MAX_BYTES
        )

    def _compress_full(self, body: Body) -> bytes:
        # zstd contexts are not thread-safe and encoding runs on several threads: one per call.
        return zstandard.ZstdCompressor(level=self.level, write_checksum=True).compress(body)

    def _delta_params(self, base_size: int) -> zstandard.ZstdCompressionParameters:
        """One parameter set per base, so its digested dictionary can be reused."""
        window_log = min(MAX_WINDOW_LOG, max(20, math.ceil(math.log2(2 * base_size + 1))))
        params = self._params_by_window.get(window_log)
        if params is None:
            params = zstandard.ZstdCompressionParameters.from_level(
                self.delta_level, window_log=window_log, write_checksum=1
            )
            self._params_by_window[window_log] = params
        return params

    def _dictionary(
        self, workspace: str, version: int, body: bytes
    ) -> zstandard.ZstdCompressionDict:
        return self._dictionaries.get((workspace, version), body, self._delta_params(len(body)))

    def _open(self, workspace: str, blob: bytes) -> bytes:
        if self.cipher is not None:
            return self.cipher.open(blob, state_aad(workspace))
        if is_sealed(blob):
            raise DecryptionError("found an encrypted blob but no encryption key is configured")
        return blob

    def encode(self, workspace: str, body: Body, base: DeltaBase | None) -> Encoded:
        """Pack `body`, as a delta against `base` when that pays off, else full; then seal it."""
        encoded = self._compress(workspace, body, base)
        if self.cipher is None:
            return encoded
        sealed = self.cipher.seal(encoded.blob, state_aad(workspace))
        return Encoded(encoded.encoding, encoded.base_version, sealed)

    def _compress(self, workspace: str, body: Body, base: DeltaBase | None) -> Encoded:
        if base is None or self.wants_full(len(body), len(base.body), base.deltas_since):
            return Encoded("zstd", None, self._compress_full(body))
        dictionary = self._dictionary(workspace, base.version, base.body)
        compressor = zstandard.ZstdCompressor(
            dict_data=dictionary, compression_params=self._delta_params(len(base.body))
        )
        blob = compressor.compress(body)
        if len(blob) * 2 > base.stored_size:
            # The versions have drifted apart: start a new base rather than keep paying.
            return Encoded("zstd", None, self._compress_full(body))
        return Encoded("zstd-delta", base.version, blob)

    def decode_version(
        self,
        workspace: str,
        version: int,
        encoded: Encoded,
        base_body: bytes | None,
        *,
        sha256: str | None = None,
        cache: bool = True,
    ) -> bytes:
        """`decode`, with damaged or altered bytes reported as VersionCorrupt naming the
        version: zstd's frame checksum and AES-GCM's tag notice damage, and `sha256` (the
        digest recorded when the version was written) a blob of another version put in its
        place, which would otherwise decode cleanly."""
        try:
            body = self.decode(workspace, encoded, base_body, cache=cache)
        except (zstandard.ZstdError, DecryptionError) as exc:
            raise VersionCorrupt(workspace, version, str(exc)) from exc
        if sha256 is not None and hashlib.sha256(body).hexdigest() != sha256:
            raise VersionCorrupt(
                workspace, version, "its bytes are not the ones written: the SHA-256 differs"
            )
        return body

    def decode(
        self, workspace: str, encoded: Encoded, base_body: bytes | None, *, cache: bool = True
    ) -> bytes:
        """The body `encode` packed; `base_body` is the decoded base of a delta.

        `cache=False` (one pass over many workspaces, e.g. a snapshot export) neither uses nor
        fills the dictionary cache: decoding needs no digested compression dictionary.
        """
        blob = self._open(workspace, encoded.blob)
        if encoded.encoding == "zstd":
            return zstandard.ZstdDecompressor().decompress(blob)
        if base_body is None or encoded.base_version is None:
            raise ValueError("a delta needs its base version's body to be decoded")
        if cache:
            dictionary = self._dictionary(workspace, encoded.base_version, base_body)
        else:
            dictionary = zstandard.ZstdCompressionDict(
                base_body, dict_type=zstandard.DICT_TYPE_RAWCONTENT
            )
        decompressor = zstandard.ZstdDecompressor(
            dict_data=dictionary, max_window_size=2**MAX_WINDOW_LOG
        )
        return decompressor.decompress(blob)
