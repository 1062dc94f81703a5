"""Browser sessions of the web UI: an API key sealed into a cookie, and CSRF tokens.

The cookie holds the API key the user signed in with, sealed with AES-256-GCM under a key
derived from the session secret: the browser can neither read nor alter it, and every request
re-verifies the key against the keyring, so revoking a key ends its sessions at once. Nothing
is kept server-side, so any node that shares the session secret accepts the cookie.

The session secret is, in order: BLIXARD_SESSION_SECRET; else derived from the encryption key
at rest (every node of a cluster already shares it); else generated once and kept in
`<data_dir>/ui-session.secret` (mode 0600), which only that node reads.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import os
import secrets
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from blixard.config import Settings

COOKIE_NAME = "blixard_session"
SECRET_FILE = "ui-session.secret"
_NONCE_BYTES = 12


@dataclass(frozen=True, slots=True)
class Session:
    """One browser's session. `key` None: not signed in (an open server, or before sign-in)."""

    id: str
    key: str | None
    expires_at: float

    @staticmethod
    def anonymous(ttl: float) -> Session:
        return Session(secrets.token_urlsafe(16), None, time.time() + ttl)


@dataclass(frozen=True, slots=True)
class SessionSecret:
    value: bytes
    origin: str  # "BLIXARD_SESSION_SECRET", "encryption key" or the file's path: for start-up


def resolve_session_secret(settings: Settings) -> SessionSecret:
    if settings.session_secret is not None:
        return SessionSecret(
            settings.session_secret.get_secret_value().encode(), "BLIXARD_SESSION_SECRET"
        )
    shared = _encryption_key_text(settings)
    if shared is not None:
        return SessionSecret(shared.encode(), "the encryption key")
    path = settings.data_dir / SECRET_FILE
    return SessionSecret(_persisted_secret(path), str(path))


def _encryption_key_text(settings: Settings) -> str | None:
    if settings.encryption_key is not None:
        return settings.encryption_key.get_secret_value().strip()
    if settings.encryption_key_file is not None:
        try:
            return settings.encryption_key_file.read_text().strip()
        except OSError:
            return None
    return None


def _persisted_secret(path: Path) -> bytes:
    """The node's generated secret, created on first use (readable by the owner only)."""
    try:
        return path.read_bytes().strip()
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    value = secrets.token_urlsafe(48).encode()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: use theirs
        return path.read_bytes().strip()
    with os.fdopen(fd, "wb") as fh:
        fh.write(value)
        fh.flush()
        os.fsync(fh.fileno())
    return value


class SessionCodec:
    """Seals sessions into cookie values and opens them; issues and checks CSRF tokens."""

    def __init__(self, secret: bytes, ttl_seconds: float) -> None:
        self._aead = AESGCM(_derive(secret, b"blixard ui session cookie"))
        self._csrf_key = _derive(secret, b"blixard ui csrf token")
        self.ttl = ttl_seconds

    def seal(self, session: Session) -> str:
        nonce = os.urandom(_NONCE_BYTES)
        payload = orjson.dumps({"i": session.id, "k": session.key, "e": session.expires_at})
        blob = nonce + self._aead.encrypt(nonce, payload, COOKIE_NAME.encode())
        return base64.urlsafe_b64encode(blob).decode().rstrip("=")

    def open(self, value: str | None, now: float | None = None) -> Session | None:
        """The session in a cookie value; None if absent, forged, altered or expired."""
        if not value or len(value) > 4096:
            return None
        try:
            blob = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
            payload = self._aead.decrypt(
                blob[:_NONCE_BYTES], blob[_NONCE_BYTES:], COOKIE_NAME.encode()
            )
            fields = orjson.loads(payload)
            session = Session(str(fields["i"]), fields["k"], float(fields["e"]))
        except (binascii.Error, ValueError, InvalidTag, KeyError, TypeError):
            return None
        if session.expires_at <= (time.time() if now is None else now):
            return None
        return session

    def csrf_token(self, session: Session) -> str:
        """Bound to the session: a token from another session (or none) is refused."""
        return hmac.new(self._csrf_key, session.id.encode(), hashlib.sha256).hexdigest()

    def csrf_ok(self, session: Session | None, token: str | None) -> bool:
        if session is None or not token:
            return False
        return hmac.compare_digest(self.csrf_token(session), token)


def _derive(secret: bytes, purpose: bytes) -> bytes:
    """HKDF-like single-block derivation: one independent 32-byte key per purpose."""
    prk = hmac.new(b"blixard-session-v1", secret, hashlib.sha256).digest()
    return hmac.new(prk, purpose + b"\x01", hashlib.sha256).digest()
