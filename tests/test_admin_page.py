"""The built-in pages in a real browser (headless Chromium): `/admin` with seeded data, and the
API reference at `/docs`, both working with no request leaving the service's origin.

Screenshots of /admin at desktop and phone width are kept in `test-artifacts/`."""

import json
import shutil
from collections.abc import AsyncIterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import msgspec
import pytest
from playwright.async_api import Browser, Page, async_playwright

from api.stats import EVENT_TYPES
from cli.demo_traffic import default_start, generate, load
from core.clickhouse import Warehouse
from core.jobs import BY_COMMAND
from materialized.stats import escape_filter_value
from tests.conftest import Running, event
from tests.test_dashboard_api import bearer, token

ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
DESKTOP = {"width": 1280, "height": 900}
PHONE = {"width": 390, "height": 844}


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.fail("chromium is missing: scripts/test installs it (apt-get install chromium)")
    async with async_playwright() as pw:
        launched = await pw.chromium.launch(
            executable_path=chromium,
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        yield launched
        await launched.close()


class Watched:
    """A tab whose console errors, page errors and requests to other origins are recorded;
    requests to other origins are refused, as if the machine were offline."""

    def __init__(self, page: Page, origin: str) -> None:
        self.page = page
        self.problems: list[str] = []
        self.outside: list[str] = []
        page.on(
            "console",
            lambda m: (
                self.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None
            ),
        )
        page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))

        async def guard(route: Any) -> None:
            url = route.request.url
            if url.startswith(origin) or url.startswith(("data:", "blob:")):
                await route.continue_()
            else:
                self.outside.append(url)
                await route.abort()

        self._guard = guard

    async def start(self) -> None:
        await self.page.route("**/*", self._guard)


async def watched(browser: Browser, origin: str, viewport: dict[str, int]) -> Watched:
    page = await browser.new_page(viewport=viewport)  # type: ignore[arg-type]
    tab = Watched(page, origin)
    await tab.start()
    return tab


async def loaded(page: Page) -> None:
    # A selector, not a script: the page's CSP forbids evaluating strings.
    await page.wait_for_selector("body[data-loading=false]", state="attached", timeout=30_000)


async def sign_in(page: Page) -> None:
    await page.fill("#token", token())
    await page.click("#sign-in button[type=submit]")
    await loaded(page)


def seven_days() -> dict[str, str]:
    today = datetime.now(ZoneInfo("Europe/London")).date()
    return {
        "from": (today - timedelta(days=6)).isoformat(),
        "to": (today + timedelta(days=1)).isoformat(),
    }


