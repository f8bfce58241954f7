"""`GET /ui`: the "why this answer" page and its component, static files from the package (no data in them)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, FastAPI
from fastapi.responses import RedirectResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[2] / "ui" / "static"

router = APIRouter()


@router.get("/ui", include_in_schema=False)
async def ui() -> RedirectResponse:
    """To ``/ui/``, so the page's relative links (``app.js``, ``../generate``) resolve under any path prefix."""
    return RedirectResponse("ui/", status_code=307)


def install_ui(app: FastAPI) -> None:
    """The route above, and the files under ``/ui/`` (``index.html`` for ``/ui/``)."""
    app.include_router(router)
    app.mount("/ui", StaticFiles(directory=STATIC, html=True), name="ui")
