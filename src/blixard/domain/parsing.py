"""Reading what the domain needs out of client input, without ever rewriting it.

State bodies can be hundreds of MiB: msgspec decodes only the top-level fields we need and
skips (while still validating) everything else, so memory stays near the body's own size.
"""

from __future__ import annotations

import re
from typing import Any

import msgspec
import orjson

from blixard.domain.errors import InvalidLockInfo, InvalidState, InvalidWorkspaceName
from blixard.domain.models import StateMeta

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


def parse_state(body: bytes | bytearray | memoryview) -> StateMeta:
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


def with_serial(body: bytes, serial: int) -> bytes:
    """A copy of a state with a new top-level serial (rollback only: the one time bytes change).

    Re-serialised the way Terraform writes state (2-space indent, key order kept).
    """
    document = orjson.loads(body)
    document["serial"] = serial
    return orjson.dumps(document, option=orjson.OPT_INDENT_2) + b"\n"


def parse_lock_info(body: bytes, *, allow_empty: bool = False) -> dict[str, Any] | None:
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
