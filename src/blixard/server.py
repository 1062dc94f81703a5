"""`blixard serve`: settings → app → uvicorn."""

from __future__ import annotations

import logging
import sys
from typing import Any

import uvicorn
from pydantic import ValidationError

from blixard.config import Settings


def serve(overrides: dict[str, Any] | None = None) -> None:
    try:
        settings = Settings.load(overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        print(f"blixard: invalid configuration: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    from blixard.api.app import asgi_app, create_app

    app = create_app(settings)
    uvicorn.run(
        asgi_app(app),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        server_header=False,
        timeout_graceful_shutdown=10,
    )
