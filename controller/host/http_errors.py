"""What an HTTP request that hits a bug costs: one 500 and one log line, never more.

Starlette answers an exception no handler caught with a 500 and then re-raises it "so
that the server can log it"; uvicorn then writes a multi-kilobyte traceback at error
level for every such request, which a hostile client can repeat at will to flood the
journal. `contain_errors` answers in JSON instead (with OFREP's `errorCode` as well, so
SDKs read it as a general error), logs one `http.unhandled` event naming the exception
and the innermost frame of ours it came from, and swallows the re-raise.

Known failures are never meant to reach this: they are 4xx/503 answers where they
happen. An `http.unhandled` line in the journal is a bug to fix.

Starlette's own refusals (no such route, method not allowed) are answered in JSON too,
so that every answer of either listener is `{"error": ...}` (plus OFREP's `errorCode`),
whatever went wrong.
"""

from __future__ import annotations

import traceback
from pathlib import Path

import structlog
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

log = structlog.get_logger("rolloutd.http")
_OURS = tuple(str(Path(__file__).resolve().parents[2] / pkg) for pkg in ("controller", "flags", "retrieval"))


def contain_errors(app: Starlette, listener: str) -> ASGIApp:
    """`app` with a JSON 500 and one log line for every exception its routes let escape."""

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error(
            "http.unhandled",
            listener=listener,
            method=request.method,
            path=request.url.path,
            error=f"{type(exc).__name__}: {str(exc)[:200]}",
            at=_origin(exc),
        )
        return JSONResponse(
            {
                "error": f"internal error ({type(exc).__name__}) while serving {request.method} "
                f"{request.url.path}; the daemon logged it as http.unhandled",
                "errorCode": "GENERAL",
            },
            status_code=500,
        )

    app.add_exception_handler(Exception, internal_error)
    app.add_exception_handler(HTTPException, _refused)

    async def contained(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await app(scope, receive, send)
        except Exception:  # noqa: BLE001  (answered and logged by internal_error; see the module docstring)
            return

    return contained


async def _refused(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    return JSONResponse(
        {"error": f"{exc.detail}: {request.method} {request.url.path}", "errorCode": "GENERAL"},
        status_code=exc.status_code,
        headers=exc.headers,
    )


def _origin(exc: BaseException) -> str:
    """`file:line in function` of the innermost frame in our own code (else the innermost)."""
    frames = traceback.extract_tb(exc.__traceback__)
    ours = [f for f in frames if f.filename.startswith(_OURS)]
    if not (candidates := ours or frames):
        return "unknown"
    frame = candidates[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"
