"""Any other address under /ui/ is a page saying so (registered last)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from blixard.ui.web import error_page, router


@router.get("/{rest:path}")
async def not_found(request: Request, rest: str) -> Response:
    del rest
    return error_page(request, 404, "Not found", "There is no page at this address.")
