"""The service's configuration: one typed object, built once from the environment at start."""

from __future__ import annotations

import ipaddress
import os
import re
import zoneinfo
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

import msgspec

from core.redaction import redact

_RATE = re.compile(r"^\s*(\d+)\s*/\s*(second|minute|hour|day)\s*$")


# Their values are never echoed, not even redacted.
SECRET_VARIABLES = frozenset(
    {"AUTH_JWT_SECRET", "DOWNLOAD_SIGNING_KEY", "METRICS_TOKEN", "AUTH_JWT_PUBLIC_KEY"}
)


class SettingsError(SystemExit):
    """A variable is missing or malformed; the message names it and start-up stops."""

    def __init__(self, variable: str, problem: str) -> None:
        self.variable = variable
        self.problem = problem
        super().__init__(f"bad setting {variable}: {redact(problem)}")


def _url_pattern(*schemes: str) -> msgspec.Meta:
    return msgspec.Meta(pattern=rf"^({'|'.join(re.escape(s) for s in schemes)})://")


ClickHouseUrl = Annotated[str, _url_pattern("chdb", "http", "https")]
RedisUrl = Annotated[str, _url_pattern("redis", "rediss", "unix")]
AmqpUrl = Annotated[str, _url_pattern("amqp", "amqps")]
StorageUrl = Annotated[str, _url_pattern("file", "s3")]


# /kitchens/<range>, /bedrooms/<range> or /products/<id>: Lomash Wood's product URLs.
PRODUCT_PAGE_PATTERN = r"^/(kitchens|bedrooms|products)/[^/]+"
# What Python's `re` takes and RE2 (ClickHouse's match()) refuses: lookaround, backreferences.
_NOT_RE2 = re.compile(r"\(\?(?:=|!|<=|<!)|\\[1-9]|\(\?P=")


