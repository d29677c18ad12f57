"""Admin authentication: a JWT signed with AUTH_JWT_SECRET (HS256) or AUTH_JWT_PUBLIC_KEY's
private half (RS256), carrying `role: ADMIN`. Only the configured algorithm is accepted, so
`alg: none` and algorithm swaps are refused; `exp` is required."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from sanic import HTTPResponse, Request, json

from core.settings import Settings

Handler = Callable[..., Awaitable[HTTPResponse]]


class AdminAuth:
    def __init__(self, settings: Settings) -> None:
        if settings.auth_jwt_public_key:
            self._key: str | None = settings.auth_jwt_public_key
            self._algorithm = "RS256"
        elif settings.auth_jwt_secret:
            self._key, self._algorithm = settings.auth_jwt_secret, "HS256"
        else:
            self._key, self._algorithm = None, ""

    def claims(self, request: Request) -> dict[str, Any] | HTTPResponse:
        if self._key is None:
            return _deny(401, "admin API disabled: set AUTH_JWT_SECRET or AUTH_JWT_PUBLIC_KEY")
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token:
            return _deny(401, "missing bearer token")
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                self._key,
                algorithms=[self._algorithm],
                options={"require": ["exp"]},
            )
        except jwt.ExpiredSignatureError:
            return _deny(401, "token expired")
        except jwt.InvalidTokenError as error:
            return _deny(401, f"invalid token: {error}")
        if claims.get("role") != "ADMIN":
            return _deny(403, "ADMIN role required")
        return claims


def _deny(status: int, message: str) -> HTTPResponse:
    headers = {"WWW-Authenticate": 'Bearer realm="lomash-analytics"'} if status == 401 else {}
    return json({"error": message}, status=status, headers=headers)


def admin_only(handler: Handler) -> Handler:
    """The handler runs only for a valid ADMIN token; it gets the claims as `claims`."""

    @functools.wraps(handler)
    async def guarded(request: Request, *args: Any, **kwargs: Any) -> HTTPResponse:
        result = request.app.ctx.admin_auth.claims(request)
        if isinstance(result, HTTPResponse):
            return result
        return await handler(request, *args, claims=result, **kwargs)

    return guarded


def mint(settings: Settings, role: str, subject: str, ttl_seconds: int) -> str:
    """A short-lived HS256 token, for a person trying the admin API (`analytics token`)."""
    import time

    if not settings.auth_jwt_secret:
        raise SystemExit("bad setting AUTH_JWT_SECRET: needed to mint a token")
    now = int(time.time())
    return jwt.encode(
        {"sub": subject, "role": role, "iat": now, "exp": now + ttl_seconds},
        settings.auth_jwt_secret,
        algorithm="HS256",
    )
