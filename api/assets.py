"""`/assets/…`: the files of the built-in pages (api/static), vendored libraries included.

Served by Sanic's static handler, which refuses paths outside the folder. The file names of
vendored libraries carry their version, so they may be cached for a day."""

from __future__ import annotations

from pathlib import Path

from sanic import Blueprint

STATIC_DIR = Path(__file__).resolve().parent / "static"

bp = Blueprint("assets")
bp.static("/assets", STATIC_DIR, name="files", use_content_range=False)
