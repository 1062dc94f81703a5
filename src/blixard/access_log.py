"""Access log lines (BLIXARD_LOG_LEVEL=debug) without submitted variable values.

A plan uploaded as an archive takes its variables in the query string (`?var=name=value`),
and uvicorn's access log prints the whole request line: the values are replaced by
`(redacted)` there, as they are in run logs and summaries. Names stay, so the line still
says which variables a request set.
"""

from __future__ import annotations

import logging
from urllib.parse import quote, unquote_plus

#: Query parameters whose values (after the variable's `name=`) are secret.
_VARIABLE_PARAMETERS = frozenset({"var"})
REDACTED = "(redacted)"


def redact_query(path: str) -> str:
    """`path` (with its query string) with every variable's value replaced by REDACTED."""
    base, sep, query = path.partition("?")
    if not sep:
        return path
    parts = []
    for pair in query.split("&"):
        key, eq, value = pair.partition("=")
        if eq and unquote_plus(key) in _VARIABLE_PARAMETERS:
            name = unquote_plus(value).partition("=")[0]
            pair = f"{key}={quote(name + '=', safe='')}{quote(REDACTED)}"
        parts.append(pair)
    return f"{base}?{'&'.join(parts)}"


class RedactVariables(logging.Filter):
    """On uvicorn's access logger: its record's args are (client, method, path, version,
    status)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) >= 3 and isinstance(args[2], str):
            record.args = (*args[:2], redact_query(args[2]), *args[3:])
        return True


def install() -> None:
    """Attach the filter to uvicorn's access logger (uvicorn's own logging setup, which runs
    later, replaces handlers but keeps a logger's filters)."""
    logger = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactVariables) for f in logger.filters):
        logger.addFilter(RedactVariables())
