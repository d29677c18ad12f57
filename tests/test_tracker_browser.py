"""The tracker in a real browser: headless Chromium on a page of another origin."""

import asyncio
import shutil
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from playwright.async_api import async_playwright

from core.clickhouse import Warehouse
from tests.conftest import Running, free_port, wait_for

CHROME_UA = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site(tmp_path: Path) -> Iterator[str]:
    """A shop page served from its own origin (another port), like the real storefront."""
    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), partial(QuietHandler, directory=tmp_path))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    httpd.shutdown()
    httpd.server_close()


def page(service: str, user: str | None) -> str:
    snippet = f'window.lomash = {{q: [["identify", "{user}"]]}};' if user else ""
    return (
        f"<!doctype html><html><head><title>Lomash Wood</title><script>{snippet}</script>"
        f'<script src="{service}/v1/analytics/tracker.js"></script></head>'
        "<body><h1>Shaker oak kitchen</h1></body></html>"
    )


@pytest.mark.timeout(90)
async def test_tracker_sends_pageviews_custom_events_and_flushes_on_leaving(
    server: Running, warehouse: Warehouse, site: str, tmp_path: Path
) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: scripts/test installs it (apt-get install chromium)")
    user = str(uuid.uuid4())
    (tmp_path / "kitchens.html").write_text(page(server.base_url, user))
    (tmp_path / "bedrooms.html").write_text(page(server.base_url, None))
    (tmp_path / "away.html").write_text("<!doctype html><p>elsewhere</p>")

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--no-first-run",
            ],
        )
        context = await browser.new_context(user_agent=CHROME_UA)
        tab = await context.new_page()
        await tab.goto(f"{site}/kitchens.html")
        await tab.evaluate('lomash.track("PRODUCT_VIEW", {productId: "kit-shaker-oak"})')
        await tab.evaluate('history.pushState({}, "", "/kitchens/shaker-oak")')
        # Leaving the page: pagehide flushes the queue with sendBeacon.
        await tab.goto(f"{site}/bedrooms.html")
        await tab.evaluate('lomash.track("BROCHURE_REQUEST", {range: "bedrooms"})')
        await tab.goto(f"{site}/away.html")
        await context.close()
        await browser.close()

    async def arrived() -> bool:
        await server.drain()
        return bool(await warehouse.scalar("SELECT count() FROM tracking_events") >= 5)

    await wait_for(arrived, within=20)
    await asyncio.sleep(0.3)
    await server.drain()
    rows = await warehouse.dicts("SELECT * FROM tracking_events ORDER BY session_seq")
    assert [(r["event_type"], r["path"]) for r in rows] == [
        ("PAGEVIEW", "/kitchens.html"),
        ("PRODUCT_VIEW", "/kitchens.html"),
        ("PAGEVIEW", "/kitchens/shaker-oak"),
        ("PAGEVIEW", "/bedrooms.html"),
        ("BROCHURE_REQUEST", "/bedrooms.html"),
    ]
    assert [r["session_seq"] for r in rows] == [1, 2, 3, 4, 5]
    assert len({r["session_id"] for r in rows}) == 1  # one tab, one session
    assert [str(r["user_id"]) if r["user_id"] else None for r in rows] == [user] * 3 + [None] * 2
    assert rows[1]["properties"] == '{"productId":"kit-shaker-oak"}'
    assert rows[2]["referrer"] == f"{site}/kitchens.html"  # SPA navigation from the first page
    assert {r["browser"] for r in rows} == {"Chrome"}
    assert {r["device_type"] for r in rows} == {"desktop"}
    assert {r["is_bot"] for r in rows} == {False}
    assert {r["landing_page"] for r in rows} == {f"{site}/kitchens.html"}
    assert all(r["client_timestamp"] is not None for r in rows)
    assert len({r["event_id"] for r in rows}) == 5
