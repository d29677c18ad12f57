"""`analytics serve | api | consume | relay | migrate | demo | jobs | erase | restore-day |
token`: the service's processes and operator commands."""

from __future__ import annotations

import argparse
import asyncio
import gc
import sys
import uuid
from functools import partial

from core.redaction import configure_logging, redact
from core.settings import Settings, SettingsError, load_settings


def _migrate(settings: Settings) -> int:
    from core.clickhouse import WarehouseError
    from core.migrations import MigrationError, open_migrated

    async def run() -> list[str]:
        warehouse, applied = await open_migrated(settings)
        await warehouse.close()
        return applied

    try:
        applied = asyncio.run(run())
    except MigrationError as error:
        print(f"migration refused: {error}", file=sys.stderr)
        return 1
    except WarehouseError as error:
        print(f"migration failed: ClickHouse: {redact(str(error))}", file=sys.stderr)
        return 1
    print("applied: " + ", ".join(applied) if applied else "up to date")
    return 0


def _tune_gc() -> None:
    # The ingest path allocates a few objects per event; with the default gen-0 threshold of
    # 700 the collector runs thousands of times a second (measured: ~15% of the loop).
    # Objects made at start-up never die: freeze them out of every collection.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)


def _serve(settings: Settings, *, embedded: bool) -> int:
    if not embedded:
        from core.metric_files import share_across_processes

        # Before anything defines a metric: the workers' values go to files one scrape sums.
        share_across_processes(settings.metrics_dir)
        # Once here, not in each of the workers at their start (they would race).
        if (failed := _migrate(settings)) != 0:
            return failed

    from sanic import Sanic
    from sanic.worker.loader import AppLoader

    from api.connections import GuardedProtocol
    from cli.assembly import http_app

    _tune_gc()
    # Embedded, the event.tracked relay is a child process; in server mode, `analytics relay`.
    # Each of `api`'s worker processes calls the factory: an assembly of its own.
    loader = AppLoader(factory=partial(http_app, settings, embedded=embedded))
    app = loader.load()
    app.prepare(
        host=settings.host,
        port=settings.port,
        # chDB opens its data path in one process only: the embedded mode is one process.
        single_process=embedded,
        workers=1 if embedded else settings.api_workers,
        motd=False,
        access_log=False,
        protocol=GuardedProtocol,
    )
    if embedded:
        Sanic.serve_single(app)
    else:
        Sanic.serve(primary=app, app_loader=loader)
    return 0


def _consume(settings: Settings) -> int:
    from cli.assembly import run_consume

    _tune_gc()
    run_consume(settings)
    return 0


def _relay(settings: Settings) -> int:
    from cli.assembly import run_relay

    run_relay(settings)
    return 0


def _demo(settings: Settings, days: int, sessions: int, seed: int, if_empty: bool) -> int:
    from cli.demo_traffic import default_start, generate, load
    from core.migrations import open_migrated
    from workers.context import JobContext
    from workers.jobs import rebuild_dashboards, recompute_funnels

    async def run() -> str:
        warehouse, _ = await open_migrated(settings)
        try:
            if if_empty and await warehouse.scalar("SELECT count() FROM tracking_events"):
                return ""
            traffic = generate(default_start(days=days), days, sessions, seed)
            await load(warehouse, traffic)
            ctx = {"job": JobContext(settings=settings, warehouse=warehouse)}
            await recompute_funnels(ctx)
            await rebuild_dashboards(ctx)
            return f"{len(traffic.tracking):,} browser and {len(traffic.domain):,} domain events"
        finally:
            await warehouse.close()

    try:
        made = asyncio.run(run())
    except Exception as error:
        print(
            f"demo failed: {error} (is `analytics serve` running on the same chDB path?"
            " chDB opens a path in one process: stop it first)",
            file=sys.stderr,
        )
        return 1
    if not made:
        print("demo: the install already holds browser events; nothing loaded")
        return 0
    print(f"loaded {made} over the last {days} days; funnels and dashboards rebuilt")
    return 0


