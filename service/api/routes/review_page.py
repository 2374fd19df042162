"""The reviewer web page: `GET /review` and its assets, served from the package's static folder.

The page itself needs no key: it asks the reviewer for their name and API key and sends the key
with every API call it makes. It is plain HTML + CSS + JS, no build step and nothing from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, status
from fastapi.responses import FileResponse

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"

# Only these kinds of file are served, and only from the folder itself (not the page, nothing
# outside it). The script is split into ES modules; browsers refuse a module that does not come
# with a JavaScript MIME type, so `.js` must be `text/javascript`.
MEDIA_TYPES = {".css": "text/css", ".js": "text/javascript"}

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


# HEAD too: an uptime check asks the page with HEAD, and a route of GET alone answered 405.
@router.api_route("/review", methods=["GET", "HEAD"], response_class=FileResponse)
def review_page() -> FileResponse:
    """The labelling page reviewers keep open all day."""
    return FileResponse(STATIC_DIR / "review.html", media_type="text/html", headers=PAGE_HEADERS)


def asset_path(name: str) -> Path | None:
    """The stylesheet or script module called `name` in the static folder, if there is one."""
    try:
        path = (STATIC_DIR / name).resolve()
        found = path.is_file()
    except (OSError, ValueError):  # a NUL in the name, or a name too long for the file system
        return None
    if path.parent != STATIC_DIR.resolve() or path.suffix not in MEDIA_TYPES or not found:
        return None
    return path


@router.api_route("/review/assets/{name}", methods=["GET", "HEAD"], response_class=FileResponse)
def review_asset(name: str) -> FileResponse:
    """The page's stylesheet and its script modules."""
    path = asset_path(name)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no asset named {name!r}")
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)
