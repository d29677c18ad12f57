import io
import logging

import pytest

from core.redaction import RedactingFilter, redact
from core.settings import SettingsError, load_settings


def test_defaults_match_the_design() -> None:
    settings = load_settings({})
    assert (settings.host, settings.port) == ("127.0.0.1", 8000)
    assert settings.clickhouse_url == "chdb://./data/clickhouse"
    assert settings.clickhouse_database == "analytics"
    assert settings.redis_url == "redis://127.0.0.1:6379/0"
    assert settings.amqp_url == "amqp://guest:guest@127.0.0.1:5672/"
    assert settings.amqp_exchange == "lomash.events"
    assert settings.storage_url == "file://./data/objects"
    assert settings.report_timezone == "Europe/London"
    assert settings.rate_limit_per_window == (100, "minute")
    assert settings.trusted_proxies == ()
    assert settings.embedded
    assert settings.tracking_log_dir == "./data/tracking-log"
    assert not settings.s3_create_bucket


def test_ephemeral_state_goes_to_cache_redis_url_else_to_redis_url() -> None:
    alone = load_settings({"REDIS_URL": "redis://durable:6379/0"})
    assert alone.cache_redis_url is None
    assert alone.ephemeral_redis_url == "redis://durable:6379/0"
    both = load_settings(
        {"REDIS_URL": "redis://durable:6379/0", "CACHE_REDIS_URL": "redis://cache:6379/1"}
    )
    assert (both.redis_url, both.ephemeral_redis_url) == (
        "redis://durable:6379/0",
        "redis://cache:6379/1",
    )
    with pytest.raises(SettingsError) as raised:
        load_settings({"CACHE_REDIS_URL": "http://cache:6379"})
    assert "CACHE_REDIS_URL" in str(raised.value)


def test_data_dir_moves_every_path_not_set_on_its_own() -> None:
    settings = load_settings({"DATA_DIR": "/var/lib/analytics/"})
    assert settings.clickhouse_url == "chdb:///var/lib/analytics/clickhouse"
    assert settings.storage_url == "file:///var/lib/analytics/objects"
    assert settings.tracking_log_dir == "/var/lib/analytics/tracking-log"
    assert str(settings.metrics_dir) == "/var/lib/analytics/metrics"
    pinned = load_settings(
        {"DATA_DIR": "srv", "STORAGE_URL": "s3://bucket/p", "TRACKING_LOG_DIR": "/fast/log"}
    )
    assert pinned.clickhouse_url == "chdb://srv/clickhouse"
    assert (pinned.storage_url, pinned.tracking_log_dir) == ("s3://bucket/p", "/fast/log")


def test_values_are_read_and_typed() -> None:
    settings = load_settings(
        {
            "PORT": "9001",
            "CLICKHOUSE_URL": "https://user:pw@ch.example:8443/analytics",
            "TRUSTED_PROXIES": "10.0.0.0/8, 192.168.1.7,::1",
            "RATE_LIMIT": "20/second",
            "FLUSH_MAX_ROWS": "500",
        }
    )
    assert settings.port == 9001
    assert not settings.embedded
    assert settings.trusted_proxies == ("10.0.0.0/8", "192.168.1.7", "::1")
    assert settings.rate_limit_per_window == (20, "second")
    assert settings.flush_max_rows == 500


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("PORT", "abc", "Expected `int`"),
        ("PORT", "70000", "<= 65535"),
        ("CLICKHOUSE_URL", "mysql://db/analytics", "chdb|http|https"),
        ("CLICKHOUSE_URL", "chdb://", "needs a data path"),
        ("CLICKHOUSE_DATABASE", "drop table;", "matching regex"),
        ("REDIS_URL", "http://127.0.0.1:6379", "redis"),
        ("AMQP_URL", "127.0.0.1:5672", "amqp"),
        ("STORAGE_URL", "ftp://x", "file|s3"),
        ("RATE_LIMIT", "100/fortnight", "N/second"),
        ("REPORT_TIMEZONE", "Europe/Atlantis", "unknown time zone"),
        ("TRUSTED_PROXIES", "10.0.0.0/8,not-an-ip", "'not-an-ip'"),
        ("FLUSH_INTERVAL_MS", "0", ">= 10"),
        ("DATA_DIR", "", "length >= 1"),
        ("S3_CREATE_BUCKET", "perhaps", "Expected `bool`"),
        ("METRICS_PORT", "-1", ">= 0"),
        ("AUTH_JWT_PUBLIC_KEY", "secret", "PEM"),
        ("GEOIP_DB", "/nonexistent/City.mmdb", "no such file"),
        ("AUTH_JWT_SECRET", "short-secret", "at least 32 bytes"),
        ("RATE_LIMIT_EVENTS", "lots", "N/second"),
        ("AUTH_JWT_MAX_LIFETIME", "10", ">= 60"),
    ],
)
def test_bad_value_is_refused_naming_the_variable(variable: str, value: str, says: str) -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({variable: value})
    assert caught.value.variable == variable
    message = str(caught.value)
    assert message.startswith(f"bad setting {variable}: ")
    assert says in message
    assert "\n" not in message


