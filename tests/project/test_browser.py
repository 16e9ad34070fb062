"""Swagger UI in a real browser: headless Chromium (Debian's package) driven by Playwright,
against a real uvicorn on PostgreSQL, on a closed network."""

import shutil
import tempfile
from pathlib import Path
from urllib.parse import urlparse

import httpx
import pytest

from app.core.settings import settings
from tests.helpers import PASSWORD
from tests.servers import serve

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
pytestmark = [
    pytest.mark.skipif(settings.is_sqlite, reason="runs with the PostgreSQL suite"),
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="needs Debian's chromium"),
]
# No background services: on a closed network they only make refused connections.
FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]  # fmt: skip


async def test_swagger_ui_logs_in_and_tries_users_me(tmp_path: Path) -> None:
    from playwright.async_api import async_playwright

    email = "browser@example.com"
    with serve(tmp_path, DATABASE_URL=settings.database_url) as base:
        r = httpx.post(
            f"{base}/api/auth/signup",
            json={"email": email, "password": PASSWORD, "full_name": "Browser"},
            timeout=30,
        )
        assert r.status_code == 201
        requested: list[str] = []
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS)
            page = await browser.new_page(viewport={"width": 1280, "height": 1600})
            page.on("request", lambda request: requested.append(request.url))

            await page.goto(f"{base}/docs")
            await page.wait_for_selector(".opblock-summary")
            assert await page.locator(".opblock").count() >= 25  # every operation rendered

            await page.click("button.authorize")
            assert await page.locator(".scopes input[type=checkbox]").count() == 3
            await page.fill("#oauth_username", email)
            await page.fill("#oauth_password", PASSWORD)
            await page.click(".auth-btn-wrapper button.authorize")
            await page.wait_for_selector("text=Logout")  # the dialog says it is authorized
            await page.click(".auth-btn-wrapper button.btn-done")

            operation = page.locator("#operations-users-users-read_me")  # {tag}-{operation id}
            await operation.locator(".opblock-summary").click()
            await operation.locator("button.try-out__btn").click()
            await operation.locator("button.execute").click()
            status = operation.locator(".live-responses-table tbody .response-col_status").first
            await status.wait_for()
            assert (await status.inner_text()).strip() == "200"
            body = await operation.locator(".live-responses-table .microlight").first.inner_text()
            assert email in body

            shot = Path(tempfile.mkdtemp(prefix="swagger-")) / "users-me.png"
            await status.scroll_into_view_if_needed()
            await page.screenshot(path=str(shot))
            print(f"\nscreenshot of the final page: {shot}")
            await browser.close()

    hosts = {urlparse(url).hostname for url in requested if url.startswith("http")}
    assert hosts == {"127.0.0.1"}, requested  # nothing left the machine: no CDN
