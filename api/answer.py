"""Answers encoded from msgspec Structs: the same Structs generate the OpenAPI document's
response schemas (api/openapi.py), so what a handler sends is what the document says."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import msgspec
from sanic import HTTPResponse

from ingest.schema import Rejection

_encode = msgspec.json.Encoder().encode


def answer(value: Any, status: int = 200, headers: dict[str, str] | None = None) -> HTTPResponse:
    return HTTPResponse(
        _encode(value), status=status, headers=headers, content_type="application/json"
    )


class ErrorAnswer(msgspec.Struct, omit_defaults=True):
    """Every 4xx and 5xx body: `error` says what is wrong; `path` names the body field,
    `parameter` the query parameter, `rejected` the array items refused."""

    error: str
    path: str | None = None
    parameter: str | None = None
    rejected: list[Rejection] | None = None


Body = TypeVar("Body")


def decoded_body(decode: Callable[[bytes], Body], body: bytes | None) -> Body | HTTPResponse:
    """The request body through a prebuilt decoder, or the 400 whose `path` names the field
    that is wrong (`$` for the whole body)."""
    try:
        return decode(body or b"")
    except msgspec.ValidationError as error:
        message, _, path = str(error).partition(" - at `")
        return answer(ErrorAnswer(message, path=path.rstrip("`") or "$"), status=400)
    except msgspec.DecodeError as error:
        return answer(ErrorAnswer(f"malformed JSON: {error}", path="$"), status=400)
