"""The ASGI application: thin routers over the domain service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.types import ASGIApp

from blixard import __version__, ui
from blixard.api import (
    admin,
    backend,
    encryption,
    events,
    explorer,
    health,
    management,
    runs,
    search,
)
from blixard.api.errors import install_error_handlers
from blixard.api.fastpath import ProtocolFastPath
from blixard.api.limits import RequestLimits
from blixard.api.metrics import Metrics, MetricsMiddleware
from blixard.api.openapi import install_openapi
from blixard.auth.audit import AuditSink
from blixard.auth.keyring import KeyRing
from blixard.config import Settings
from blixard.domain.events import EventBus
from blixard.domain.explorer import ExplorerService
from blixard.domain.service import StateService
from blixard.runs.executor import RunExecutor
from blixard.runs.service import RunService
from blixard.store.bootstrap import build_store
from blixard.store.observed import observed
from blixard.store.protocol import Store

DESCRIPTION = """
Blixard stores OpenTofu/Terraform state for the stock `backend "http"`: durable, locked,
versioned, with history and rollback. Point `address` at `/api/tofu/state/{workspace}`,
`lock_address` at `/api/tofu/lock/{workspace}` and `unlock_address` at
`/api/tofu/unlock/{workspace}` (the stock LOCK/UNLOCK methods and POST both work).

Errors are JSON `{"error": code, "message": sentence}`; lock conflicts also carry the
holder's LockInfo fields (`ID`, `Who`, `Operation`, ...) at top level.
"""


def create_app(settings: Settings | None = None, store: Store | None = None) -> FastAPI:
    settings = settings or Settings.load()
    bus = EventBus()
    store = observed(store or build_store(settings), bus)  # KeyConfigError for a bad key
    service = StateService(store)
    metrics = Metrics()
    keyring = KeyRing(store, required=settings.auth == "required")
    audit = AuditSink(store)
    executor = RunExecutor(store, service, keyring, settings)
    run_service = RunService(store, executor, settings)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await store.open()
        try:
            admin_key = settings.admin_key.get_secret_value() if settings.admin_key else None
            await keyring.start(admin_key)
            announce = getattr(app.state, "announce", None)
            if announce is not None:  # `blixard serve`'s start-up line
                announce(await keyring.enabled())
            await audit.start()
            await executor.start()
            try:
                yield
            finally:
                await executor.stop()
                await audit.stop()
                await keyring.stop()
        finally:
            await store.close()

    app = FastAPI(
        title="Blixard",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.store = store
    app.state.service = service
    app.state.metrics = metrics
    app.state.keyring = keyring
    app.state.audit = audit
    app.state.runs = run_service
    app.state.events = bus
    app.state.explorer = ExplorerService(store)
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(backend.router)
    app.include_router(management.router)
    app.include_router(admin.router)
    app.include_router(health.router)
    app.include_router(encryption.router)
    app.include_router(runs.router)
    app.include_router(events.router)
    app.include_router(search.router)
    app.include_router(explorer.router)
    ui.mount(app, settings)  # the web UI, on the same services and checks
    return app


def asgi_app(app: FastAPI, *, fast_path: bool = True, limited_protocol: bool = False) -> ASGIApp:
    """What the server runs: metrics around the protocol fast path around the FastAPI app.
    `limited_protocol`: served by limits.http_protocol, which already enforces what
    RequestLimits would (heads capped, unread bodies never read)."""
    inner: ASGIApp = ProtocolFastPath(app, root=app) if fast_path else app
    if not limited_protocol:
        inner = RequestLimits(inner)
    return MetricsMiddleware(inner, app.state.metrics)
