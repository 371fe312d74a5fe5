"""The public HTTP app on `[daemon] listen`: OFREP, retrieval, /metrics, /healthz, /readyz,
and /openapi.json describing all of them (controller/host/openapi_public.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from controller.host.openapi_public import document_route, public_document
from flags.evaluate import FlagSet
from flags.ofrep import ofrep_routes


class Readiness:
    """Why the daemon is not ready, if it is not (empty means ready)."""

    def __init__(self) -> None:
        self.problems: dict[str, str] = {"starting": "the daemon is starting"}

    def set(self, name: str, problem: str | None) -> None:
        if problem is None:
            self.problems.pop(name, None)
        else:
            self.problems[name] = problem

    @property
    def ready(self) -> bool:
        return not self.problems


def build_public_app(
    snapshot: Callable[[], FlagSet],
    clock: Callable[[], datetime],
    registry: CollectorRegistry,
    readiness: Readiness,
    extra_routes: Sequence[BaseRoute] = (),
) -> Starlette:
    async def metrics(request: Request) -> Response:
        return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)

    async def healthz(request: Request) -> Response:
        # Answering at all proves the event loop runs; that is what liveness means here.
        return JSONResponse({"status": "ok"})

    async def readyz(request: Request) -> Response:
        if readiness.ready:
            return JSONResponse({"status": "ready", "flags": len(snapshot())})
        return JSONResponse({"status": "not ready", "problems": readiness.problems}, status_code=503)

    routes = [
        *ofrep_routes(snapshot, clock),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/healthz", healthz, methods=["GET"]),
        Route("/readyz", readyz, methods=["GET"]),
        document_route("/openapi.json", public_document()),
        *extra_routes,
    ]
    return Starlette(routes=routes)