def _restore_day(settings: Settings, day: str) -> int:
    from datetime import date

    from core.migrations import open_migrated
    from core.storage import storage_for
    from materialized.archive import restore_day

    try:
        wanted = date.fromisoformat(day)
    except ValueError:
        print(f"restore-day: {day!r} is not a date (YYYY-MM-DD)", file=sys.stderr)
        return 2

    async def run() -> int:
        storage = storage_for(settings)
        warehouse, _ = await open_migrated(settings)
        try:
            return await restore_day(warehouse, storage, wanted)
        finally:
            await warehouse.close()

    rows = asyncio.run(run())
    print(f"restored {rows} rows of {day} into tracking_events_restored")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analytics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="API, consumer and worker in one process (embedded default)")
    commands.add_parser("api", help="the HTTP API alone, API_WORKERS processes (server mode)")
    commands.add_parser("consume", help="the RabbitMQ domain-event consumer alone (server mode)")
    commands.add_parser(
        "relay", help="publish event.tracked from the tracking logs (beside `analytics api`)"
    )
    commands.add_parser("migrate", help="apply pending sql/ migrations and exit")
    demo = commands.add_parser("demo", help="fill the install with believable traffic")
    demo.add_argument("--days", type=int, default=60)
    demo.add_argument("--sessions-per-day", type=int, default=300)
    demo.add_argument("--seed", type=int, default=7)
    demo.add_argument(
        "--if-empty", action="store_true", help="load nothing when browser events are stored"
    )
    jobs = commands.add_parser("jobs", help="list recent and queued jobs, or enqueue one")
    jobs.add_argument("action", nargs="?", choices=["list", "run"], default="list")
    jobs.add_argument(
        "name",
        nargs="?",
        help="rebuild-dashboards, recompute-funnels, archive,"
        " purge, retry, remove-old-exports, check-freshness, export",
    )
    jobs.add_argument("--report", default="", help="export: BOOKINGS|ORDERS|REVENUE|...")
    jobs.add_argument("--format", default="", help="export: CSV|JSON")
    jobs.add_argument("--from", dest="start", default="", help="export: ISO 8601")
    jobs.add_argument("--to", dest="end", default="", help="export: ISO 8601")
    jobs.add_argument(
        "--requested-by",
        type=uuid.UUID,
        default=None,
        help="export: the admin's user id (a uuid) that report-generated names",
    )
    erasing = commands.add_parser(
        "erase", help="erase a user's data everywhere it is kept (UK GDPR Art. 17)"
    )
    erasing.add_argument("user_id", type=uuid.UUID, help="the userId (a uuid)")
    erasing.add_argument(
        "--requested-by", dest="erase_by", default="cli", help="who asked, for the audit"
    )
    restore = commands.add_parser("restore-day", help="load an archived day back into ClickHouse")
    restore.add_argument("day", help="YYYY-MM-DD (UTC)")
    token = commands.add_parser("token", help="mint a short-lived admin token (HS256 secret)")
    token.add_argument("--role", default="ADMIN")
    token.add_argument(
        "--subject",
        type=uuid.UUID,
        default=None,
        help="the admin's user id (a uuid; default: a new one); exports name it as requestedBy",
    )
    token.add_argument("--ttl", type=int, default=3600, help="seconds")
    args = parser.parse_args(argv)

    configure_logging()
    try:
        settings = load_settings()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2

    if args.command in ("serve", "api", "jobs", "restore-day"):
        try:  # these sign or check download links
            settings.require_download_key()
        except SettingsError as error:
            print(error, file=sys.stderr)
            return 2
    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "demo":
        return _demo(settings, args.days, args.sessions_per_day, args.seed, args.if_empty)
    if args.command == "jobs":
        from cli.jobs import list_jobs, run_job

        if args.action == "list":
            print(list_jobs(settings))
        else:
            print(
                run_job(
                    settings,
                    args.name or "",
                    args.report,
                    args.format,
                    args.start,
                    args.end,
                    args.requested_by,
                )
            )
        return 0
    if args.command == "erase":
        from cli.jobs import erase

        print(erase(settings, args.user_id, args.erase_by))
        return 0
    if args.command == "restore-day":
        return _restore_day(settings, args.day)
    if args.command == "token":
        from api.auth import mint

        print(mint(settings, args.role, str(args.subject or uuid.uuid4()), args.ttl))
        return 0
    if args.command == "serve":
        return _serve(settings, embedded=True)
    if args.command == "consume":
        return _consume(settings)
    if args.command == "relay":
        return _relay(settings)
    if settings.embedded:
        print(
            "bad setting CLICKHOUSE_URL: `analytics api` runs several processes and chDB "
            "allows one; use `analytics serve` or a ClickHouse server",
            file=sys.stderr,
        )
        return 2
    return _serve(settings, embedded=False)


if __name__ == "__main__":
    raise SystemExit(main())
