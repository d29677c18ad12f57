"""How visitors come back and move (ADMIN): weekly retention cohorts by first visit or first
order (materialized/retention.py), and journeys after an entry page or before a goal
(materialized/journeys.py). Ranges, errors and caching as the other stats."""

from __future__ import annotations

from typing import Any

from sanic import Blueprint, HTTPResponse, Request

from api.auth import admin_only
from api.dashboard import RangeError, parse_range
from api.services import services
from api.stats import (
    EVENT_TYPES,
    BadParameter,
    bad_parameter,
    cached_answer,
    choice,
    report_zone,
    whole_number,
)
from materialized import journeys, retention
from materialized.retention import CohortBy

bp = Blueprint("behaviour")

# A goal is what a journey leads to; pageviews are the journey itself.
GOALS = [t for t in EVENT_TYPES if t != "PAGEVIEW"]


@bp.get("/v1/analytics/stats/retention")
@admin_only
async def cohorts(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    svc = services(request)
    zone = report_zone(svc)
    try:
        by = CohortBy(choice(request, "by", [b.value for b in CohortBy]))
        start, end = parse_range(request, zone)
        weeks = whole_number(request, "weeks", retention.DEFAULT_WEEKS, 1, retention.MAX_WEEKS)
    except (RangeError, BadParameter) as error:
        return bad_parameter(error)
    return await cached_answer(
        request,
        start,
        end,
        lambda: retention.cohorts(svc.runtime.warehouse, zone, by, start, end, weeks),
    )


def _entry(request: Request) -> tuple[str | None, str | None]:
    entry, goal = request.args.get("entry"), request.args.get("goal")
    if (entry is None) == (goal is None):
        raise BadParameter("entry", "give one of `entry` (a page path) or `goal` (an event type)")
    if entry is not None and (not entry.startswith("/") or len(entry) > journeys.MAX_PATH_CHARS):
        raise BadParameter(
            "entry", f"`entry` is a page path: `/` and up to {journeys.MAX_PATH_CHARS} characters"
        )
    if goal is not None and goal not in GOALS:
        raise BadParameter("goal", f"`goal`: {goal!r} is not one of {' '.join(GOALS)}")
    return entry, goal


@bp.get("/v1/analytics/stats/journeys")
@admin_only
async def paths(request: Request, claims: dict[str, Any]) -> HTTPResponse:
    svc = services(request)
    try:
        start, end = parse_range(request, report_zone(svc))
        entry, goal = _entry(request)
        steps = whole_number(request, "steps", journeys.DEFAULT_STEPS, 1, journeys.MAX_STEPS)
        limit = whole_number(request, "limit", journeys.DEFAULT_LIMIT, 1, journeys.MAX_LIMIT)
    except (RangeError, BadParameter) as error:
        return bad_parameter(error)
    return await cached_answer(
        request,
        start,
        end,
        lambda: journeys.journeys(
            svc.runtime.warehouse, start, end, entry=entry, goal=goal, steps=steps, limit=limit
        ),
    )
