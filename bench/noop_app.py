"""The baseline: a Sanic handler on the same route that only answers 202."""

import sys

from sanic import Request, Sanic, json
from sanic.response import JSONResponse

app = Sanic("noop_baseline", configure_logging=False)


@app.get("/healthz")
async def healthz(request: Request) -> JSONResponse:
    return json({"status": "ok"})


@app.post("/v1/analytics/track")
async def track(request: Request) -> JSONResponse:
    return json({"eventId": "00000000-0000-0000-0000-000000000000"}, status=202)


if __name__ == "__main__":
    app.run(
        host="127.0.0.1", port=int(sys.argv[1]), single_process=True, access_log=False, motd=False
    )
