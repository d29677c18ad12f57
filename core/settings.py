"""The service's configuration: one typed object, built once from the environment at start."""

from __future__ import annotations

import hashlib
import ipaddress
import os
import re
import secrets
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

_PROCESS_KEY = secrets.token_bytes(32)
_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")


class SettingsError(SystemExit):
    """A variable is missing or malformed; the message names it and start-up stops."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"bad setting {variable}: {problem}")


def _url_pattern(*schemes: str) -> msgspec.Meta:
    return msgspec.Meta(pattern=rf"^({'|'.join(re.escape(s) for s in schemes)})://")


ClickHouseUrl = Annotated[str, _url_pattern("chdb", "http", "https")]
RedisUrl = Annotated[str, _url_pattern("redis", "rediss", "unix")]
AmqpUrl = Annotated[str, _url_pattern("amqp", "amqps")]
StorageUrl = Annotated[str, _url_pattern("file", "s3")]


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    clickhouse_url: ClickHouseUrl = "chdb://./data/clickhouse"
    clickhouse_database: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = (
        "analytics"
    )
    # Server mode on a cluster: DDL gets ON CLUSTER and Replicated engines.
    clickhouse_cluster: str = ""
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"
    amqp_url: AmqpUrl = "amqp://guest:guest@127.0.0.1:5672/"
    amqp_exchange: Annotated[str, msgspec.Meta(min_length=1)] = "lomash.events"
    # Our own durable queue on that exchange (dead letters go to `<queue>.dlq`).
    amqp_queue: Annotated[str, msgspec.Meta(min_length=1)] = "analytics.domain-events"
    storage_url: StorageUrl = "file://./data/objects"
    # Accepted events are written here before their 202 (one subdirectory per process);
    # empty turns the spool off (a 202 then means accepted in memory only).
    spool_dir: str = "./data/spool"
    s3_endpoint_url: str = ""
    # Where people reach this API; file-storage download links point here.
    public_url: str = ""
    geoip_db: str = ""
    auth_jwt_secret: str = ""
    auth_jwt_public_key: str = ""
    report_timezone: str = "Europe/London"
    rate_limit: str = "100/minute"
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ("*",)
    flush_max_rows: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    flush_interval_ms: Annotated[int, msgspec.Meta(ge=10, le=600_000)] = 1_000
    api_workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    # windowFunnel's window: how long after a funnel's first step later steps still count.
    funnel_window_seconds: Annotated[int, msgspec.Meta(ge=60, le=90 * 86400)] = 7 * 86400
    # /metrics (and /healthz, /readyz) of the processes without an HTTP API; 0: none.
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    # When set, /metrics answers only `Authorization: Bearer <token>`.
    metrics_token: str = ""

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    @property
    def download_signing_key(self) -> bytes:
        """HMAC key of file download links: derived from the admin secret when there is one,
        else made at start (links then die with the process)."""
        secret = self.auth_jwt_secret or self.auth_jwt_public_key
        if not secret:
            return _PROCESS_KEY
        return hashlib.sha256(b"lomash-downloads\n" + secret.encode()).digest()

    @property
    def embedded(self) -> bool:
        """True when ClickHouse runs in this process (chDB), which allows one process only."""
        return self.clickhouse_url.startswith("chdb://")

    @property
    def rate_limit_per_window(self) -> tuple[int, str]:
        match = _RATE.match(self.rate_limit)
        assert match is not None  # checked in load_settings
        return int(match.group(1)), match.group(2)

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)


_FIELDS = msgspec.structs.fields(Settings)
_LIST_FIELDS = {"trusted_proxies", "cors_origins"}  # comma-separated in the environment


def _split_list(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def _variable_of(error: msgspec.ValidationError) -> tuple[str, str]:
    message = str(error)
    match = re.search(r" - at `\$\.(\w+)`", message)
    if match is None:
        return "?", message
    return match.group(1).upper(), message[: match.start()]


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the settings from the environment; a bad value raises SettingsError naming it."""
    env = os.environ if environ is None else environ
    raw: dict[str, Any] = {}
    for field in _FIELDS:
        name = field.name.upper()
        if name not in env:
            continue
        value = env[name]
        raw[field.name] = _split_list(value) if field.name in _LIST_FIELDS else value
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as error:
        variable, problem = _variable_of(error)
        if variable in env:
            problem = f"{problem} (got {env[variable]!r})"
        raise SettingsError(variable, problem) from None
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    if not _RATE.match(settings.rate_limit):
        raise SettingsError(
            "RATE_LIMIT", f"expected N/second|minute|hour|day, got {settings.rate_limit!r}"
        )
    try:
        zoneinfo.ZoneInfo(settings.report_timezone)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise SettingsError(
            "REPORT_TIMEZONE", f"unknown time zone {settings.report_timezone!r}"
        ) from None
    for proxy in settings.trusted_proxies:
        try:
            ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise SettingsError(
                "TRUSTED_PROXIES", f"{proxy!r} is not an IP address or network"
            ) from None
    if settings.embedded and not settings.clickhouse_url.removeprefix("chdb://"):
        raise SettingsError("CLICKHOUSE_URL", "chdb:// needs a data path, e.g. chdb://./data/ch")
    if settings.geoip_db and not Path(settings.geoip_db).is_file():
        raise SettingsError("GEOIP_DB", f"no such file {settings.geoip_db!r}")
    if settings.auth_jwt_public_key and "BEGIN PUBLIC KEY" not in settings.auth_jwt_public_key:
        raise SettingsError("AUTH_JWT_PUBLIC_KEY", "expected an RS256 public key in PEM form")
