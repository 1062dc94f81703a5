"""Reading request bodies as they arrive: a hard size limit and a read timeout.

Nothing is allocated for what a client merely declares: the buffer grows with the bytes that
actually came in, so `Content-Length: 268435456` followed by silence costs nothing. A body
that stops arriving for `BLIXARD_BODY_TIMEOUT_SECONDS` answers 408. Handlers call these only
after `authorize`, so a caller without a valid key never gets a byte of its body read.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from blixard.domain.errors import BodyTimeout, InvalidInput, PayloadTooLarge
from blixard.domain.models import Body
from blixard.domain.parsing import check_text
from blixard.domain.service import verify_content_md5

#: How late a stalled body may be noticed (see read_body).
_TIMER_SLACK = 1.0
#: Bodies that are not states (LockInfo, JSON commands) are small.
SMALL_BODY_LIMIT = 1024 * 1024


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.", limit=limit)


def _declared_length(request: Request, limit: int) -> int | None:
    declared = request.headers.get("content-length")
    if declared is None:
        return None
    if not (declared.isascii() and declared.isdigit()) or len(declared) > 19:
        raise InvalidInput("Content-Length is not a number.")
    if int(declared) > limit:
        raise _too_large(limit)
    return int(declared)


async def read_body(request: Request, limit: int, *, verify_md5: bool = True) -> Body:
    """The whole body, refusing (413) as soon as it would pass `limit` bytes, and (408) when
    it stalls. `Content-MD5` is verified here unless the caller verifies it itself (state
    writes hash the body anyway). Bodies above SMALL_BODY_LIMIT stay in their bytearray."""
    expected = _declared_length(request, limit)
    timeout: float = request.app.state.settings.body_timeout_seconds
    received = bytearray()
    loop = asyncio.get_running_loop()
    try:
        # One timer per body, moved on as bytes arrive (at most about once per second): a
        # stall is noticed between `timeout` and `timeout` + _TIMER_SLACK seconds after the
        # last bytes, and a body that streams in costs one timer, not one per chunk.
        due = loop.time() + timeout + _TIMER_SLACK
        async with asyncio.timeout_at(due) as deadline:
            async for chunk in request.stream():
                if len(received) + len(chunk) > (limit if expected is None else expected):
                    if expected is None:
                        raise _too_large(limit)
                    raise InvalidInput("Request body is longer than its Content-Length.")
                received += chunk
                stall_at = loop.time() + timeout
                if due < stall_at:
                    due = stall_at + _TIMER_SLACK
                    deadline.reschedule(due)
    except TimeoutError:
        raise BodyTimeout(
            f"The request body stopped arriving for {timeout:g} seconds "
            f"({len(received)} bytes received)."
        ) from None
    if expected is not None and len(received) != expected:
        raise InvalidInput("Request body is shorter than its Content-Length.")
    body: Body = bytes(received) if len(received) <= SMALL_BODY_LIMIT else received
    md5_header = request.headers.get("content-md5")
    if verify_md5 and md5_header is not None:
        verify_content_md5(hashlib.md5(body).digest(), md5_header)
    return body


ModelT = TypeVar("ModelT", bound=BaseModel)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for key, item in value.items() for s in (*_strings(key), *_strings(item))]
    if isinstance(value, (list, tuple)):
        return [s for item in value for s in _strings(item)]
    return []


async def read_json_model(request: Request, model: type[ModelT], what: str) -> ModelT:
    """A small JSON body validated into `model`; problems become one 400 sentence.
    No string in it may hold a NUL (names and values end up in keys, logs and audit)."""
    body = await read_body(request, SMALL_BODY_LIMIT)
    try:
        parsed = model.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"Invalid {what}: {problems}.") from None
    for text in _strings(parsed.model_dump()):
        check_text(text, what)
    return parsed
