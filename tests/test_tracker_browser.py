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
from urllib.parse import urlsplit

import msgspec
import pytest
from playwright.async_api import async_playwright

from core.clickhouse import Warehouse
from core.metrics import EVENTS_RECEIVED
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


def page(service: str, user: str | None, *, calls: str = "", attributes: str = "") -> str:
    """A shop page loading the tracker; `calls` are more queued calls (`["optOut"]`),
    `attributes` more attributes of its script tag (`data-respect-dnt`)."""
    queued = [f'["identify", "{user}"]'] if user else []
    queued += [calls] if calls else []
    snippet = f"window.lomash = {{q: [{', '.join(queued)}]}};" if queued else ""
    return (
        f"<!doctype html><html><head><title>Lomash Wood</title><script>{snippet}</script>"
        f'<script src="{service}/v1/analytics/tracker.js" {attributes}></script></head>'
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


def track_requests(context: Any) -> list[Any]:
    """Every request the context's pages make to the beacon endpoint (fetch or sendBeacon),
    in the order made: filled as they happen."""
    made: list[Any] = []

    def seen(request: Any) -> None:
        if urlsplit(request.url).path == "/v1/analytics/track":
            made.append(request)

    context.on("request", seen)
    return made


def sent(requests: list[Any]) -> list[str]:
    """The events those requests carried, in order, each by `name`."""
    names: list[str] = []
    for request in requests:
        body = request.post_data_buffer
        assert body is not None, f"a beacon without a body: {request.url}"
        decoded = msgspec.json.decode(body)
        names += [name(e["eventType"], e["properties"]) for e in decoded]
    return names


def name(event_type: str, properties: dict[str, Any]) -> str:
    """PAGEVIEW, or a CLICK by the step the test gave it (event types are a fixed set)."""
    return f"CLICK {properties['step']}" if event_type == "CLICK" else event_type


def received() -> float:
    """Events that reached the beacon endpoint in this process (the server runs in it)."""
    return float(EVENTS_RECEIVED._value.get())


async def stored(
    server: Running, warehouse: Warehouse, at_least: int, within: float = 20
) -> list[dict[str, Any]]:
    """The stored tracking events once there are at least `at_least`, by client time."""

    async def arrived() -> bool:
        await server.drain()
        return bool(await warehouse.scalar("SELECT count() FROM tracking_events") >= at_least)

    await wait_for(arrived, within=within)
    rows: list[dict[str, Any]] = await warehouse.dicts(
        "SELECT event_type, properties, url, user_id, session_id FROM tracking_events"
        " ORDER BY client_timestamp"
    )
    for row in rows:
        row["name"] = name(row["event_type"], msgspec.json.decode(row["properties"]))
    return rows


def require_chromium() -> str:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: scripts/test installs it (apt-get install chromium)")
    return chromium


@pytest.mark.timeout(90)
async def test_opting_out_sends_nothing_across_a_reload_until_opting_in(
    server: Running, warehouse: Warehouse, site: str, tmp_path: Path
) -> None:
    """optOut() drops what waits in the queue and every event after it, the choice survives a
    reload (localStorage), and optIn() sends again from the next event: what is stored is the
    pageview before the opt-out and the events after the opt-in, nothing in between. The
    events after the opt-in are a new session, anonymous (the opt-out forgot both)."""
    chromium = require_chromium()
    user = str(uuid.uuid4())
    (tmp_path / "kitchens.html").write_text(page(server.base_url, user))
    before = received()
    async with async_playwright() as pw:
        browser = await launch(pw, chromium)
        context = await browser.new_context(user_agent=CHROME_UA)
        requests = track_requests(context)
        tab = await context.new_page()
        await tab.goto(f"{site}/kitchens.html")
        await tab.evaluate("lomash.flush()")
        first = await stored(server, warehouse, 1)
        assert [r["name"] for r in first] == ["PAGEVIEW"]

        # An event waiting for its batch when the visitor opts out is never sent.
        await tab.evaluate('lomash.track("CLICK", {step: "QUEUED_AT_OPT_OUT"}); lomash.optOut()')
        assert await tab.evaluate("lomash.isOptedOut()") is True
        assert await tab.evaluate('localStorage.getItem("lomash.optOut")') == "1"
        await tab.evaluate('lomash.track("CLICK", {step: "WHILE_OUT"})')
        await tab.evaluate('lomash.identify("someone-while-out")')
        await tab.evaluate('history.pushState({}, "", "/kitchens.html?view=while-out")')
        await tab.evaluate("lomash.flush()")
        await tab.reload()  # pagehide flushes nothing; the reloaded page sends no pageview
        assert await tab.evaluate("lomash.isOptedOut()") is True
        await tab.evaluate('lomash.track("CLICK", {step: "WHILE_OUT_AFTER_RELOAD"})')
        await tab.evaluate("lomash.flush()")
        await tab.evaluate('history.pushState({}, "", "/kitchens.html?view=still-out")')

        await tab.evaluate("lomash.optIn()")
        assert await tab.evaluate("lomash.isOptedOut()") is False
        assert await tab.evaluate('localStorage.getItem("lomash.optOut")') is None
        await tab.evaluate(
            'lomash.track("CLICK", {step: "AFTER_OPT_IN"});'
            'history.pushState({}, "", "/kitchens.html?view=after");'
            "lomash.flush()"
        )
        await stored(server, warehouse, 3)
        await context.close()  # pagehide: the queue is empty, nothing more goes
        await browser.close()

    await server.drain()
    rows = await stored(server, warehouse, 3)
    assert [(r["name"], urlsplit(r["url"]).query) for r in rows] == [
        ("PAGEVIEW", ""),
        ("CLICK AFTER_OPT_IN", "view=still-out"),
        ("PAGEVIEW", "view=after"),
    ]
    assert str(rows[0]["user_id"]) == user
    assert [r["user_id"] for r in rows[1:]] == [None, None]
    assert rows[1]["session_id"] == rows[2]["session_id"] != rows[0]["session_id"]
    # The browser made two requests, the first flush and the one after opting in, and the
    # server received those three events and no other.
    assert [sent([r]) for r in requests] == [["PAGEVIEW"], ["CLICK AFTER_OPT_IN", "PAGEVIEW"]]
    assert received() - before == 3


@pytest.mark.timeout(90)
async def test_an_opt_out_in_another_tab_holds_at_once(
    server: Running, warehouse: Warehouse, site: str, tmp_path: Path
) -> None:
    """Two tabs of the site: the second opts out from the page's queued calls (before the
    tracker loads: not even its pageview goes), the first follows at once (the storage event);
    opting in in the second lets the first send again."""
    chromium = require_chromium()
    (tmp_path / "first.html").write_text(page(server.base_url, None))
    (tmp_path / "second.html").write_text(page(server.base_url, None, calls='["optOut"]'))
    before = received()
    async with async_playwright() as pw:
        browser = await launch(pw, chromium)
        context = await browser.new_context(user_agent=CHROME_UA)
        requests = track_requests(context)
        first = await context.new_page()
        await first.goto(f"{site}/first.html")
        await first.evaluate("lomash.flush()")
        await stored(server, warehouse, 1)

        second = await context.new_page()
        await second.goto(f"{site}/second.html")
        assert await second.evaluate("lomash.isOptedOut()") is True
        await first.wait_for_function("lomash.isOptedOut()", timeout=10_000)
        await first.evaluate('lomash.track("CLICK", {step: "WHILE_OUT"})')
        await first.evaluate("lomash.flush()")
        await second.evaluate('lomash.track("CLICK", {step: "WHILE_OUT"})')
        await second.evaluate("lomash.flush()")

        await second.evaluate("lomash.optIn()")
        await first.wait_for_function("!lomash.isOptedOut()", timeout=10_000)
        await first.evaluate('lomash.track("CLICK", {step: "AFTER_OPT_IN"})')
        await first.evaluate("lomash.flush()")
        await stored(server, warehouse, 2)
        await context.close()
        await browser.close()

    rows = await stored(server, warehouse, 2)
    assert [r["name"] for r in rows] == ["PAGEVIEW", "CLICK AFTER_OPT_IN"]
    assert all(urlsplit(r["url"]).path == "/first.html" for r in rows)
    assert sent(requests) == ["PAGEVIEW", "CLICK AFTER_OPT_IN"]
    assert received() - before == 2


SIGNALS = {
    "navigator.doNotTrack": 'Object.defineProperty(navigator, "doNotTrack", {get: () => "1"})',
    "window.doNotTrack": 'Object.defineProperty(window, "doNotTrack", {get: () => "1"})',
    "navigator.msDoNotTrack": 'Object.defineProperty(navigator, "msDoNotTrack", {get: () => "1"})',
    "navigator.globalPrivacyControl": (
        'Object.defineProperty(navigator, "globalPrivacyControl", {get: () => true})'
    ),
}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("signal", list(SIGNALS))
async def test_do_not_track_and_gpc_are_honoured_only_with_data_respect_dnt(
    server: Running, warehouse: Warehouse, site: str, tmp_path: Path, signal: str
) -> None:
    """A browser saying Do Not Track (or Global Privacy Control): the page whose script tag
    has data-respect-dnt sends nothing, even after optIn(), and writes no choice; the page
    without it sends as usual. The DNT and Sec-GPC request headers the browser sends change
    nothing on the server."""
    chromium = require_chromium()
    (tmp_path / "respect.html").write_text(
        page(server.base_url, None, attributes="data-respect-dnt")
    )
    (tmp_path / "plain.html").write_text(page(server.base_url, None))
    before = received()
    async with async_playwright() as pw:
        browser = await launch(pw, chromium)
        context = await browser.new_context(
            user_agent=CHROME_UA, extra_http_headers={"DNT": "1", "Sec-GPC": "1"}
        )
        await context.add_init_script(SIGNALS[signal])
        requests = track_requests(context)
        tab = await context.new_page()
        await tab.goto(f"{site}/respect.html")
        assert await tab.evaluate("lomash.isOptedOut()") is True
        await tab.evaluate('lomash.track("CLICK", {step: "WITH_SIGNAL"})')
        await tab.evaluate('history.pushState({}, "", "/respect.html?view=next")')
        await tab.evaluate("lomash.flush()")
        await tab.evaluate("lomash.optIn()")  # the browser's signal is not the page's to lift
        assert await tab.evaluate("lomash.isOptedOut()") is True
        await tab.evaluate('lomash.track("CLICK", {step: "WITH_SIGNAL_AFTER_OPT_IN"})')
        await tab.evaluate("lomash.flush()")
        assert await tab.evaluate('localStorage.getItem("lomash.optOut")') is None

        await tab.goto(f"{site}/plain.html")  # pagehide on respect.html: nothing to send
        assert await tab.evaluate("lomash.isOptedOut()") is False
        await tab.evaluate('lomash.track("CLICK", {step: "WITHOUT_ATTRIBUTE"})')
        await tab.evaluate("lomash.flush()")
        await stored(server, warehouse, 2)
        await context.close()
        await browser.close()

    rows = await stored(server, warehouse, 2)
    assert [(r["name"], urlsplit(r["url"]).path) for r in rows] == [
        ("PAGEVIEW", "/plain.html"),
        ("CLICK WITHOUT_ATTRIBUTE", "/plain.html"),
    ]
    assert sent(requests) == ["PAGEVIEW", "CLICK WITHOUT_ATTRIBUTE"]
    assert {r.headers.get("dnt") for r in requests} == {"1"}  # the header went, and was stored
    assert received() - before == 2


@pytest.mark.timeout(90)
async def test_an_opt_out_holds_for_the_page_when_local_storage_throws(
    server: Running, warehouse: Warehouse, site: str, tmp_path: Path
) -> None:
    """localStorage throwing on every access (Safari's private mode, storage blocked): the
    opt-out holds in memory for the page's life, and is gone with it (the next page sends its
    pageview again)."""
    chromium = require_chromium()
    user = str(uuid.uuid4())
    (tmp_path / "private.html").write_text(page(server.base_url, user))
    before = received()
    async with async_playwright() as pw:
        browser = await launch(pw, chromium)
        context = await browser.new_context(user_agent=CHROME_UA)
        await context.add_init_script(
            'Object.defineProperty(window, "localStorage", {configurable: true, get() {'
            ' throw new DOMException("The operation is insecure.", "SecurityError"); }})'
        )
        requests = track_requests(context)
        tab = await context.new_page()
        await tab.goto(f"{site}/private.html")
        thrown = await tab.evaluate(
            "(() => { try { localStorage; } catch (e) { return e.name; } })()"
        )
        assert thrown == "SecurityError"
        await tab.evaluate("lomash.flush()")
        await stored(server, warehouse, 1)
        await tab.evaluate('lomash.track("CLICK", {step: "QUEUED_AT_OPT_OUT"}); lomash.optOut()')
        assert await tab.evaluate("lomash.isOptedOut()") is True
        await tab.evaluate('lomash.track("CLICK", {step: "WHILE_OUT"})')
        await tab.evaluate('history.pushState({}, "", "/private.html?view=while-out")')
        await tab.evaluate("lomash.flush()")
        await tab.goto(f"{site}/private.html")  # a new page: the choice was this page's only
        assert await tab.evaluate("lomash.isOptedOut()") is False
        # Opting out drops the queue itself: opting straight back in does not bring it back.
        await tab.evaluate(
            'lomash.flush(); lomash.track("CLICK", {step: "QUEUED_AT_OPT_OUT"});'
            'lomash.optOut(); lomash.optIn(); lomash.track("CLICK", {step: "AFTER_OPT_IN"});'
            "lomash.flush()"
        )
        await stored(server, warehouse, 3)
        await context.close()
        await browser.close()

    rows = await stored(server, warehouse, 3)
    assert [(r["name"], r["url"]) for r in rows] == [
        ("PAGEVIEW", f"{site}/private.html"),
        ("PAGEVIEW", f"{site}/private.html"),
        ("CLICK AFTER_OPT_IN", f"{site}/private.html"),
    ]
    # Each opt-out forgot the tab's session (each row is a session of its own), and the user
    # (the next page identified it again, the event after the second opt-out has none).
    assert len({r["session_id"] for r in rows}) == 3
    assert [str(r["user_id"]) if r["user_id"] else None for r in rows] == [user, user, None]
    assert sent(requests) == ["PAGEVIEW", "PAGEVIEW", "CLICK AFTER_OPT_IN"]
    assert received() - before == 3


# Counts the tracker's fetches answered, once the tracker's own handler of each has run (it is
# registered after this one on the same promise, so it runs first, then this microtask).
COUNT_ANSWERS = """
window.__answered = 0;
const originalFetch = window.fetch;
window.fetch = function (...args) {
  const answer = originalFetch.apply(this, args);
  const count = () => Promise.resolve().then(() => { window.__answered += 1; });
  answer.then(count, count);
  return answer;
};
"""


@pytest.mark.timeout(90)
async def test_a_batch_out_when_opting_out_is_not_retried(
    server: Running, warehouse: Warehouse, site: str, tmp_path: Path
) -> None:
    """A batch already on its way when the visitor opts out, then refused (503: the tracker
    would try again): it is not retried, neither while opted out nor after opting in, when
    only the new events go."""
    chromium = require_chromium()
    (tmp_path / "retry.html").write_text(page(server.base_url, None))
    before = received()
    async with async_playwright() as pw:
        browser = await launch(pw, chromium)
        context = await browser.new_context(user_agent=CHROME_UA)
        await context.add_init_script(COUNT_ANSWERS)
        requests = track_requests(context)
        held: asyncio.Queue[Any] = asyncio.Queue()

        async def hold_the_first(route: Any) -> None:
            if len(requests) == 1:
                await held.put(route)  # the test answers it
            else:
                await route.continue_()

        await context.route(f"{server.base_url}/v1/analytics/track", hold_the_first)
        tab = await context.new_page()
        await tab.goto(f"{site}/retry.html")
        await tab.evaluate("lomash.flush()")
        first = await asyncio.wait_for(held.get(), timeout=10)
        await tab.evaluate("lomash.optOut()")
        await first.fulfill(status=503, headers={"Retry-After": "1"}, body="")
        await tab.wait_for_function("window.__answered === 1", timeout=10_000)
        await tab.evaluate(
            'lomash.optIn(); lomash.track("CLICK", {step: "AFTER_OPT_IN"}); lomash.flush()'
        )
        await tab.wait_for_function("window.__answered === 2", timeout=10_000)
        await stored(server, warehouse, 1)
        await context.close()
        await browser.close()

    rows = await stored(server, warehouse, 1)
    assert [r["name"] for r in rows] == ["CLICK AFTER_OPT_IN"]
    assert [sent([r]) for r in requests] == [["PAGEVIEW"], ["CLICK AFTER_OPT_IN"]]
    assert received() - before == 1  # the refused batch never reached the server
