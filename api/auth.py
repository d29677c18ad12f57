"""Admin authentication: a JWT signed with AUTH_JWT_SECRET (HS256) or AUTH_JWT_PUBLIC_KEY's
private half (RS256), carrying `role: ADMIN`. Only the configured algorithm is accepted, so
`alg: none` and algorithm swaps are refused; `exp` is required, `iss` and `aud` are checked
when AUTH_JWT_ISSUER / AUTH_JWT_AUDIENCE are set, clocks may differ by 30 s, and a token
may live at most AUTH_JWT_MAX_LIFETIME (exp - iat, or exp - now without iat): a leaked
long-lived token is refused even when its signature is good."""

from __future__ import annotations

import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
from sanic import HTTPResponse, Request, json

from core.settings import Settings

Handler = Callable[..., Awaitable[HTTPResponse]]


LEEWAY_S = 30


class AdminAuth:
    def __init__(self, settings: Settings) -> None:
        self._issuer = settings.auth_jwt_issuer or None
        self._audience = settings.auth_jwt_audience or None
        self._max_lifetime = settings.auth_jwt_max_lifetime
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
                options={
                    "require": ["exp"],
                    "verify_aud": self._audience is not None,
                },
                issuer=self._issuer,
                audience=self._audience,
                leeway=LEEWAY_S,
            )
        except jwt.ExpiredSignatureError:
            return _deny(401, "token expired")
        except jwt.InvalidTokenError as error:
            return _deny(401, f"invalid token: {error}")
        issued = claims.get("iat")
        start = issued if isinstance(issued, int | float) else time.time()
        if claims["exp"] - start > self._max_lifetime + LEEWAY_S:
            return _deny(
                401, f"token lives longer than the {self._max_lifetime} s AUTH_JWT_MAX_LIFETIME"
            )
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
    if not settings.auth_jwt_secret:
        raise SystemExit("bad setting AUTH_JWT_SECRET: needed to mint a token")
    if ttl_seconds > settings.auth_jwt_max_lifetime:
        raise SystemExit(
            f"--ttl {ttl_seconds} is longer than AUTH_JWT_MAX_LIFETIME"
            f" ({settings.auth_jwt_max_lifetime} s): the API would refuse the token"
        )
    now = int(time.time())
    claims: dict[str, Any] = {"sub": subject, "role": role, "iat": now, "exp": now + ttl_seconds}
    if settings.auth_jwt_issuer:
        claims["iss"] = settings.auth_jwt_issuer
    if settings.auth_jwt_audience:
        claims["aud"] = settings.auth_jwt_audience
    return jwt.encode(claims, settings.auth_jwt_secret, algorithm="HS256")
