"""Reading what the domain needs out of client input, without ever rewriting it.

State bodies can be hundreds of MiB: msgspec decodes only the top-level fields we need and
skips (while still validating) everything else, so memory stays near the body's own size.
"""

from __future__ import annotations

import codecs
import re
from datetime import datetime
from typing import Any

import msgspec
import orjson

from blixard.domain.errors import (
    InvalidInput,
    InvalidLockInfo,
    InvalidState,
    InvalidWorkspaceName,
)
from blixard.domain.models import LOCK_INFO_FIELDS, Body, ResourceSlices, StateMeta

WORKSPACE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")

#: Every number the server stores (serials, versions, ids) is a signed 64-bit integer.
MAX_INT64 = 2**63 - 1
_ASCII_INTEGER = re.compile(r"[0-9]{1,19}")
#: UTF-8 is validated in slices, so a 256 MiB state never becomes a 256 MiB str.
_UTF8_SLICE = 1024 * 1024


def check_workspace_name(name: str) -> str:
    if not WORKSPACE_NAME.fullmatch(name):
        raise InvalidWorkspaceName(
            "Workspace names are 1-128 characters of letters, digits, '.', '_' and '-', "
            "and do not start with '.'."
        )
    return name


def parse_count(raw: str, name: str, *, minimum: int = 1, maximum: int = MAX_INT64) -> int:
    """A whole number typed by a client (query string, path), within [minimum, maximum].

    Only ASCII digits: `int()` also accepts Arabic-Indic digits, underscores, signs and
    spaces, none of which a version number or a limit is spelled with.
    """
    if not _ASCII_INTEGER.fullmatch(raw) or not minimum <= int(raw) <= maximum:
        raise InvalidInput(f"'{name}' must be a whole number from {minimum} to {maximum}.")
    return int(raw)


def check_text(value: str, name: str) -> str:
    """Refuse a NUL character: names and ids end up in logs, SQL and etcd keys."""
    if "\x00" in value:
        raise InvalidInput(f"'{name}' must not contain a NUL character.")
    return value


def check_utf8(body: Body) -> None:
    """Refuse a body that is not valid UTF-8 anywhere (JSON is UTF-8, RFC 8259), in slices
    so memory stays flat; ASCII bodies, the common case, are checked in one C call."""
    if body.isascii():
        return
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(body)
    try:
        for start in range(0, len(view), _UTF8_SLICE):
            decoder.decode(view[start : start + _UTF8_SLICE])
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        raise InvalidState("State is not valid UTF-8.") from None
    finally:
        view.release()


class _StateHeader(msgspec.Struct):
    serial: int
    lineage: str
    # Raw: kept as an unparsed slice (msgspec cannot put Raw in a union; empty = absent).
    terraform_version: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    resources: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _ListedStateHeader(msgspec.Struct):
    """The header of a state whose `resources` is a list (every Terraform state): each
    resource is a slice of the body, so one pass both counts them and keeps them for the
    resource index to compare with the head's."""

    serial: int
    lineage: str
    terraform_version: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    resources: list[msgspec.Raw] | None = None


class _ListedResources(msgspec.Struct):
    resources: list[msgspec.Raw] | None = None


class _Skipped(msgspec.Struct):
    """An object whose fields are all skipped: counting resources costs one tiny object each."""


_OPEN_BRACE = ord("{")
_listed_header_decoder = msgspec.json.Decoder(_ListedStateHeader)
_listed_resources_decoder = msgspec.json.Decoder(_ListedResources)
_header_decoder = msgspec.json.Decoder(_StateHeader)
_resources_decoder = msgspec.json.Decoder(list[_Skipped])
_string_decoder = msgspec.json.Decoder(str)


def parse_state(body: Body) -> StateMeta:
    """Validate a state body and read its metadata.

    The only shape required is valid UTF-8 JSON: an object with an integer `serial`
    (0 to 2^63-1) and a string `lineage` (no NUL): OpenTofu's client-side-encrypted envelope
    qualifies, and unfamiliar extra fields are fine. `terraform_version`, the resource
    count and the resources' slices are best-effort.
    """
    try:
        listed = _listed_header_decoder.decode(body)
    except (msgspec.MsgspecError, RecursionError):
        # Not a plain state (resources not a list, or no state at all): the tolerant reader
        # decides, and words the error.
        return _parse_unusual_state(body)
    _check_header(listed, body)
    items = listed.resources
    return StateMeta(
        serial=listed.serial,
        lineage=listed.lineage,
        terraform_version=_optional_string(listed.terraform_version),
        resource_count=None if items is None else _count_listed(items),
        resources=items,
    )


