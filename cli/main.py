"""`analytics serve | api | migrate`: the service's processes and operator commands."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import sys

from core.settings import Settings, SettingsError, load_settings


def _migrate(settings: Settings) -> int:
    from materialized.migrations import MigrationError, migrate
    from materialized.warehouse import Warehouse

    async def run() -> list[str]:
        warehouse = Warehouse(settings.clickhouse_url, settings.clickhouse_database)
        try:
            await warehouse.open()
            return await migrate(warehouse, cluster=settings.clickhouse_cluster)
        finally:
            await warehouse.close()

    try:
        applied = asyncio.run(run())
    except MigrationError as error:
        print(f"migration refused: {error}", file=sys.stderr)
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


def _serve(settings: Settings, *, workers: int) -> int:
    from ingest.app import create_app

    _tune_gc()

    app = create_app(settings)
    # chDB opens its data path in one process only: the embedded mode is one process.
    app.run(
        host=settings.host,
        port=settings.port,
        single_process=workers == 1,
        workers=workers,
        motd=False,
        access_log=False,
    )
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="analytics", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("serve", help="API, consumer and worker in one process (embedded default)")
    commands.add_parser("api", help="the HTTP API alone, API_WORKERS processes (server mode)")
    commands.add_parser("migrate", help="apply pending sql/ migrations and exit")
    args = parser.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        settings = load_settings()
    except SettingsError as error:
        print(error, file=sys.stderr)
        return 2

    if args.command == "migrate":
        return _migrate(settings)
    if args.command == "serve":
        return _serve(settings, workers=1)
    if settings.embedded:
        print(
            "bad setting CLICKHOUSE_URL: `analytics api` runs several processes and chDB "
            "allows one; use `analytics serve` or a ClickHouse server",
            file=sys.stderr,
        )
        return 2
    return _serve(settings, workers=settings.api_workers)


if __name__ == "__main__":
    raise SystemExit(main())
