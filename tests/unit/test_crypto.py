"""The cipher: sealing, opening, key ids, key parsing, and the codec's compress-then-seal."""

from __future__ import annotations

import base64
import hashlib
import os
from pathlib import Path

import orjson
import pytest

from blixard.store.codec import DeltaBase, VersionCodec
from blixard.store.crypto import (
    OVERHEAD,
    Cipher,
    DecryptionError,
    KeyConfigError,
    UnknownKeyId,
    generate_key,
    is_sealed,
    key_id_of_blob,
    key_id_of_key,
    lock_aad,
    parse_key,
    state_aad,
)

K1 = os.urandom(32)
K2 = os.urandom(32)


def test_seal_open_roundtrip_and_envelope() -> None:
    ring = Cipher(K1)
    blob = ring.seal(b"secret state", state_aad("prod"))
    assert is_sealed(blob) and b"secret" not in blob
    assert len(blob) == len(b"secret state") + OVERHEAD
    assert key_id_of_blob(blob) == ring.current_id == hashlib.sha256(K1).hexdigest()[:16]
    assert ring.open(blob, state_aad("prod")) == b"secret state"
    # A fresh nonce every time: the same plaintext never seals to the same bytes.
    assert ring.seal(b"secret state", state_aad("prod")) != blob


def test_blob_bound_to_workspace_and_purpose() -> None:
    ring = Cipher(K1)
    blob = ring.seal(b"x", state_aad("prod"))
    for wrong in (state_aad("dev"), lock_aad("prod"), b""):
        with pytest.raises(DecryptionError, match="failed authentication"):
            ring.open(blob, wrong)


def test_tampered_blob_fails_authentication() -> None:
    ring = Cipher(K1)
    blob = bytearray(ring.seal(b"payload" * 10, state_aad("w")))
    blob[-20] ^= 1
    with pytest.raises(DecryptionError, match="failed authentication"):
        ring.open(bytes(blob), state_aad("w"))


def test_unknown_key_id_is_named() -> None:
    blob = Cipher(K1).seal(b"x", state_aad("w"))
    with pytest.raises(UnknownKeyId, match=key_id_of_key(K1)):
        Cipher(K2).open(blob, state_aad("w"))


def test_old_keys_open_and_reseal_moves_to_current() -> None:
    old = Cipher(K1).seal(b"data", state_aad("w"))
    ring = Cipher(K2, [K1])
    assert ring.key_ids == [key_id_of_key(K2), key_id_of_key(K1)]
    assert ring.old_key_ids == [key_id_of_key(K1)]
    assert ring.open(old, state_aad("w")) == b"data"
    new = ring.reseal(old, state_aad("w"))
    assert key_id_of_blob(new) == ring.current_id
    assert Cipher(K2).open(new, state_aad("w")) == b"data"
    # Plaintext is sealed as is (offline encryption of an unencrypted store).
    assert ring.open(ring.reseal(b"plain", state_aad("w")), state_aad("w")) == b"plain"


def test_plaintext_where_ciphertext_expected_is_refused() -> None:
    with pytest.raises(DecryptionError, match="unencrypted blob"):
        Cipher(K1).open(b"\x28\xb5\x2f\xfd" + b"x" * 64, state_aad("w"))


def test_canary_checks_the_key() -> None:
    ring = Cipher(K1)
    canary = ring.canary()
    assert ring.opens_canary(ring.current_id, canary)
    assert not Cipher(K2).opens_canary(ring.current_id, canary)


def test_generated_keys_parse() -> None:
    key = generate_key()
    assert len(base64.b64decode(key)) == 32
    assert parse_key(key, "k") == base64.b64decode(key)
    raw = os.urandom(32)
    urlsafe = base64.urlsafe_b64encode(raw).decode().rstrip("=")
    assert parse_key(f"  {urlsafe}\n", "k") == raw


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "is empty"),
        ("not base64!!", "not valid base64"),
        (base64.b64encode(b"short").decode(), "exactly 32 bytes .it decodes to 5."),
    ],
)
def test_bad_keys_are_one_line_errors(text: str, message: str) -> None:
    with pytest.raises(KeyConfigError, match=message) as info:
        parse_key(text, "BLIXARD_ENCRYPTION_KEY")
    assert "\n" not in str(info.value) and str(info.value).startswith("BLIXARD_ENCRYPTION_KEY")


def test_from_config(tmp_path: Path) -> None:
    assert Cipher.from_config(None) is None
    key1, key2 = generate_key(), generate_key()
    ring = Cipher.from_config(key1, None, f"{key2}, ")
    assert ring is not None and ring.key_ids == [
        key_id_of_key(base64.b64decode(key1)),
        key_id_of_key(base64.b64decode(key2)),
    ]
    key_file = tmp_path / "key"
    key_file.write_text(key1 + "\n")
    from_file = Cipher.from_config(None, key_file)
    assert from_file is not None and from_file.current_id == ring.current_id
    with pytest.raises(KeyConfigError, match="not both"):
        Cipher.from_config(key1, key_file)
    with pytest.raises(KeyConfigError, match="cannot read BLIXARD_ENCRYPTION_KEY_FILE"):
        Cipher.from_config(None, tmp_path / "missing")
    with pytest.raises(KeyConfigError, match="no current key"):
        Cipher.from_config(None, None, key2)
    with pytest.raises(KeyConfigError, match="OLD_KEYS entry 2"):
        Cipher.from_config(key1, None, f"{key2},nope")


def _states(n: int) -> list[bytes]:
    resources = [{"name": f"r{i}", "id": f"SECRET-{i:04d}", "pad": "x" * 200} for i in range(200)]
    out = []
    for serial in range(1, n + 1):
        resources[serial % 200] = {**resources[serial % 200], "rev": serial}
        out.append(orjson.dumps({"serial": serial, "lineage": "L", "resources": resources}))
    return out


def test_codec_compresses_then_seals_full_and_delta() -> None:
    codec = VersionCodec(full_every=10, cipher=Cipher(K1))
    plain = VersionCodec(full_every=10)
    base: DeltaBase | None = None
    base_body: bytes | None = None
    kinds = set()
    for number, body in enumerate(_states(25), start=1):
        encoded = codec.encode("w", body, base)
        assert is_sealed(encoded.blob) and b"SECRET" not in encoded.blob
        # Sealing adds a fixed envelope: compression is as good as without encryption.
        assert len(encoded.blob) == len(plain.encode("w", body, base).blob) + OVERHEAD
        kinds.add(encoded.encoding)
        assert codec.decode("w", encoded, base_body if encoded.base_version else None) == body
        with pytest.raises(DecryptionError):
            codec.decode("other", encoded, base_body)
        with pytest.raises(DecryptionError, match="no encryption key"):
            plain.decode("w", encoded, base_body)
        if encoded.encoding == "zstd":
            base, base_body = DeltaBase(number, body, len(encoded.blob), 0), body
        else:
            assert base is not None
            base = DeltaBase(base.version, base.body, base.stored_size, base.deltas_since + 1)
    assert kinds == {"zstd", "zstd-delta"}
