"""Reading request bodies under a hard size limit, without buffering past it."""

from __future__ import annotations

import hashlib
from typing import TypeVar

from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from blixard.domain.errors import InvalidInput, PayloadTooLarge
from blixard.domain.models import Body
from blixard.domain.service import verify_content_md5

#: Bodies that are not states (LockInfo, JSON commands) are small.
SMALL_BODY_LIMIT = 1024 * 1024


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"Request body exceeds the limit of {limit} bytes.", limit=limit)


async def read_body(request: Request, limit: int, *, verify_md5: bool = True) -> Body:
    """The whole body, refusing (413) as soon as it would pass `limit` bytes.

    With a Content-Length the buffer is allocated once; without one it grows. `Content-MD5`
    is verified here unless the caller verifies it itself (state writes hash the body anyway).
    """
    declared = request.headers.get("content-length")
    expected: int | None = None
    if declared is not None:
        try:
            expected = int(declared)
        except ValueError:
            raise InvalidInput("Content-Length is not a number.") from None
        if expected > limit:
            raise _too_large(limit)
    if expected is not None:
        buffer = bytearray(expected)
        view = memoryview(buffer)
        filled = 0
        async for chunk in request.stream():
            end = filled + len(chunk)
            if end > expected:
                raise InvalidInput("Request body is longer than its Content-Length.")
            view[filled:end] = chunk
            filled = end
        if filled != expected:
            raise InvalidInput("Request body is shorter than its Content-Length.")
        view.release()
        body: Body = bytes(buffer) if expected <= SMALL_BODY_LIMIT else buffer
    else:
        chunks = bytearray()
        async for chunk in request.stream():
            if len(chunks) + len(chunk) > limit:
                raise _too_large(limit)
            chunks += chunk
        body = bytes(chunks) if len(chunks) <= SMALL_BODY_LIMIT else chunks
    md5_header = request.headers.get("content-md5")
    if verify_md5 and md5_header is not None:
        verify_content_md5(hashlib.md5(body).digest(), md5_header)
    return body


ModelT = TypeVar("ModelT", bound=BaseModel)


async def read_json_model(request: Request, model: type[ModelT], what: str) -> ModelT:
    """A small JSON body validated into `model`; problems become one 400 sentence."""
    body = await read_body(request, SMALL_BODY_LIMIT)
    try:
        return model.model_validate_json(body)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise InvalidInput(f"Invalid {what}: {problems}.") from None
