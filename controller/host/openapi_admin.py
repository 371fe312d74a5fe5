"""The admin API (the unix socket `rolloutctl` talks to) as an OpenAPI 3.1 document.

Served at `GET /v1/openapi.json` on the admin socket. Every write answers 507 when
`state_dir` has no space left (the message names the file), and 409 where the flags
file on disk is invalid or a rollout command does not apply now.
"""

from __future__ import annotations

from typing import Any

from controller.host.admin_api import MAX_BODY
from controller.host.openapi_public import ERROR, VERSION, answer, json_body
from controller.host.rollout_api import MAX_OBSERVATIONS
from controller.service import COMMANDS
from controller.sources.builtin_signals import PUSHED

Schema = dict[str, Any]
OBJECT: Schema = {"type": "object"}
AUDITED: Schema = {
    "reason": {"type": "string", "minLength": 1, "description": "required: it goes into the audit log"},
    "actor": {"type": ["string", "null"], "description": "who asks (default: unknown)"},
}
SEQ: Schema = {"type": "integer", "minimum": 0, "maximum": 999_999_999}


def _errors(*statuses: int) -> dict[str, Schema]:
    texts = {
        400: "malformed request (what is wrong is named)",
        404: "no such flag, backup, report or signal",
        409: "the flags file is invalid, a command does not apply now, or no rollout runs",
        413: "body over the limit",
        507: "state_dir is full: free space and retry",
    }
    return {str(s): answer(texts[s], ERROR) for s in statuses}


def _post(
    summary: str,
    op: str,
    properties: Schema,
    required: list[str],
    *statuses: int,
    parameters: list[Schema] | None = None,
) -> Schema:
    body = {"type": "object", "required": required, "properties": properties}
    return {
        "post": {
            "summary": summary,
            "operationId": op,
            "parameters": parameters or [],
            "requestBody": json_body(body, MAX_BODY),
            "responses": {"200": answer("done", OBJECT), **_errors(400, 413, *statuses)},
        }
    }


def _get(summary: str, op: str, *statuses: int, parameters: list[Schema] | None = None) -> Schema:
    return {
        "get": {
            "summary": summary,
            "operationId": op,
            "parameters": parameters or [],
            "responses": {"200": answer("ok", OBJECT), **_errors(*statuses)},
        }
    }


def _path(name: str, schema: Schema | None = None, example: str | None = None) -> Schema:
    out = {"name": name, "in": "path", "required": True, "schema": schema or {"type": "string"}}
    return out if example is None else {**out, "example": example}


def _query(name: str, schema: Schema) -> Schema:
    return {"name": name, "in": "query", "required": False, "schema": schema}


def _flags() -> dict[str, Schema]:
    change = {"enabled": {"type": "boolean"}, "percentage": {"type": "number", "minimum": 0, "maximum": 100}, **AUDITED}
    return {
        "/v1/health": _get("liveness, readiness and what this daemon serves", "health"),
        "/v1/flags": _get("every flag with its effective percentage now", "listFlags"),
        "/v1/flags/{name}": {
            **_get(
                "one flag as stored, with its recent audit records",
                "showFlag",
                404,
                parameters=[_path("name", example="hybrid_rag_enabled")],
            ),
            **_post(
                "change a flag's enabled and/or percentage",
                "setFlag",
                change,
                ["reason"],
                404,
                409,
                507,
                parameters=[_path("name", example="hybrid_rag_enabled")],
            ),
        },
        "/v1/flags-backups": _get("backups of flags.json, oldest first", "listBackups"),
        "/v1/flags-restore": _post(
            "replace flags.json with a backup",
            "restoreFlags",
            {"backup": {"type": "string", "minLength": 1}, **AUDITED},
            ["backup", "reason"],
            404,
            507,
        ),
        # never 507: a full disk delays the durable write (`"durable": false` says so), never the stop
        "/v1/emergency-stop": _post(
            "every rollout flag off and the kill switch on, at once", "emergencyStop", AUDITED, ["reason"]
        ),
    }


def _rollout() -> dict[str, Schema]:
    command = {
        "to": {"type": "integer", "minimum": -1, "description": "rollback: a stage index, or -1 for none"},
        "clear_emergency": {"type": "boolean"},
        **AUDITED,
        "reason": {"type": "string", "description": "required (non-empty) by hold and rollback"},
    }
    return {
        "/v1/rollout": _get("the rollout's status", "rolloutStatus", 409),
        "/v1/rollout/journal": _get(
            "decisions, oldest first",
            "journal",
            400,
            409,
            parameters=[_query("since", SEQ), _query("before", SEQ), _query("limit", SEQ)],
        ),
        "/v1/rollout/observations": _get(
            "guard observations, oldest first",
            "observations",
            400,
            409,
            parameters=[
                _query("since", SEQ),
                _query("limit", {"type": "integer", "minimum": 1, "maximum": MAX_OBSERVATIONS}),
                _query("guard", {"type": "string", "minLength": 1}),
            ],
        ),
        "/v1/rollout/{command}": _post(
            "an operator's command",
            "rolloutCommand",
            command,
            [],
            409,
            507,
            parameters=[_path("command", {"enum": list(COMMANDS)})],
        ),
        "/v1/reports": _get("checkpoint reports written so far", "reports", 409),
        "/v1/reports/{name}": _get("one checkpoint report", "report", 404, 409, parameters=[_path("name")]),
        "/v1/signals/{name}": _post(
            "push a built-in signal's value",
            "pushSignal",
            {"value": {"type": "number"}},
            ["value"],
            404,
            409,
            parameters=[_path("name", {"enum": list(PUSHED)})],
        ),
        "/v1/openapi.json": _get("this document", "adminOpenapi"),
    }


def admin_document() -> Schema:
    """The admin socket's API as an OpenAPI 3.1 document (a fresh dict each call)."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "rolloutd admin API",
            "version": VERSION,
            "description": "What `rolloutctl` uses, on the daemon's unix socket (`admin_socket`, mode 0660).",
        },
        "paths": {**_flags(), **_rollout()},
    }
