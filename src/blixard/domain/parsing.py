"""Reading what the domain needs out of client input, without ever rewriting it.

State bodies can be hundreds of MiB: msgspec decodes only the top-level fields we need and
skips (while still validating) everything else, so memory stays near the body's own size.
"""

from __future__ import annotations

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
from blixard.domain.models import Body, StateMeta

WORKSPACE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")


def check_workspace_name(name: str) -> str:
    if not WORKSPACE_NAME.fullmatch(name):
        raise InvalidWorkspaceName(
            "Workspace names are 1-128 characters of letters, digits, '.', '_' and '-', "
            "and do not start with '.'."
        )
    return name


class _StateHeader(msgspec.Struct):
    serial: int
    lineage: str
    # Raw: kept as an unparsed slice (msgspec cannot put Raw in a union; empty = absent).
    terraform_version: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)
    resources: msgspec.Raw = msgspec.field(default_factory=msgspec.Raw)


class _Skipped(msgspec.Struct):
    """An object whose fields are all skipped: counting resources costs one tiny object each."""


_header_decoder = msgspec.json.Decoder(_StateHeader)
_resources_decoder = msgspec.json.Decoder(list[_Skipped])
_string_decoder = msgspec.json.Decoder(str)


def parse_state(body: Body) -> StateMeta:
    """Validate a state body and read its metadata.

    The only shape required is a JSON object with an integer `serial` (>= 0) and a string
    `lineage`: OpenTofu's client-side-encrypted envelope qualifies, and unfamiliar extra
    fields are fine. `terraform_version` and the resource count are best-effort.
    """
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
    if header.serial < 0:
        raise InvalidState("State 'serial' must not be negative.")
    if not header.lineage:
        raise InvalidState("State 'lineage' must not be empty.")
    return StateMeta(
        serial=header.serial,
        lineage=header.lineage,
        terraform_version=_optional_string(header.terraform_version),
        resource_count=_count_objects(header.resources),
    )


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