class Settings(msgspec.Struct, frozen=True, kw_only=True):
    host: str = "127.0.0.1"
    # Everything the service writes lives under here unless set on its own: the embedded
    # ClickHouse, the tracking log, file storage and the metrics of `analytics api`'s workers.
    data_dir: Annotated[str, msgspec.Meta(min_length=1)] = "./data"
    port: Annotated[int, msgspec.Meta(ge=1, le=65535)] = 8000
    clickhouse_url: ClickHouseUrl = "chdb://./data/clickhouse"
    clickhouse_database: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")] = (
        "analytics"
    )
    # Server mode on a cluster: DDL gets ON CLUSTER and Replicated engines.
    clickhouse_cluster: str = ""
    # The durable Redis: the retry queue, arq's jobs, export states, job coverage. Run it with
    # `maxmemory-policy noeviction` (and an append-only file): a full one refuses writes loudly.
    redis_url: RedisUrl = "redis://127.0.0.1:6379/0"
    # Ephemeral state that clients create (sessions, event-id claims, known users, rate
    # windows, stats answers), all with a TTL: its own Redis with `allkeys-lru` in production,
    # so anonymous traffic can only evict other ephemeral state. Unset: REDIS_URL.
    cache_redis_url: RedisUrl | None = None
    amqp_url: AmqpUrl = "amqp://guest:guest@127.0.0.1:5672/"
    amqp_exchange: Annotated[str, msgspec.Meta(min_length=1)] = "lomash.events"
    # Our own durable queue on that exchange (dead letters go to `<queue>.dlq`).
    amqp_queue: Annotated[str, msgspec.Meta(min_length=1)] = "analytics.domain-events"
    storage_url: StorageUrl = "file://./data/objects"
    # The tracking log: accepted events are written here before their 202 (one subdirectory
    # per process), read by the ClickHouse writer and the event.tracked relay.
    tracking_log_dir: Annotated[str, msgspec.Meta(min_length=1)] = "./data/tracking-log"
    s3_endpoint_url: str = ""
    # Create the STORAGE_URL bucket at start when it is missing (a fresh MinIO, say).
    s3_create_bucket: bool = False
    # Where people reach this API; file-storage download links point here.
    public_url: str = ""
    geoip_db: str = ""
    auth_jwt_secret: str = ""
    auth_jwt_public_key: str = ""
    auth_jwt_issuer: str = ""  # when set, tokens must carry this `iss`
    auth_jwt_audience: str = ""  # when set, tokens must carry this `aud`
    # Longest token lifetime (exp - iat) accepted, in seconds.
    auth_jwt_max_lifetime: Annotated[int, msgspec.Meta(ge=60, le=30 * 86400)] = 12 * 3600
    # HMAC key of file-storage download links; never derived from anything public.
    download_signing_key: str = ""
    # HMAC key of the user-id hashes in the erasure audit (materialized/erasure.py); erasures
    # are refused without it. Never derived from anything public.
    erasure_audit_key: str = ""
    report_timezone: str = "Europe/London"
    rate_limit: str = "100/minute"
    # Events per client address beside RATE_LIMIT's requests: an array of 100 costs 100.
    rate_limit_events: str = "2000/minute"
    trusted_proxies: tuple[str, ...] = ()
    cors_origins: tuple[str, ...] = ("*",)
    flush_max_rows: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 10_000
    flush_interval_ms: Annotated[int, msgspec.Meta(ge=10, le=600_000)] = 1_000
    # Accepted events in one process's tracking log not yet stored (or handed to the retry
    # queue); past it the beacon endpoint answers 503 with Retry-After until the writer catches
    # up. The log keeps the decoded rows of its own unread segments too, about 1.3 KB each:
    # the default bounds that near 260 MB (and the log on disk near 90 MB).
    ingest_max_pending_rows: Annotated[int, msgspec.Meta(ge=1_000)] = 200_000
    api_workers: Annotated[int, msgspec.Meta(ge=1, le=64)] = 2
    # Which PAGEVIEW paths are product pages (the booking funnel's first step, the dashboard's
    # productPageViews): a regular expression in ClickHouse's RE2 syntax, searched in the path.
    product_page_pattern: Annotated[str, msgspec.Meta(min_length=1, max_length=512)] = (
        PRODUCT_PAGE_PATTERN
    )
    # windowFunnel's window: how long after a funnel's first step later steps still count.
    funnel_window_seconds: Annotated[int, msgspec.Meta(ge=60, le=90 * 86400)] = 7 * 86400
    # A funnel answered on the dashboard whose steps' browser events in the range number more
    # than twice this is counted on a sample of visitors holding about this many, each count
    # with its 95% margin (materialized/funnel_chains.py); 0: always every visitor.
    funnel_sample_rows: Annotated[int, msgspec.Meta(ge=0)] = 4_000_000
    # The event.tracked messages the relay may leave unpublished in a tracking log; past it
    # the oldest are skipped and counted (analytics_publish_lost_total).
    tracked_backlog_max_bytes: Annotated[int, msgspec.Meta(ge=1 << 20)] = 1 << 30
    # /metrics (and /healthz, /readyz) of the processes without an HTTP API; 0: none.
    metrics_port: Annotated[int, msgspec.Meta(ge=0, le=65535)] = 0
    # When set, /metrics answers only `Authorization: Bearer <token>`.
    metrics_token: str = ""
    # Open HTTP connections one API process keeps, in all and per client address (IPv6: per
    # /64; a trusted proxy's own address is not capped); past them a connection is answered
    # 503 and closed. The total is held under the descriptor limit at start.
    max_connections: Annotated[int, msgspec.Meta(ge=16, le=1_000_000)] = 4096
    max_connections_per_client: Annotated[int, msgspec.Meta(ge=1, le=1_000_000)] = 64
    # A request must arrive whole (headers and body) this soon after its first byte.
    request_deadline_seconds: Annotated[float, msgspec.Meta(gt=0, le=600)] = 10.0

    @property
    def base_url(self) -> str:
        return self.public_url.rstrip("/") or f"http://{self.host}:{self.port}"

    def require_download_key(self) -> bytes:
        """The link-signing key, for the processes that sign or check download links; with
        file:// storage a missing or short key stops them at start, naming the variable."""
        key = self.download_signing_key.encode()
        if self.storage_url.startswith("file://") and len(key) < MIN_SECRET_BYTES:
            raise SettingsError(
                "DOWNLOAD_SIGNING_KEY",
                f"file:// storage signs its download links with this secret: set at least"
                f" {MIN_SECRET_BYTES} random bytes (e.g. `openssl rand -base64 48`)",
            )
        return key

    @property
    def ephemeral_redis_url(self) -> str:
        return self.cache_redis_url or self.redis_url

    @property
    def metrics_dir(self) -> Path:
        """Where `analytics api`'s worker processes keep their metric values for one scrape
        to sum (prometheus-client's multiprocess mode); emptied at start."""
        return Path(self.data_dir) / "metrics"

    @property
    def embedded(self) -> bool:
        """True when ClickHouse runs in this process (chDB), which allows one process only."""
        return self.clickhouse_url.startswith("chdb://")

    @property
    def rate_limit_per_window(self) -> tuple[int, str]:
        return _rate(self.rate_limit)

    @property
    def event_budget_per_window(self) -> tuple[int, str]:
        return _rate(self.rate_limit_events)

    @property
    def trusted_networks(self) -> tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...]:
        return tuple(ipaddress.ip_network(p, strict=False) for p in self.trusted_proxies)


