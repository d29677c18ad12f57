"""Credentials never reach a message: setting errors, log lines, answers.

`user:password@` is cut to `user:***@` wherever it stands, in a well-formed URL or not
(`redis:/user:pass@host`, `amqp//guest:pass@host`): a mistyped scheme must not print the
password it carries.
"""

from __future__ import annotations

import logging
import re

# A user (no separators), a colon not starting `://`, a password (anything but whitespace,
# quotes and `@`: it may hold `:` and `/`), then `@`. When in doubt it hides more, never less.
_CREDENTIALS = re.compile(r"(?P<user>[^\s:@/'\"]*):(?!//)[^\s@'\"]+@")


def redact(text: str) -> str:
    """`text` with every password in a `user:password@` replaced: `amqp://guest:***@host/`."""
    return _CREDENTIALS.sub(lambda m: f"{m['user']}:***@", text)


class RedactingFilter(logging.Filter):
    """Redacts every record a handler emits, whoever logged it (our code, redis-py, aio-pika,
    arq): the message with its arguments, and the traceback text."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def configure_logging() -> None:
    """Every process's logging: INFO and up to stderr, each line redacted."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    for handler in logging.getLogger().handlers:
        handler.addFilter(RedactingFilter())