@pytest.mark.timeout(120)
async def test_the_admin_page_shows_the_apis_numbers_and_filters_by_a_click(
    server: Running, warehouse: Warehouse, browser: Browser
) -> None:
    await load(warehouse, generate(default_start(days=10), days=10, sessions_per_day=80, seed=5))
    admin = bearer(token())
    # Beacons are public: a made-up page path and campaign must show as text, never run.
    hostile = "/<img src=x onerror=\"document.title='pwned'\">"
    url = f"https://www.lomashwood.co.uk{hostile}?utm_campaign=<script>document.title='x'</script>"
    for _ in range(3):  # 300 visitors: at the top of the page table
        beacons = [event() for _ in range(100)]
        for beacon in beacons:
            beacon["metadata"]["url"] = url
        assert (await server.http.post("/v1/analytics/track", json=beacons)).status_code == 202
    # A path that reads like a second filter: clicked, it must filter on itself alone.
    trick = "/kitchens;country:ZZ"
    for _ in range(3):  # 150 visitors
        beacons = [event() for _ in range(50)]
        for beacon in beacons:
            beacon["metadata"]["url"] = f"https://www.lomashwood.co.uk{trick}"
        assert (await server.http.post("/v1/analytics/track", json=beacons)).status_code == 202
    await server.drain()

    async def overview(**extra: str) -> dict[str, Any]:
        resp = await server.http.get(
            "/v1/analytics/stats/overview", params={**seven_days(), **extra}, headers=admin
        )
        assert resp.status_code == 200, resp.text
        body: dict[str, Any] = resp.json()
        return body

    tab = await watched(browser, server.base_url, DESKTOP)
    page = tab.page
    resp = await page.goto(f"{server.base_url}/admin")
    assert resp is not None and resp.status == 200
    assert "script-src 'self'" in resp.headers["content-security-policy"]
    await sign_in(page)

    expected = await overview()
    assert expected["pageviews"] > 100
    shown = await page.inner_text("#metric-pageviews .value")
    assert shown == f"{expected['pageviews']:,}"
    assert await page.inner_text("#metric-visitors .value") == f"{expected['visitors']:,}"
    assert await page.inner_text("#metric-sessions .value") == f"{expected['sessions']:,}"
    assert await page.locator("#chart canvas").count() >= 1
    assert await page.locator("#breakdown-page tbody tr").count() >= 3
    assert await page.locator("#funnel-booking .step").count() == 3
    assert await page.locator("#funnel-checkout .step").count() == 4
    assert "In range" in await page.inner_text("#widget-bookings")
    dashboard = (
        await server.http.get("/v1/analytics/dashboard", params=seven_days(), headers=admin)
    ).json()["widgets"]
    assert dashboard["productPageViews"] > 0
    content = await page.inner_text("#widget-content")
    assert f"Product page views\n{dashboard['productPageViews']:,}" in content, content
    platform = await page.inner_text("#widget-domain-events")
    for event_type, count in dashboard["domainEventsByType"].items():
        assert f"{event_type}\n{count:,}" in platform, platform
    # The ingest ledger: the whole range's row adds up as the API's hours do.
    ledger = (
        await server.http.get("/v1/analytics/ingest", params=seven_days(), headers=admin)
    ).json()
    accepted = sum(h["accepted"] for h in ledger["hours"])
    stored = sum(h["stored"] for h in ledger["hours"])
    assert accepted == stored == 450, ledger
    whole = await page.locator("#ingest-hours tbody tr").first.inner_text()
    assert whole == f"Whole range\t{accepted:,}\t{stored:,}\t0\t0\t0"
    assert await page.locator("#ingest-hours tbody tr").count() == 1 + len(ledger["hours"])
    assert "202 to queryable: p50 " in await page.inner_text("#ingest-lag")
    assert hostile in await page.inner_text("#breakdown-page")
    assert "<script>" in await page.inner_text("#breakdown-utm_campaign")
    assert await page.title() == "Lomash Wood analytics"
    assert await page.locator("#breakdowns img, #breakdowns script").count() == 0
    # The token stays in this tab's sessionStorage, not in localStorage or a cookie.
    stored = await page.evaluate("Object.keys(sessionStorage)")
    assert stored == ["lomash.analytics.adminToken"]
    assert await page.evaluate("localStorage.length") == 0
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "admin-desktop.png"), full_page=True)

    # A value holding `;` and `:` round-trips: the page's numbers, one chip, nothing else.
    await page.click(f'#breakdown-page a[data-value="{trick}"]')
    await loaded(page)
    tricked = await overview(filter=f"page:{escape_filter_value(trick)}")
    assert tricked["pageviews"] == 150
    assert await page.inner_text("#metric-pageviews .value") == f"{tricked['pageviews']:,}"
    assert await page.inner_text("#filters") == f"page: {trick} \u00d7"
    await page.click("#filters button")
    await loaded(page)

    # Event properties: the keys of one event type, a key's values, and a value as a filter.
    options = await page.locator("#prop-event-type option").evaluate_all(
        "options => options.map(o => o.value)"
    )
    assert options == ["", *EVENT_TYPES]
    await page.select_option("#prop-event-type", "FILTER_APPLY")
    await loaded(page)
    typed = {**seven_days(), "eventType": "FILTER_APPLY"}
    keys = (
        await server.http.get("/v1/analytics/stats/properties", params=typed, headers=admin)
    ).json()["keys"]
    assert {k["key"] for k in keys} == {"filter", "facet"}
    shown_keys = await page.locator("#prop-key option").all_inner_texts()
    assert shown_keys == [f"{k['key']} ({k['events']:,} events)" for k in keys]
    await page.select_option("#prop-key", "filter")
    await loaded(page)
    values = (
        await server.http.get(
            "/v1/analytics/stats/breakdown",
            params={**typed, "dimension": "prop:filter", "limit": "20"},
            headers=admin,
        )
    ).json()["rows"]
    assert {row["value"] for row in values} == {"oak", "white"}
    shown_values = await page.locator("#prop-values tbody tr").all_inner_texts()
    assert shown_values == [
        f"{row['value']}\t{row['visitors']:,}\t{row['events']:,}" for row in values
    ]
    await page.screenshot(path=str(ARTIFACTS / "admin-properties.png"), full_page=True)
    await page.click('#prop-values a[data-value="oak"]')
    await loaded(page)
    oak = await overview(filter="prop:filter:oak")
    assert 0 < oak["visitors"] < expected["visitors"]
    assert await page.inner_text("#metric-visitors .value") == f"{oak['visitors']:,}"
    assert await page.inner_text("#filters") == "prop:filter: oak \u00d7"
    await page.click("#filters button")
    await page.select_option("#prop-event-type", "")
    await loaded(page)

    # Clicking a country filters every number by it.
    await page.click('#breakdown-country a[data-value="SE"]')
    await loaded(page)
    sweden = await overview(filter="country:SE")
    assert 0 < sweden["pageviews"] < expected["pageviews"]
    assert await page.inner_text("#metric-pageviews .value") == f"{sweden['pageviews']:,}"
    assert await page.inner_text("#metric-visitors .value") == f"{sweden['visitors']:,}"
    assert await page.inner_text("#filters") == "country: SE \u00d7"
    countries = await page.locator("#breakdown-country tbody tr").all_inner_texts()
    assert len(countries) == 1 and countries[0].startswith("SE")

    # An export of the range, and its link when ready.
    await page.click("#export")
    link = page.locator("#export-link")
    await link.wait_for(timeout=30_000)
    assert "/v1/analytics/downloads/" in (await link.get_attribute("href") or "")

    # Phone width: the same page, one column.
    await page.set_viewport_size(PHONE)  # type: ignore[arg-type]
    await page.click("#filters button")
    await loaded(page)
    assert await page.inner_text("#metric-pageviews .value") == f"{expected['pageviews']:,}"
    width = await page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], "no sideways scrolling at phone width"
    await page.screenshot(path=str(ARTIFACTS / "admin-phone.png"), full_page=True)

    assert tab.problems == []
    assert tab.outside == []