def test_setting_errors_never_print_passwords() -> None:
    with pytest.raises(SettingsError) as caught:
        load_settings({"AMQP_URL": "http://analytics:hunter2-secret@mq.internal:5672/"})
    assert "hunter2" not in str(caught.value)
    assert "analytics:***@mq.internal" in str(caught.value)
    with pytest.raises(SettingsError) as caught:
        load_settings({"REDIS_URL": "tcp://:r3dis-pass@cache:6379/0"})
    assert "r3dis-pass" not in str(caught.value)


@pytest.mark.parametrize("key", ["", "too-short-0123456789"])
def test_file_storage_needs_a_download_signing_key_of_32_bytes(key: str) -> None:
    settings = load_settings({"DOWNLOAD_SIGNING_KEY": key} if key else {})
    with pytest.raises(SettingsError) as caught:
        settings.require_download_key()
    assert caught.value.variable == "DOWNLOAD_SIGNING_KEY"
    assert "at least 32" in str(caught.value)


def test_s3_storage_needs_no_download_signing_key() -> None:
    settings = load_settings({"STORAGE_URL": "s3://bucket/prefix"})
    assert settings.require_download_key() == b""


def test_the_download_key_is_never_derived_from_the_jwt_keys() -> None:
    key = "k" * 40
    a = load_settings({"DOWNLOAD_SIGNING_KEY": key, "AUTH_JWT_SECRET": "a" * 40})
    b = load_settings({"DOWNLOAD_SIGNING_KEY": key, "AUTH_JWT_SECRET": "b" * 40})
    assert a.require_download_key() == b.require_download_key() == key.encode()


def test_the_old_spool_variable_fails_at_boot_by_name() -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({"SPOOL_DIR": "/var/spool"})
    assert "SPOOL_DIR" in str(raised.value) and "TRACKING_LOG_DIR" in str(raised.value)
    with pytest.raises(SettingsError) as raised:
        load_settings({"TRACKING_LOG_DIR": ""})
    assert "TRACKING_LOG_DIR" in str(raised.value)


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("REDIS_URL", "redis:/user:s3cret-pw@host:6379/0"),
        ("AMQP_URL", "amqp//guest:s3cret-pw@host:5672/"),
        ("REDIS_URL", "redis//:s3cret-pw@host:6379/0"),
        ("CLICKHOUSE_URL", "htp://default:s3cret-pw@ch:8123/analytics"),
        ("CACHE_REDIS_URL", "redis:/:s3cret-pw@cache:6379/0"),
    ],
)
def test_a_malformed_url_fails_by_name_without_its_password(variable: str, value: str) -> None:
    with pytest.raises(SettingsError) as raised:
        load_settings({variable: value})
    message = str(raised.value)
    assert variable in message and "s3cret-pw" not in message and ":***@" in message


def test_log_lines_are_redacted_whoever_logs_them() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("a.library")
    logger.addHandler(handler)
    try:
        logger.error("cannot connect to %s", "amqp://guest:s3cret-pw@rabbit:5672/")
        try:
            raise ConnectionError("Error connecting to redis:/user:s3cret-pw@host:6379/0")
        except ConnectionError:
            logger.exception("reconnecting")
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "s3cret-pw" not in written
    assert "amqp://guest:***@rabbit:5672/" in written and ":***@host:6379/0" in written
    assert redact("no credentials: a:b c@d") == "no credentials: a:b c@d"
