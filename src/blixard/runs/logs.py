"""A run's log while it is being written: followers see every byte as it arrives, except
the values of the run's variables, which never reach the log (`(redacted)`)."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import replace

from blixard.domain.runs import PlanSummary

REDACTED = b"(redacted)"
#: Shorter values are not secrets and would blank ordinary words and numbers out of logs.
MIN_REDACTED_LENGTH = 4


class Redactor:
    """Replaces every occurrence of the given values (also inside longer strings)."""

    def __init__(self, values: Iterable[str]) -> None:
        self._values: set[bytes] = set()
        self.longest = 0
        self._pattern: re.Pattern[bytes] | None = None
        self.add(*values)

    def add(self, *values: str) -> None:
        """Also hide these (e.g. the run's own credential, issued once the log exists)."""
        for value in values:
            if len(value.encode()) >= MIN_REDACTED_LENGTH:
                self._values |= {form.encode() for form in _quoted_forms(value)}
        # The longest first: a value that contains another is hidden whole.
        secrets = sorted(self._values, key=len, reverse=True)
        self.longest = len(secrets[0]) if secrets else 0
        self._pattern = re.compile(b"|".join(map(re.escape, secrets))) if secrets else None

    def data(self, data: bytes) -> bytes:
        return self._pattern.sub(REDACTED, data) if self._pattern else data

    def text(self, data: str) -> str:
        if self._pattern is None:
            return data
        return self.data(data.encode()).decode(errors="replace")

    def summary(self, summary: PlanSummary) -> PlanSummary:
        """Resource addresses hold for_each keys, which may be a variable's value."""
        changes = tuple(
            {**change, "address": self.text(str(change.get("address") or ""))}
            for change in summary.resource_changes
        )
        return replace(summary, resource_changes=changes)

    def stream(self, pending: bytes) -> tuple[bytes, bytes]:
        """(what may be shown, what must wait): a value may be cut by a chunk boundary, so
        the last `longest - 1` bytes wait for the next chunk unless a match covers them."""
        if self._pattern is None:
            return pending, b""
        limit = len(pending) - (self.longest - 1)
        out = bytearray()
        position = 0
        for match in self._pattern.finditer(pending):
            if match.start() >= limit:
                break
            out += pending[position : match.start()] + REDACTED
            position = match.end()
        cut = max(position, limit)
        out += pending[position:cut]
        return bytes(out), pending[cut:]


def _quoted_forms(value: str) -> set[str]:
    """The value as is, and as Terraform quotes it in what it prints (JSON and HCL escapes:
    `"`, `\\`, newlines, `${`), so a value shown inside a quoted string is hidden too."""
    escaped = json.dumps(value, ensure_ascii=False)[1:-1]
    forms = {value, escaped, json.dumps(value)[1:-1]}
    forms.add(escaped.replace("${", "$${").replace("%{", "%%{"))
    # A multi-line value is printed as an indented heredoc: hide each of its lines too.
    if "\n" in value:
        forms |= {line.strip() for line in value.splitlines()}
    return {form for form in forms if len(form.encode()) >= MIN_REDACTED_LENGTH}


class LiveLog:
    """The log of the phase executing now; flushed to the store in batches."""

    def __init__(
        self, persist: Callable[[bytes], Awaitable[None]], redactor: Redactor | None = None
    ) -> None:
        self._persist = persist
        self.redactor = redactor or Redactor(())
        self._held = b""  # the tail that may be the start of a value to redact
        self.data = bytearray()
        self.flushed = 0
        self.done = False
        self.lock = asyncio.Lock()  # orders flushes against readers of "store + tail"
        self._changed = asyncio.Condition()

    async def write(self, chunk: bytes) -> None:
        shown, self._held = self.redactor.stream(self._held + chunk)
        self.data += shown
        async with self._changed:
            self._changed.notify_all()

    async def flush(self) -> None:
        async with self.lock:
            if self.flushed < len(self.data):
                end = len(self.data)
                await self._persist(bytes(self.data[self.flushed : end]))
                self.flushed = end

    async def close(self) -> None:
        self.data += self.redactor.data(self._held)
        self._held = b""
        await self.flush()
        self.done = True
        async with self._changed:
            self._changed.notify_all()

    async def follow(self, offset: int) -> AsyncIterator[bytes]:
        """Everything from `offset` on, as it arrives, until the phase ends."""
        while True:
            if offset < len(self.data):
                chunk = bytes(self.data[offset:])
                offset += len(chunk)
                yield chunk
                continue
            if self.done:
                return
            async with self._changed:
                await self._changed.wait_for(
                    lambda seen=offset: self.done or len(self.data) > seen  # type: ignore[misc]
                )