@pytest.mark.timeout(60)
async def test_a_bad_token_brings_the_sign_in_form_back(server: Running, browser: Browser) -> None:
    tab = await watched(browser, server.base_url, PHONE)
    await tab.page.goto(f"{server.base_url}/admin")
    await tab.page.fill("#token", token("CUSTOMER"))
    await tab.page.click("#sign-in button[type=submit]")
    await tab.page.wait_for_selector("#sign-in-error:has-text('ADMIN')", timeout=15_000)
    assert await tab.page.is_visible("#sign-in")
    assert await tab.page.evaluate("sessionStorage.length") == 0
    # 401/403 answers show up as failed resources in the console; nothing else may.
    assert [p for p in tab.problems if "status of 40" not in p] == []


@pytest.mark.timeout(60)
async def test_the_api_reference_renders_offline(server: Running, browser: Browser) -> None:
    tab = await watched(browser, server.base_url, DESKTOP)
    await tab.page.goto(f"{server.base_url}/docs")
    await tab.page.wait_for_selector("text=Overview of a range", state="attached", timeout=30_000)
    body = await tab.page.inner_text("body")
    # The operations, and the answers' fields from their Structs' schemas.
    assert "/v1/analytics/stats/breakdown" in body
    assert "visitDurationSeconds" in body and "pageviewsPerMinute" in body
    # Redoc's bundle asks for its logo from its CDN; the page's CSP refuses it in the browser.
    assert tab.outside == []
    assert [p for p in tab.problems if "cdn.redoc.ly" not in p] == []


def last_weeks(weeks: int) -> dict[str, str]:
    """The range the retention grid asks for: the last `weeks` Mondays to tomorrow, in London."""
    today = datetime.now(ZoneInfo("Europe/London")).date()
    monday = today - timedelta(days=today.weekday())
    return {
        "from": (monday - timedelta(weeks=weeks - 1)).isoformat(),
        "to": (today + timedelta(days=1)).isoformat(),
    }


