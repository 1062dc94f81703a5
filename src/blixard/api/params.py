"""Query and path parameters read inside handlers, after the key is checked, and their docs.

FastAPI validates typed parameters before a handler runs, so `?limit=abc` from a caller without
a key would answer 400 instead of 401 and leave no audit entry. Numbers are therefore declared
to OpenAPI here and parsed by the handler once `authorize` has passed.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from fastapi import Path
from starlette.requests import Request

from blixard.domain.errors import InvalidInput
from blixard.domain.parsing import MAX_INT64, WORKSPACE_NAME, parse_count

_DECIMAL = re.compile(r"[0-9]{1,6}(\.[0-9]{1,9})?")

#: A workspace path segment, documented with the name rule it is checked against (by the
#: handler, after authentication, so the pattern is documentation, not framework validation).
WorkspacePath = Annotated[
    str,
    Path(
        description="Workspace name.",
        json_schema_extra={"pattern": f"^{WORKSPACE_NAME.pattern}$", "maxLength": 128},
    ),
]


def count_param(
    name: str,
    description: str,
    *,
    minimum: int = 1,
    maximum: int = MAX_INT64,
    default: int | None = None,
    where: str = "query",
) -> dict[str, Any]:
    """The OpenAPI description of a whole-number parameter read with `query_count`."""
    schema: dict[str, Any] = {"type": "integer", "minimum": minimum, "maximum": maximum}
    if default is not None:
        schema["default"] = default
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "description": description,
        "schema": schema,
    }


def string_param(
    name: str,
    description: str,
    *,
    max_length: int | None = None,
    choices: tuple[str, ...] | None = None,
    format: str | None = None,
) -> dict[str, Any]:
    """The OpenAPI description of a text parameter (read with `query_text` when it has a
    `max_length`; `choices` and `format` document what the domain accepts)."""
    schema: dict[str, Any] = {"type": "string"}
    if max_length is not None:
        schema["maxLength"] = max_length
    if choices is not None:
        schema["enum"] = list(choices)
    if format is not None:
        schema["format"] = format
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": schema,
    }


def bool_param(name: str, description: str) -> dict[str, Any]:
    """The OpenAPI description of a flag read with `query_bool`."""
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "boolean", "default": False},
    }


def query_count(
    request: Request,
    name: str,
    *,
    minimum: int = 1,
    maximum: int = MAX_INT64,
    default: int | None = None,
) -> int | None:
    """A whole-number query parameter (ASCII digits, within range), or `default` if absent."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    return parse_count(raw, name, minimum=minimum, maximum=maximum)


def query_limit(request: Request, *, default: int, maximum: int) -> int:
    """A page size: `default` when absent, 1 to `maximum` when given."""
    raw = request.query_params.get("limit")
    return default if raw is None else parse_count(raw, "limit", maximum=maximum)


def query_seconds(request: Request, name: str, *, default: float, maximum: float) -> float:
    """Seconds above 0 and at most `maximum`, as ASCII decimal (no exponent, inf or nan)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not _DECIMAL.fullmatch(raw) or not 0 < float(raw) <= maximum:
        raise InvalidInput(f"'{name}' must be a number of seconds above 0 and at most {maximum:g}.")
    return float(raw)


def query_text(request: Request, name: str, *, max_length: int) -> str | None:
    """A text query parameter of at most `max_length` characters, or None if absent."""
    value = request.query_params.get(name)
    if value is not None and len(value) > max_length:
        raise InvalidInput(f"'{name}' must be at most {max_length} characters.")
    return value


#: The spellings of a flag accepted (those FastAPI's typed `bool` parameters accepted).
_TRUE = ("true", "1", "yes", "on", "t", "y")
_FALSE = ("false", "0", "no", "off", "f", "n")


def query_flag_set(request: Request, name: str) -> bool:
    """Whether a flag is given as true, refusing nothing: for choosing the action to
    authorize before the flag itself is parsed (with `query_bool`, which refuses bad values)."""
    return request.query_params.get(name, "").lower() in _TRUE


def query_bool(request: Request, name: str, default: bool = False) -> bool:
    value = request.query_params.get(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered not in _TRUE + _FALSE:
        raise InvalidInput(f"Query parameter '{name}' must be true or false.")
    return lowered in _TRUE
