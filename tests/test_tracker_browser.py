"""The tracker in a real browser: headless Chromium on a page of another origin."""

import asyncio
import shutil
import threading
import uuid
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import msgspec
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


async def launch(pw: Any, chromium: str) -> Any:
    return await pw.chromium.launch(
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
        browser = await launch(pw, chromium)
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


@pytest.mark.timeout(90)
async def test_strings_cut_mid_emoji_never_sink_a_batch(
    server: Running, warehouse: Warehouse, site: str, tmp_path: Path
) -> None:
    """A page's string cut in the middle of an emoji, and a URL longer than the server takes:
    the tracker sends well-formed text and cuts what is too long (on code points), so the
    events are stored, not refused.
    A batch that another client stringified with the lone half in it (`"\\ud83d"`) is stored
    whole too, the half replaced by U+FFFD."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: scripts/test installs it (apt-get install chromium)")
    (tmp_path / "long.html").write_text(page(server.base_url, None))
    long_query = "q=" + "a" * 4093 + "\U0001f600" + "b" * 100  # percent-encoded by the browser
    async with async_playwright() as pw:
        browser = await launch(pw, chromium)
        tab = await (await browser.new_context(user_agent=CHROME_UA)).new_page()
        await tab.goto(f"{site}/long.html?{long_query}")
        for n in range(4):
            await tab.evaluate(f'lomash.track("CLICK", {{n: {n}, note: "ok"}})')
        await tab.evaluate('lomash.track("CLICK", {n: 4, note: "cut \\ud83d".slice(0, 5)})')
        await tab.evaluate("lomash.flush()")
        # Another client's batch, stringified by the browser with a lone half in it.
        answer = await tab.evaluate(
            """async ([endpoint, session]) => {
              const events = [0, 1, 2, 3, 4].map((n) => ({
                eventType: "CLICK", sessionId: session, metadata: {url: "https://x.test/" + n},
                properties: {n: n, note: n === 2 ? "\\ud83d".slice(0, 1) + "!" : "fine"}}));
              const r = await fetch(endpoint, {method: "POST", body: JSON.stringify(events),
                headers: {"Content-Type": "text/plain"}});
              return [r.status, await r.json()];
            }""",
            [f"{server.base_url}/v1/analytics/track", str(uuid.uuid4())],
        )
        await browser.close()
    status, body = answer
    assert status == 202 and body["accepted"] == 5 and body["rejected"] == []

    async def arrived() -> bool:
        await server.drain()
        return bool(await warehouse.scalar("SELECT count() FROM tracking_events") >= 11)

    await wait_for(arrived, within=20)
    rows = await warehouse.dicts("SELECT url, properties FROM tracking_events")
    assert len(rows) == 11  # the pageview, the tracker's 5, the other client's 5
    urls = [r["url"] for r in rows if "long.html" in r["url"]]
    assert urls and all(len(u) <= 4096 and "\ufffd" not in u for u in urls)
    notes = sorted(msgspec.json.decode(r["properties"]).get("note", "") for r in rows)
    assert "cut \ufffd" in notes and "\ufffd!" in notes
    assert all("\ud83d" not in note for note in notes)


@pytest.mark.timeout(90)
async def test_a_session_ends_after_thirty_idle_minutes(
    server: Running, warehouse: Warehouse, site: str, tmp_path: Path
) -> None:
    """The tracker keeps its sessionId while events come less than 30 minutes apart and starts
    a new one after 30 idle minutes: the session the server keeps state for (45 minutes) and
    the one the stats count are the same. The page's clock is Playwright's, moved forward."""
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: scripts/test installs it (apt-get install chromium)")
    (tmp_path / "idle.html").write_text(page(server.base_url, None))
    async with async_playwright() as pw:
        browser = await launch(pw, chromium)
        tab = await (await browser.new_context(user_agent=CHROME_UA)).new_page()
        await tab.clock.install()
        await tab.goto(f"{site}/idle.html")  # the pageview
        await tab.clock.fast_forward("29:00")
        await tab.evaluate('lomash.track("CLICK", {n: 1})')  # 29 minutes on: the same session
        await tab.clock.fast_forward("31:00")
        await tab.evaluate('history.pushState({}, "", "/later")')  # 31 idle minutes: a new one
        await tab.evaluate('lomash.track("CLICK", {n: 2})')
        await tab.evaluate("lomash.flush()")
        await asyncio.sleep(0.5)
        await browser.close()

    async def arrived() -> bool:
        await server.drain()
        return bool(await warehouse.scalar("SELECT count() FROM tracking_events") >= 4)

    await wait_for(arrived, within=20)
    rows = await warehouse.dicts(
        "SELECT session_id, session_seq, path, landing_page FROM tracking_events"
        " ORDER BY client_timestamp"
    )
    assert [r["path"] for r in rows] == ["/idle.html", "/idle.html", "/later", "/later"]
    first, second = rows[0]["session_id"], rows[2]["session_id"]
    assert first != second
    assert [r["session_id"] for r in rows] == [first, first, second, second]
    assert [r["session_seq"] for r in rows] == [1, 2, 1, 2]
    assert rows[2]["landing_page"] == f"{site}/later"