@pytest.mark.timeout(120)
async def test_funnels_retention_and_journeys_on_the_admin_page(
    server: Running, warehouse: Warehouse, browser: Browser
) -> None:
    await load(warehouse, generate(default_start(days=50), days=50, sessions_per_day=40, seed=9))
    admin = bearer(token())

    async def get(path: str, **params: str) -> Any:
        resp = await server.http.get(path, params=params, headers=admin)
        assert resp.status_code == 200, resp.text
        return resp.json()

    tab = await watched(browser, server.base_url, DESKTOP)
    page = tab.page
    await page.goto(f"{server.base_url}/admin")
    await sign_in(page)

    # The retention grid: a row per cohort, each later week's members behind its share.
    cohorts = (await get("/v1/analytics/stats/retention", by="visit", weeks="7", **last_weeks(8)))[
        "cohorts"
    ]
    assert len(cohorts) == 8 and cohorts[0]["size"] > 0 and cohorts[0]["returning"][0] > 0
    rows = page.locator("#retention-grid tbody tr")
    assert await rows.count() == len(cohorts)
    for n, cohort in enumerate(cohorts):
        row = rows.nth(n)
        assert await row.get_attribute("data-week") == cohort["week"]
        assert await row.locator("td").nth(1).inner_text() == f"{cohort['size']:,}"
        shown = await row.locator("td[data-n]").evaluate_all("cells => cells.map(c => c.dataset.n)")
        assert shown == [str(k) for k in cohort["returning"]]
    await page.select_option("#retention-by", "order")
    await loaded(page)
    orders = await get("/v1/analytics/stats/retention", by="order", weeks="7", **last_weeks(8))
    sizes = await page.locator("#retention-grid tbody tr td:nth-child(2)").all_inner_texts()
    assert sizes == [f"{c['size']:,}" for c in orders["cohorts"]]
    assert sum(c["size"] for c in orders["cohorts"]) > 0

    # Journeys after the entry page `/`, then before a completed booking.
    def shown_paths(paths: list[dict[str, Any]]) -> list[str]:
        return [f"{' → '.join(p['pages'])}\t{p['visitors']:,}" for p in paths]

    after = (await get("/v1/analytics/stats/journeys", entry="/", steps="3", **seven_days()))[
        "paths"
    ]
    assert after
    assert await page.locator("#journey-paths tbody tr").all_inner_texts() == shown_paths(after)
    await page.select_option("#journey-mode", "goal")
    await loaded(page)
    before = (
        await get(
            "/v1/analytics/stats/journeys", goal="BOOKING_COMPLETE", steps="3", **seven_days()
        )
    )["paths"]
    assert before
    assert await page.locator("#journey-paths tbody tr").all_inner_texts() == shown_paths(before)

    # A funnel defined on the page: refused by field first, then defined, shown, removed.
    await page.fill("#funnel-name", "Kitchen to booking")
    await page.click("#funnel-define")
    await page.wait_for_selector("#funnel-error:has-text('$.name')", timeout=15_000)
    await page.fill("#funnel-name", "kitchen-to-booking")
    steps = page.locator("#funnel-steps li")
    await steps.nth(0).locator(".step-page").fill("/kitchens/*")
    await steps.nth(1).locator(".step-type").select_option("PRODUCT_VIEW")
    await steps.nth(1).locator(".step-prop").fill("range=kitchens")
    await page.click("#funnel-add-step")
    await steps.nth(2).locator(".step-type").select_option("BOOKING_START")
    await page.select_option("#funnel-window", "86400")
    await page.click("#funnel-define")
    await loaded(page)
    assert await page.input_value("#funnel-pick") == "kitchen-to-booking"
    listed = (await get("/v1/analytics/funnels"))["funnels"]
    assert listed[-1] == {
        "name": "kitchen-to-booking",
        "steps": [
            {"eventType": "PAGEVIEW", "page": "/kitchens/*"},
            {"eventType": "PRODUCT_VIEW", "properties": {"range": "kitchens"}},
            {"eventType": "BOOKING_START"},
        ],
        "windowSeconds": 86400,
        "builtIn": False,
    }
    report = await get("/v1/analytics/funnels/kitchen-to-booking", **seven_days())
    assert report["steps"][0]["count"] > report["steps"][2]["count"] > 0
    shown_steps = await page.locator("#funnel-result tbody tr").all_inner_texts()
    assert [row.split("\t")[:3] for row in shown_steps] == [
        [s["step"], f"{s['count']:,}", f"{s['dropOff']:,}"] for s in report["steps"]
    ]
    assert f"Conversion {report['conversionRate']}%" in await page.inner_text("#funnel-result")
    ARTIFACTS.mkdir(exist_ok=True)
    await page.screenshot(path=str(ARTIFACTS / "admin-behaviour.png"), full_page=True)
    await page.click("#funnel-remove")
    await loaded(page)
    assert [f["name"] for f in (await get("/v1/analytics/funnels"))["funnels"]] == [
        "booking",
        "checkout",
    ]
    assert await page.input_value("#funnel-pick") == "booking"
    assert await page.is_hidden("#funnel-remove")

    # The refused definition's 400 is the only console line.
    assert [p for p in tab.problems if "status of 400" not in p] == []
    assert tab.outside == []


def shown_duration(run: dict[str, Any]) -> str:
    """The page's duration of a finished run: hundredths of a second under a minute."""
    ms = round(
        (
            datetime.fromisoformat(run["finishedAt"]) - datetime.fromisoformat(run["startedAt"])
        ).total_seconds()
        * 1000
    )
    hundredths = (ms + 5) // 10  # JavaScript's Math.round of ms / 10: halves up
    return f"{hundredths // 100}.{hundredths % 100:02d} s"