def _parse_unusual_state(body: Body) -> StateMeta:
    try:
        header = _header_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidState(
            f"State must be a JSON object with an integer 'serial' and a string 'lineage' ({exc})."
        ) from None
    except msgspec.DecodeError as exc:
        raise InvalidState(f"State is not valid JSON ({exc}).") from None
    except RecursionError:
        # Terraform states nest a few dozen levels; thousands is an attack or a bug.
        raise InvalidState("State is nested too deeply to be a Terraform state.") from None
    _check_header(header, body)
    return StateMeta(
        serial=header.serial,
        lineage=header.lineage,
        terraform_version=_optional_string(header.terraform_version),
        resource_count=_count_objects(header.resources),
    )


def _check_header(header: _StateHeader | _ListedStateHeader, body: Body) -> None:
    if not 0 <= header.serial <= MAX_INT64:
        raise InvalidState(f"State 'serial' must be from 0 to {MAX_INT64}.")
    if not header.lineage:
        raise InvalidState("State 'lineage' must not be empty.")
    if "\x00" in header.lineage:
        raise InvalidState("State 'lineage' must not contain a NUL character.")
    # msgspec checks UTF-8 only in the strings it decodes; stored states are read back whole.
    check_utf8(body)


def resource_slices(body: Body) -> ResourceSlices | None:
    """A state body's resources as slices of it (None when they are not a list): equal
    slices, equal resources, whatever else differs (serial, outputs, ...)."""
    try:
        return _listed_resources_decoder.decode(body).resources
    except (msgspec.MsgspecError, RecursionError):
        return None


def _count_listed(items: list[msgspec.Raw]) -> int | None:
    """How many resources, when every one is an object (as _count_objects counts)."""
    for item in items:
        if memoryview(item)[0] != _OPEN_BRACE:
            return None
    return len(items)


def _optional_string(raw: msgspec.Raw) -> str | None:
    if not raw:
        return None
    try:
        return _string_decoder.decode(raw)
    except msgspec.MsgspecError:
        return None


def _count_objects(raw: msgspec.Raw) -> int | None:
    if not raw:
        return None
    try:
        return len(_resources_decoder.decode(raw))
    except msgspec.MsgspecError:
        return None


# A JSON token scanner just good enough to track depth: strings (with escapes), object keys
# (a string followed by ':') and brackets. Everything else is skipped by the regex engine.
_TOKENS = re.compile(rb'"(?:[^"\\]|\\.)*"(\s*:)?|[{}\[\]]')
_INTEGER = re.compile(rb"\s*(-?\d+)")


def with_serial(body: bytes, serial: int) -> bytes:
    """A copy of a state whose top-level `serial` value is replaced, and nothing else.

    Used by rollback, the one operation that edits state bytes: only the digits of the
    top-level serial change, so numbers, escapes and formatting stay exactly as written.
    """
    depth = 0
    for token in _TOKENS.finditer(body):
        first = body[token.start()]
        if first in b"{[":
            depth += 1
        elif first in b"}]":
            depth -= 1
        elif token.group(1) is not None and depth == 1:
            key = orjson.loads(body[token.start() : token.start(1)])
            if key != "serial":
                continue
            number = _INTEGER.match(body, token.end())
            if number is None:
                break
            edited = body[: number.start(1)] + str(serial).encode() + body[number.end(1) :]
            if parse_state(edited).serial != serial:  # e.g. a duplicated "serial" key
                break
            return edited
    raise InvalidState("The stored state has no single top-level integer 'serial' to update.")


def parse_lock_info(body: Body, *, allow_empty: bool = False) -> dict[str, Any] | None:
    """Parse a LockInfo body. Empty bodies mean 'force' where `allow_empty` (UNLOCK)."""
    if not body.strip():
        if allow_empty:
            return None
        raise InvalidLockInfo("LOCK needs a LockInfo JSON body with a non-empty 'ID'.")
    try:
        info = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise InvalidLockInfo("LockInfo is not valid JSON.") from None
    if not isinstance(info, dict):
        raise InvalidLockInfo("LockInfo must be a JSON object.")
    lock_id = info.get("ID")
    if not isinstance(lock_id, str) or not lock_id:
        raise InvalidLockInfo("LockInfo needs a non-empty string 'ID'.")
    if len(lock_id) > 1024:
        raise InvalidLockInfo("LockInfo 'ID' is longer than 1024 characters.")
    if b"\\u0000" not in body:
        return info  # JSON spells a NUL inside a string only as \u0000
    for field in LOCK_INFO_FIELDS:
        value = info.get(field)
        if isinstance(value, str) and "\x00" in value:
            raise InvalidLockInfo(f"LockInfo '{field}' must not contain a NUL character.")
    return info


def parse_time(value: str | None, name: str) -> float | None:
    """An ISO 8601 time from a query or flag (a trailing Z means UTC) as a Unix timestamp."""
    if value is None:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise InvalidInput(
            f"'{name}' must be an ISO 8601 time, e.g. 2026-11-25T10:00:00Z."
        ) from None
