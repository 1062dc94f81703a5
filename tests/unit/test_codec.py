"""Version packing: exact round trips, deltas against full bases, the two-decompression bound."""

from __future__ import annotations

import random

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from blixard.store.codec import DELTA_MAX_BYTES, DeltaBase, VersionCodec


def states(count: int, resources: int = 300, seed: int = 1) -> list[bytes]:
    rng = random.Random(seed)
    items = [{"name": f"r{i}", "id": rng.randbytes(12).hex()} for i in range(resources)]
    out = []
    for serial in range(1, count + 1):
        items[rng.randrange(resources)]["id"] = rng.randbytes(12).hex()
        out.append(orjson.dumps({"serial": serial, "lineage": "L", "resources": items}))
    return out


def test_successive_versions_become_small_deltas_of_a_full_base() -> None:
    codec = VersionCodec(full_every=10)
    bodies = states(25)
    base: DeltaBase | None = None
    kinds = []
    for number, body in enumerate(bodies, start=1):
        encoded = codec.encode("w", body, base)
        kinds.append(encoded.encoding)
        base_body = base.body if base and encoded.base_version == base.version else None
        assert codec.decode("w", encoded, base_body) == body
        if encoded.encoding == "zstd":
            base = DeltaBase(number, body, len(encoded.blob), 0)
        else:
            assert base is not None and encoded.base_version == base.version
            assert len(encoded.blob) < len(body) // 20
            base = DeltaBase(base.version, base.body, base.stored_size, base.deltas_since + 1)
    # A new full version every `full_every` versions bounds how stale a base can get.
    assert kinds[0] == "zstd" and kinds[10] == "zstd" and kinds[20] == "zstd"
    assert kinds.count("zstd-delta") == 22


def test_unrelated_content_is_stored_full() -> None:
    codec = VersionCodec()
    first, other = states(1, seed=1)[0], states(1, seed=2)[0]
    base = DeltaBase(1, first, len(codec.encode("w", first, None).blob), 0)
    assert codec.encode("w", other, base).encoding == "zstd"


def test_large_bodies_are_always_full() -> None:
    codec = VersionCodec()
    assert codec.wants_full(DELTA_MAX_BYTES + 1, 10, 0)
    assert codec.wants_full(10, DELTA_MAX_BYTES + 1, 0)
    assert not codec.wants_full(10, 10, 0)


@settings(max_examples=50, deadline=None)
@given(base=st.binary(max_size=5000), body=st.binary(max_size=5000))
def test_any_bytes_round_trip(base: bytes, body: bytes) -> None:
    codec = VersionCodec()
    full = codec.encode("w", base, None)
    assert codec.decode("w", full, None) == base
    encoded = codec.encode("w", body, DeltaBase(1, base, max(len(full.blob), 1), 0))
    base_body = base if encoded.encoding == "zstd-delta" else None
    assert codec.decode("w", encoded, base_body) == body


def test_dictionary_cache_is_bounded_by_memory_not_body_bytes() -> None:
    codec = VersionCodec(dictionary_cache_bytes=8 * 1024 * 1024)
    body = states(1, resources=300)[0]  # ~25 KB: its digested dictionary is ~1.4 MiB
    for workspace in range(20):
        base = DeltaBase(1, body, 1_000_000, 0)
        codec.encode(f"w{workspace}", body + b" ", base)
    cache = codec._dictionaries
    assert cache._bytes <= 8 * 1024 * 1024
    assert 2 <= len(cache._items) <= 6
