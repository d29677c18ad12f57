"""The funnels admins define, kept in ClickHouse (`funnel_definitions`, sql/0025), beside the
two built-ins (`booking`, `checkout`, materialized/funnels.py).

A definition is 2 to 8 steps, each an event type (a tracking type, with an optional page pattern
and exact property values, or a consumed domain type), and a conversion window. The API
checks the event types against what is tracked and consumed (api/funnels.py); here they are
stored, listed, removed and turned into the steps a chain follows (funnel_chains.py).
"""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime
from typing import Annotated

import msgspec

from core.clickhouse import Warehouse
from materialized import funnels
from materialized.funnel_chains import ChainStep
from materialized.properties import MAX_KEY_CHARS

MAX_STEPS = 8
MAX_PAGE_CHARS = 512
MAX_STEP_PROPERTIES = 8
Name = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
Window = Annotated[int, msgspec.Meta(ge=60, le=90 * 86400)]
Page = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_PAGE_CHARS, pattern=r"^/")]
Value = Annotated[str, msgspec.Meta(max_length=512)]
Key = Annotated[str, msgspec.Meta(min_length=1, max_length=MAX_KEY_CHARS)]


class StepDefinition(
    msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True, omit_defaults=True
):
    event_type: Annotated[str, msgspec.Meta(min_length=1, max_length=64)]
    page: Page | None = None  # a path pattern, `*` any run of characters: /kitchens/*
    properties: Annotated[dict[Key, Value], msgspec.Meta(max_length=MAX_STEP_PROPERTIES)] | None = (
        None
    )


class FunnelDefinition(msgspec.Struct, rename="camel", kw_only=True, forbid_unknown_fields=True):
    name: Name
    steps: Annotated[list[StepDefinition], msgspec.Meta(min_length=2, max_length=MAX_STEPS)]
    window_seconds: Window = funnels.DEFAULT_WINDOW_SECONDS


class FunnelCreated(msgspec.Struct):
    name: str


class ListedStep(msgspec.Struct, rename="camel", kw_only=True, omit_defaults=True):
    event_type: str
    page: str | None = None
    page_regex: str | None = None  # built-ins: the path they match, as a regular expression
    properties: dict[str, str] | None = None


class ListedFunnel(msgspec.Struct, rename="camel", kw_only=True):
    name: str
    steps: list[ListedStep]
    window_seconds: int
    built_in: bool


class FunnelList(msgspec.Struct):
    funnels: list[ListedFunnel]


def page_regex(pattern: str) -> str:
    """`/kitchens/*` -> `^/kitchens/.*$`: the whole path, `*` any run of characters."""
    return "^" + ".*".join(re.escape(part) for part in pattern.split("*")) + "$"


def chain_steps(
    definition: FunnelDefinition, domain_types: frozenset[str]
) -> tuple[ChainStep, ...]:
    return tuple(
        ChainStep(
            name=step.event_type,
            source="domain" if step.event_type in domain_types else "tracking",
            event_type=step.event_type,
            page_regex=page_regex(step.page) if step.page else "",
            properties=tuple(sorted((step.properties or {}).items())),
        )
        for step in definition.steps
    )


def built_in_steps(funnel: funnels.Funnel, product_page: str) -> tuple[ChainStep, ...]:
    return tuple(
        ChainStep(
            name=step.name,
            source=step.source,
            event_type=step.event_type,
            page_regex=product_page if step.product_page else "",
        )
        for step in funnel.steps
    )


def listed_built_in(funnel: funnels.Funnel, product_page: str, window: int) -> ListedFunnel:
    return ListedFunnel(
        name=funnel.name,
        steps=[
            ListedStep(event_type=s.event_type, page_regex=product_page if s.product_page else None)
            for s in funnel.steps
        ],
        window_seconds=window,
        built_in=True,
    )


_decode = msgspec.json.Decoder(FunnelDefinition).decode


class FunnelStore:
    def __init__(self, warehouse: Warehouse) -> None:
        self._warehouse = warehouse

    async def _write(self, name: str, definition: str, deleted: bool) -> None:
        await self._warehouse.command(
            "INSERT INTO funnel_definitions (name, definition, deleted, changed_at, version)"
            " VALUES ({name:String}, {definition:String}, {deleted:UInt8},"
            " {at:DateTime64(3, 'UTC')}, {version:UInt64})",
            {
                "name": name,
                "definition": definition,
                "deleted": int(deleted),
                "at": datetime.now(UTC),
                "version": time.time_ns(),
            },
        )

    async def save(self, definition: FunnelDefinition) -> None:
        await self._write(definition.name, msgspec.json.encode(definition).decode(), False)

    async def delete(self, name: str) -> None:
        await self._write(name, "", True)

    async def get(self, name: str) -> FunnelDefinition | None:
        rows = await self._warehouse.rows(
            "SELECT definition FROM funnel_definitions FINAL"
            " WHERE name = {name:String} AND NOT deleted",
            {"name": name},
        )
        return _decode(rows[0][0]) if rows else None

    async def all(self) -> list[FunnelDefinition]:
        rows = await self._warehouse.rows(
            "SELECT definition FROM funnel_definitions FINAL WHERE NOT deleted ORDER BY name"
        )
        return [_decode(definition) for (definition,) in rows]
