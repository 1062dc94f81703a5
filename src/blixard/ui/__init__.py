"""The web UI: server-rendered pages under /ui/ over the same services and checks as the API."""

from __future__ import annotations

from fastapi import FastAPI
from starlette.responses import RedirectResponse, Response
from starlette.staticfiles import StaticFiles

from blixard.config import Settings
from blixard.ui import web
from blixard.ui.views import (
    audit,
    cluster,
    diff,
    keys,
    login,
    outputs,
    resources,
    runs,
    search,
    workspace,
    workspaces,
)
from blixard.ui.views import errors as catch_all

#: Imported for their routes; the catch-all 404 page is registered last.
PAGES = (
    login,
    workspaces,
    workspace,
    diff,
    resources,
    outputs,
    search,
    runs,
    audit,
    keys,
    cluster,
    catch_all,
)


def mount(app: FastAPI, settings: Settings) -> None:
    """Add the UI's routes, static files and security headers to the API's app."""
    app.state.sessions = web.UiSessions(settings)
    app.mount("/ui/static", StaticFiles(directory=web.STATIC_DIR), name="ui-static")
    app.include_router(web.router)
    app.add_middleware(web.SecurityHeaders)

    @app.get("/", include_in_schema=False)
    async def home() -> Response:
        return RedirectResponse("/ui/", status_code=307)
