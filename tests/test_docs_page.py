"""`/docs`: Swagger UI from the package, in a real headless Chromium, with nothing loaded from
elsewhere (FastAPI's default pulls it from a CDN onto the reviewer page's origin)."""

from __future__ import annotations

import base64
import hashlib
import re

import httpx
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By

from service.api.routes.docs import ASSETS, DOCS_DIR, SWAGGER_UI_VERSION
from tests.conftest import LiveApp
from tests.review_page_driver import browser_errors, wait_until


def test_the_docs_page_and_its_assets_come_from_the_package(live_app: LiveApp) -> None:
    page = httpx.get(f"{live_app.url}/docs")
    assert page.status_code == 200
    links = re.findall(r'(?:src|href)="([^"]*)"', page.text)
    assert sorted(links) == [
        "/docs/assets/swagger-ui-bundle.js",
        "/docs/assets/swagger-ui.css",
        "data:,",
    ]
    policy = page.headers["content-security-policy"]
    assert "default-src 'self'" in policy and "https:" not in policy and "unsafe-eval" not in policy
    # The one inline script (FastAPI's SwaggerUIBundle call) runs because its hash is allowed.
    (inline,) = re.findall(r"<script>(.*?)</script>", page.text, re.S)
    digest = base64.b64encode(hashlib.sha256(inline.encode()).digest()).decode()
    assert f"'sha256-{digest}'" in policy

    for name, media_type in ASSETS.items():
        asset = httpx.get(f"{live_app.url}/docs/assets/{name}")
        assert asset.status_code == 200 and asset.headers["content-type"].startswith(media_type)
        assert asset.content == (DOCS_DIR / name).read_bytes()
    assert f"swagger-ui-dist@{SWAGGER_UI_VERSION}" in (DOCS_DIR / "README.md").read_text()
    for path in ("/docs/assets/LICENSE", "/docs/assets/..%2Freview.html", "/redoc"):
        assert httpx.get(f"{live_app.url}{path}").status_code == 404, path


def test_swagger_ui_renders_the_api_offline(live_app: LiveApp, browser: WebDriver) -> None:
    """Chromium runs with background networking off and no route to a CDN here: the page
    draws every operation from the packaged files alone, with no CSP violation."""
    browser.get(f"{live_app.url}/docs")
    wait_until(
        browser,
        lambda d: len(d.find_elements(By.CSS_SELECTOR, ".opblock")) >= 10,
        "Swagger UI to draw the operations",
    )
    paths = {e.text for e in browser.find_elements(By.CSS_SELECTOR, ".opblock-summary-path")}
    assert {"/predict", "/predict/batch", "/feedback"} <= {p.replace("\u200b", "") for p in paths}
    assert browser_errors(browser) == []
