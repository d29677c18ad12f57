"""Funnels (ADMIN): the two built-ins (`booking`, `checkout`) and the ones admins define,
listed, defined, removed and computed for any range with per-step drop-off and median time
(materialized/funnel_chains.py). A computed answer is cached as the stats are."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import msgspec
from sanic import Blueprint, HTTPResponse, Request, empty, json

from api.answer import answer, decoded_body
from api.auth import admin_only
from api.dashboard import RangeError, parse_range
from api.services import services
from api.stats import EVENT_TYPES, BadParameter, bad_parameter, cached_answer, report_zone
from consumers.schemas import CONTRACTS
from core.clickhouse import WarehouseError
from materialized import funnels
from materialized.funnel_chains import StepResult, estimate
from materialized.funnel_definitions import (
    FunnelCreated,
    FunnelDefinition,
    FunnelList,
    FunnelStore,
    ListedFunnel,
    ListedStep,
    built_in_steps,
    chain_steps,
    listed_built_in,
)

bp = Blueprint("funnels")

DOMAIN_TYPES = frozenset(c.event_type for c in CONTRACTS.values())
TRACKING_TYPES = frozenset(EVENT_TYPES)
_decode = msgspec.json.Decoder(FunnelDefinition).decode
_defining = asyncio.Lock()  # one check-then-write at a time in this process


class FunnelReport(msgspec.Struct, rename="camel", kw_only=True):
    funnel_name: str  # BOOKING or CHECKOUT for the built-ins (as funnel-completed), else the name
    period_from: datetime
    period_to: datetime
    steps: list[StepResult]
    conversion_rate: float  # percent of the first step reaching the last, two decimals
    window_seconds: int
    # Only when estimated from a sample of the visitors: the share of them read (each step
    # then has its `margin`); absent when every visitor was counted.
    sample_share: float | msgspec.UnsetType = msgspec.UNSET


def _invalid(error: str, path: str) -> HTTPResponse:
    return json({"error": error, "path": path}, status=400)


def _unavailable(error: Exception) -> HTTPResponse:
    return json({"error": f"funnels unavailable: {error}"}, status=503)


def _check_types(definition: FunnelDefinition) -> HTTPResponse | None:
    """Each step's event type is tracked or consumed; pages and properties are the browser's."""
    for n, step in enumerate(definition.steps):
        at = f"$.steps[{n}]"
        if step.event_type in DOMAIN_TYPES:
            if step.page is not None or step.properties is not None:
                field = "page" if step.page is not None else "properties"
                return _invalid(
                    f"a domain event ({step.event_type}) has no {field}", f"{at}.{field}"
                )
        elif step.event_type not in TRACKING_TYPES:
            known = " ".join([*EVENT_TYPES, *sorted(DOMAIN_TYPES)])
            return _invalid(
                f"unknown event type {step.event_type!r}; one of {known}", f"{at}.eventType"
            )
    return None


@bp.post("/v1/analytics/funnels")
@admin_only
async def define(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    definition = decoded_body(_decode, request.body)
    if isinstance(definition, HTTPResponse):
        return definition
    if (refused := _check_types(definition)) is not None:
        return refused
    if definition.name in funnels.FUNNELS:
        return json(
            {"error": f"{definition.name!r} is a built-in funnel", "path": "$.name"}, status=409
        )
    store = FunnelStore(services(request).runtime.warehouse)
    try:
        async with _defining:
            if await store.get(definition.name) is not None:
                return json(
                    {"error": f"a funnel named {definition.name!r} exists", "path": "$.name"},
                    status=409,
                )
            await store.save(definition)
    except WarehouseError as error:
        return _unavailable(error)
    return answer(FunnelCreated(definition.name), status=201)


@bp.get("/v1/analytics/funnels")
@admin_only
async def list_funnels(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    svc = services(request)
    settings = svc.runtime.settings
    try:
        defined = await FunnelStore(svc.runtime.warehouse).all()
    except WarehouseError as error:
        return _unavailable(error)
    built_in = [
        listed_built_in(f, settings.product_page_pattern, settings.funnel_window_seconds)
        for f in funnels.FUNNELS.values()
    ]
    listed = [
        ListedFunnel(
            name=d.name,
            steps=[
                ListedStep(event_type=s.event_type, page=s.page, properties=s.properties)
                for s in d.steps
            ],
            window_seconds=d.window_seconds,
            built_in=False,
        )
        for d in defined
    ]
    return answer(FunnelList([*built_in, *listed]))


@bp.delete("/v1/analytics/funnels/<name:str>")
@admin_only
async def remove(request: Request, claims: dict[str, Any], name: str) -> HTTPResponse:
    if name in funnels.FUNNELS:
        return json({"error": f"{name!r} is a built-in funnel and stays"}, status=409)
    store = FunnelStore(services(request).runtime.warehouse)
    try:
        async with _defining:
            if await store.get(name) is None:
                return json({"error": f"no funnel named {name!r}"}, status=404)
            await store.delete(name)
    except WarehouseError as error:
        return _unavailable(error)
    return empty(status=204)


@bp.get("/v1/analytics/funnels/<name:str>")
@admin_only
async def compute(request: Request, claims: dict[str, Any], name: str) -> HTTPResponse:
    svc = services(request)
    settings = svc.runtime.settings
    try:
        start, end = parse_range(request, report_zone(svc))
    except RangeError as error:
        return bad_parameter(error)
    built_in = funnels.FUNNELS.get(name)
    variant = ""
    if built_in is not None:
        steps = built_in_steps(built_in, settings.product_page_pattern)
        window, published = settings.funnel_window_seconds, name.upper()
    else:
        try:
            definition = await FunnelStore(svc.runtime.warehouse).get(name)
        except WarehouseError as error:
            return _unavailable(error)
        if definition is None:
            return json(
                {
                    "error": f"unknown funnel {name!r}; built in: {' '.join(funnels.FUNNELS)};"
                    " GET /v1/analytics/funnels lists the defined ones"
                },
                status=404,
            )
        steps = chain_steps(definition, DOMAIN_TYPES)
        window, published = definition.window_seconds, name
        # A funnel removed and defined again under its name is another question.
        variant = msgspec.json.encode(definition).decode()

    exact = request.args.get("exact", "false")
    if exact not in ("true", "false"):
        return bad_parameter(BadParameter("exact", "`exact` must be true or false"))

    rows = 0 if exact == "true" else settings.funnel_sample_rows

    async def report() -> FunnelReport:
        followed = await estimate(svc.runtime.warehouse, steps, start, end, window, rows)
        first, last = followed.steps[0].count, followed.steps[-1].count
        return FunnelReport(
            funnel_name=published,
            period_from=start,
            period_to=end,
            steps=followed.steps,
            conversion_rate=round(last / first * 100, 2) if first else 0.0,
            window_seconds=window,
            sample_share=msgspec.UNSET if followed.share == 1.0 else followed.share,
        )

    # A threshold changed since (FUNNEL_SAMPLE_ROWS) is another answer.
    return await cached_answer(request, start, end, report, f"{variant}|{rows}")
