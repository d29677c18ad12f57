"""Answers encoded from msgspec Structs: the same Structs generate the OpenAPI document's
response schemas (api/openapi.py), so what a handler sends is what the document says."""

from __future__ import annotations

from typing import Any

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