@pytest.mark.timeout(120)
async def test_a_job_run_from_the_admin_page_is_listed_as_the_api_lists_it(
    server: Running, browser: Browser
) -> None:
    admin = bearer(token())
    tab = await watched(browser, server.base_url, DESKTOP)
    page = tab.page
    await page.goto(f"{server.base_url}/admin")
    await sign_in(page)

    # Every job but export (which has its own button), by the names the CLI takes.
    names = await page.locator("#job-name option").evaluate_all("os => os.map(o => o.value)")
    assert names == [name for name in BY_COMMAND if name != "export"]
    await page.select_option("#job-name", "rebuild-dashboards")
    await page.click("#job-run")
    state = page.locator("#job-state[data-job-id]")
    await state.wait_for(timeout=15_000)
    job_id = await state.get_attribute("data-job-id")
    assert job_id
    # The server's embedded worker runs it; the panel follows it to the end.
    row = page.locator(f'#job-runs tr[data-job-id="{job_id}"]')
    await page.wait_for_selector(
        f'#job-runs tr[data-job-id="{job_id}"][data-status="DONE"]', timeout=60_000
    )
    assert await page.inner_text("#job-state") == "rebuild-dashboards: DONE"

    listed = await server.http.get("/v1/admin/jobs", params={"limit": "20"}, headers=admin)
    runs = {run["jobId"]: run for run in listed.json()["jobs"]}
    run = runs[job_id]
    assert (run["name"], run["status"], run["result"]) == (
        "rebuild-dashboards",
        "DONE",
        "rebuilt 4 dashboards",
    )
    london = ZoneInfo("Europe/London")

    async def cells_of(shown: Any) -> list[str]:
        cells: list[str] = await shown.locator("td").all_inner_texts()
        return cells

    def expected_cells(run: dict[str, Any]) -> list[str]:
        enqueued = datetime.fromisoformat(run["enqueuedAt"]).astimezone(london)
        result = run["result"]
        return [
            run["name"],
            run["status"],
            f"{enqueued:%Y-%m-%d %H:%M:%S}",
            shown_duration(run) if run["finishedAt"] else "\u2013",
            # JSON.stringify's spacing for a result that is not text.
            ""
            if result is None
            else result
            if isinstance(result, str)
            else json.dumps(result, separators=(",", ":")),
        ]

    assert await cells_of(row) == expected_cells(run)
    assert await row.locator("time").get_attribute("datetime") == run["enqueuedAt"]
    # Every finished run the page shows, the API lists alike (queued and running ones, such as
    # the retry cron's every 10 s, come and go between the two reads).
    shown_rows = page.locator("#job-runs tbody tr")
    for n in range(await shown_rows.count()):
        shown = shown_rows.nth(n)
        shown_id = await shown.get_attribute("data-job-id")
        if shown_id in runs and runs[shown_id]["finishedAt"]:
            assert await cells_of(shown) == expected_cells(runs[shown_id])

    # The table is read again with the rest of the page.
    async with page.expect_response(lambda r: "/v1/admin/jobs?" in r.url):
        await page.click('[data-range="30d"]')
    await loaded(page)
    assert await cells_of(row) == expected_cells(run)
    ARTIFACTS.mkdir(exist_ok=True)
    await page.locator("#jobs").screenshot(path=str(ARTIFACTS / "admin-jobs.png"))

    assert tab.problems == []
    assert tab.outside == []


@pytest.mark.timeout(120)
async def test_a_sampled_funnel_shows_as_an_estimate_with_its_margins(
    make_server: Any, settings: Any, warehouse: Warehouse, browser: Browser
) -> None:
    """Past FUNNEL_SAMPLE_ROWS (set low here) the page marks a funnel's figures as estimates
    and shows each count's margin and the share of visitors read."""
    await load(warehouse, generate(default_start(days=8), days=8, sessions_per_day=60, seed=5))
    server = await make_server(msgspec.structs.replace(settings, funnel_sample_rows=50))
    resp = await server.http.get(
        "/v1/analytics/funnels/booking", params=seven_days(), headers=bearer(token())
    )
    report = resp.json()
    assert 0 < report["sampleShare"] < 1, report
    tab = await watched(browser, server.base_url, DESKTOP)
    page = tab.page
    await page.goto(f"{server.base_url}/admin")
    await sign_in(page)
    shown = await page.locator("#funnel-result tbody tr").all_inner_texts()
    assert [row.split("\t")[:2] for row in shown] == [
        [s["step"], f"≈ {s['count']:,} ± {s['margin']:,}"] for s in report["steps"]
    ]
    share = f"{report['sampleShare'] * 100:.1f}% of visitors"
    assert share in await page.inner_text("#funnel-result")
    assert tab.problems == [] and tab.outside == []
