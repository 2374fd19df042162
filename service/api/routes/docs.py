"""`GET /docs`: the OpenAPI docs (Swagger UI), served from the package, not from a CDN.

FastAPI's own /docs loads Swagger UI from cdn.jsdelivr.net (any 5.x release, no integrity
check) onto this origin, where the reviewer page keeps its key in localStorage and admins type
theirs into "Authorize": a bad file on the CDN could read both. It also leaves the docs blank
on a network without internet. Here the page loads a copy of Swagger UI shipped in
`service/static/docs/`, under a Content-Security-Policy that allows nothing else.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi import APIRouter, HTTPException, Request, status
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from service.api.routes.review_page import HEADERS, STATIC_DIR

SWAGGER_UI_VERSION = "5.35.0"  # the npm package swagger-ui-dist the files come from
DOCS_DIR = STATIC_DIR / "docs"
ASSETS = {"swagger-ui-bundle.js": "text/javascript", "swagger-ui.css": "text/css"}
INLINE_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)

router = APIRouter(tags=["docs"], include_in_schema=False)


def _policy(html: str) -> str:
    """A CSP for the page: its own files, the one inline script FastAPI writes (by hash), the
    inline styles Swagger UI sets, and requests to this origin only."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"
        for script in INLINE_SCRIPT.findall(html)
    )
    return (
        f"default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
        "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'self'; "
        "frame-ancestors 'none'"
    )


# HEAD too, as the review page: an uptime or link check asks with HEAD, and GET alone is 405.
@router.api_route("/docs", methods=["GET", "HEAD"], response_class=HTMLResponse)
def swagger_ui(request: Request) -> HTMLResponse:
    """Swagger UI on this API's OpenAPI schema."""
    page = get_swagger_ui_html(
        openapi_url=request.app.openapi_url,
        title=f"{request.app.title} API",
        swagger_js_url="/docs/assets/swagger-ui-bundle.js",
        swagger_css_url="/docs/assets/swagger-ui.css",
        swagger_favicon_url="data:,",  # none: FastAPI's default is fetched from its website
    )
    html = bytes(page.body).decode()
    return HTMLResponse(html, headers={**HEADERS, "Content-Security-Policy": _policy(html)})


@router.api_route("/docs/assets/{name}", methods=["GET", "HEAD"], response_class=FileResponse)
def swagger_ui_asset(name: str) -> FileResponse:
    """Swagger UI's script and stylesheet (only those two files)."""
    if name not in ASSETS:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no docs asset named {name!r}")
    return FileResponse(DOCS_DIR / name, media_type=ASSETS[name], headers=HEADERS)
