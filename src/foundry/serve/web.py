"""The static pages shipped in the package (`foundry/serve/static/`: plain HTML, JS and CSS, no build step
and nothing loaded from the network): the chat page of `foundry serve` and the bake-off rating page."""

from __future__ import annotations

from pathlib import Path

STATIC_DIR = Path(__file__).resolve().parent / "static"


def mount_static(app) -> None:
    """Serve STATIC_DIR under /static on `app`, never cached stale (the pages are small)."""
    from fastapi.staticfiles import StaticFiles

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


def page(name: str):
    """One of the shipped HTML pages as a response."""
    from fastapi.responses import FileResponse

    return FileResponse(STATIC_DIR / name, media_type="text/html", headers={"Cache-Control": "no-cache"})
