"""Pushing a value to a built-in signal over the admin socket (no Prometheus configured).

    POST /v1/signals/{name}   {"value": 99.2}   → 200 {"signal", "value"}

Only signals measured outside the daemon can be pushed (today `regression_pass_rate`,
the regression suite's pass rate in percent, which the suite's runner posts after each
run). A value counts for the guard's window after it is pushed, then goes stale, so a
runner that stops reporting reads as "no data", never as its last good value.

404: unknown or unpushable signal; 400: not a finite number; 409: the daemon's guards
read Prometheus, so there is nothing to push to (push to Prometheus instead).
"""

from __future__ import annotations

import math

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from controller.host.admin_api import BadRequest, body_of, guarded
from controller.plan import BUILTIN_SIGNALS
from controller.sources.builtin_signals import PUSHED, BuiltinSource


def signal_routes(builtin: BuiltinSource | None) -> list[Route]:
    async def push(request: Request) -> Response:
        name = request.path_params["name"]
        if name not in PUSHED:
            known = "unknown signal" if name not in BUILTIN_SIGNALS else "measured by the daemon itself"
            return JSONResponse({"error": f"{name!r}: {known}; pushable: {', '.join(PUSHED)}"}, status_code=404)
        if builtin is None:
            return JSONResponse(
                {
                    "error": "this daemon's guards read Prometheus ([prometheus] url is set) or it "
                    "runs no plan: export the value to Prometheus instead"
                },
                status_code=409,
            )
        value = (await body_of(request)).get("value")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise BadRequest(f'"value" must be a finite number, got {value!r}')
        builtin.push(name, float(value))
        return JSONResponse({"signal": name, "value": float(value)})

    return [Route("/v1/signals/{name}", guarded(push), methods=["POST"])]
