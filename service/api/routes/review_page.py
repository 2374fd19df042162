"""The reviewer web page: `GET /review` and its assets, served from the package's static folder.

The page itself needs no key: it asks the reviewer for their name and API key and sends the key
with every API call it makes. It is plain HTML + CSS + JS, no build step and nothing from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

# The only files served, by name: nothing else in (or outside) the folder is reachable.
ASSETS = {"review.css": "text/css", "review.js": "text/javascript"}

HEADERS = {
    "Cache-Control": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
PAGE_HEADERS = {
    **HEADERS,
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
}

router = APIRouter(tags=["review page"], include_in_schema=False)


@router.get("/review", response_class=FileResponse)
def review_page() -> FileResponse:
    """The labelling page reviewers keep open all day."""
    return FileResponse(STATIC_DIR / "review.html", media_type="text/html", headers=PAGE_HEADERS)


@router.get("/review/assets/{name}", response_class=FileResponse)
def review_asset(name: str) -> FileResponse:
    """The page's stylesheet and script."""
    media_type = ASSETS.get(name)
    if media_type is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no asset named {name!r}")
    return FileResponse(STATIC_DIR / name, media_type=media_type, headers=HEADERS)