MIN_SECRET_BYTES = 32


def _rate(value: str) -> tuple[int, str]:
    match = _RATE.match(value)
    assert match is not None  # checked in load_settings
    return int(match.group(1)), match.group(2)


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
    if env.get("DATA_DIR"):
        data_dir = env["DATA_DIR"].rstrip("/")
        # The paths not set on their own follow DATA_DIR.
        raw.setdefault("clickhouse_url", f"chdb://{data_dir}/clickhouse")
        raw.setdefault("storage_url", f"file://{data_dir}/objects")
        raw.setdefault("tracking_log_dir", f"{data_dir}/tracking-log")
    if "SPOOL_DIR" in env:
        raise SettingsError("SPOOL_DIR", "renamed TRACKING_LOG_DIR (and it can no longer be off)")
    try:
        settings = msgspec.convert(raw, Settings, strict=False)
    except msgspec.ValidationError as error:
        variable, problem = _variable_of(error)
        if variable in env and variable not in SECRET_VARIABLES:
            problem = f"{problem} (got {env[variable]!r})"  # redacted by SettingsError
        raise SettingsError(variable, problem) from None
    _check(settings)
    return settings


def _check(settings: Settings) -> None:
    for variable, rate in (
        ("RATE_LIMIT", settings.rate_limit),
        ("RATE_LIMIT_EVENTS", settings.rate_limit_events),
    ):
        if not _RATE.match(rate):
            raise SettingsError(variable, f"expected N/second|minute|hour|day, got {rate!r}")
    if settings.auth_jwt_secret and len(settings.auth_jwt_secret.encode()) < MIN_SECRET_BYTES:
        raise SettingsError(
            "AUTH_JWT_SECRET",
            f"an HS256 secret must have at least {MIN_SECRET_BYTES} bytes"
            f" (got {len(settings.auth_jwt_secret.encode())})",
        )
    audit_key = settings.erasure_audit_key.encode()
    if audit_key and len(audit_key) < MIN_SECRET_BYTES:
        raise SettingsError(
            "ERASURE_AUDIT_KEY",
            f"the audit's HMAC key must have at least {MIN_SECRET_BYTES} bytes"
            f" (got {len(audit_key)})",
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
    if settings.embedded and settings.clickhouse_cluster:
        raise SettingsError(
            "CLICKHOUSE_CLUSTER", "a cluster needs ClickHouse servers: set CLICKHOUSE_URL=http://…"
        )
    if settings.clickhouse_cluster and not re.fullmatch(
        r"[A-Za-z0-9_.-]+", settings.clickhouse_cluster
    ):
        raise SettingsError(
            "CLICKHOUSE_CLUSTER", f"not a cluster name: {settings.clickhouse_cluster!r}"
        )
    if settings.embedded and not settings.clickhouse_url.removeprefix("chdb://"):
        raise SettingsError("CLICKHOUSE_URL", "chdb:// needs a data path, e.g. chdb://./data/ch")
    try:
        re.compile(settings.product_page_pattern)
    except re.error as error:
        raise SettingsError("PRODUCT_PAGE_PATTERN", f"not a regular expression ({error})") from None
    if _NOT_RE2.search(settings.product_page_pattern):
        raise SettingsError(
            "PRODUCT_PAGE_PATTERN",
            "lookarounds and backreferences are not RE2 (ClickHouse's match()) syntax",
        )
    if settings.geoip_db and not Path(settings.geoip_db).is_file():
        raise SettingsError("GEOIP_DB", f"no such file {settings.geoip_db!r}")
    if settings.auth_jwt_public_key and "BEGIN PUBLIC KEY" not in settings.auth_jwt_public_key:
        raise SettingsError("AUTH_JWT_PUBLIC_KEY", "expected an RS256 public key in PEM form")
