"""`blixard serve`: settings → app → uvicorn."""

from __future__ import annotations

import asyncio
import logging
import sys
from typing import Any

import uvicorn
from pydantic import ValidationError

from blixard.config import Settings
from blixard.store.crypto import EncryptionError, KeyConfigError
from blixard.store.protocol import Store
from blixard.store.sqlite import StoreInUse


async def _preflight(store: Store) -> None:
    """Open and close the store once before uvicorn starts, so that a store which must not be
    served (wrong or missing encryption key, file in use) is reported in one line rather than
    as a lifespan traceback."""
    await store.open()
    await store.close()


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
    from blixard.api.app import asgi_app, build_store, create_app

    try:
        asyncio.run(_preflight(build_store(settings)))
        app = create_app(settings)
    except KeyConfigError as exc:
        print(f"blixard: invalid configuration: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    except (EncryptionError, StoreInUse) as exc:
        print(f"blixard: cannot open the store: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    uvicorn.run(
        asgi_app(app),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.log_level == "debug",
        server_header=False,
        timeout_graceful_shutdown=10,
    )
