"""Every error leaves the API as `{"message": ...}` with a status klee can parse.

klee's generated client crashes on any status code its parser does not expect
for that endpoint (klee-client-needs §0, §3.3), so validation failures and
domain errors are mapped per route here, in one place, never to 422.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from kleened.engine.errors import Conflict, EngineError, HostFailure, InvalidInput, NotFound

log = logging.getLogger("kleened.api")

DEFAULT_STATUS: dict[type[EngineError], int] = {
    NotFound: 404,
    InvalidInput: 404,
    Conflict: 409,
    HostFailure: 500,
}

# Per route (the endpoint function's name): overrides of DEFAULT_STATUS, and
# "validation" for a request that fails schema validation. Only codes that
# klee's parser accepts for the endpoint appear here.
ROUTE_STATUS: dict[str, dict[Any, int]] = {
    "volume_create": {"validation": 500, InvalidInput: 500, Conflict: 500},
    "volume_remove": {Conflict: 404},
    "container_create": {"validation": 404, Conflict: 404, HostFailure: 404},
    "container_update": {"validation": 404, InvalidInput: 409},
    "container_stop": {Conflict: 404, HostFailure: 404},
    "container_remove": {"validation": 404},
    "exec_create": {"validation": 404, InvalidInput: 404, Conflict: 404},
    "exec_stop": {"validation": 404, Conflict: 404, HostFailure: 404},
    "image_tag": {"validation": 404, InvalidInput: 404, Conflict: 404},
    "image_remove": {Conflict: 404, HostFailure: 404},
    "network_create": {"validation": 409, InvalidInput: 409, NotFound: 409},
    "network_connect": {"validation": 404, InvalidInput: 409},
    "network_disconnect": {"validation": 404, Conflict: 404, InvalidInput: 404},
}


def error_response(status: int, message: str) -> JSONResponse:
    return JSONResponse({"message": message}, status_code=status)


def _route_name(request: Request) -> str:
    route = request.scope.get("route")
    return getattr(route, "name", "") or ""


def status_for(request: Request, err: EngineError) -> int:
    overrides = ROUTE_STATUS.get(_route_name(request), {})
    for cls in type(err).__mro__:
        if cls in overrides:
            return overrides[cls]
        if cls in DEFAULT_STATUS:
            return DEFAULT_STATUS[cls]
    return 500


_JSON_TYPE = {
    dict: "object",
    list: "array",
    str: "string",
    bool: "boolean",
    int: "integer",
    float: "number",
    type(None): "null",
}


def json_type(value: Any) -> str:
    return _JSON_TYPE.get(type(value), "value")


def validation_message(errors: list[dict[str, Any]]) -> str:
    """The first pydantic error in the original's wording (reference §2.3)."""
    if not errors:
        return "invalid request"
    err = errors[0]
    kind = err.get("type", "")
    loc = [str(p) for p in err.get("loc", ()) if p not in ("body", "query", "path")]
    field = loc[-1] if loc else "body"
    got = json_type(err.get("input"))
    if kind == "missing":
        return f"Missing field: {field}"
    if kind == "json_invalid":
        return f"invalid json: {err.get('ctx', {}).get('error', err.get('msg', ''))}"
    if kind in ("literal_error", "enum"):
        return f"Invalid value for enum: {field}"
    if kind.startswith("bool") or "Invalid boolean" in err.get("msg", ""):
        return "Invalid boolean. Got: string" if got == "string" else f"Invalid boolean. Got: {got}"
    names = {
        "string_type": "string",
        "list_type": "array",
        "dict_type": "object",
        "model_type": "object",
        "model_attributes_type": "object",
        "int_type": "integer",
        "int_parsing": "integer",
    }
    if kind in names:
        if got == "null":
            return f"null value where {names[kind]} expected: {field}"
        return f"Invalid {names[kind]}. Got: {got} ({field})"
    return f"{err.get('msg', 'invalid value')} ({field})"


async def on_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    status = ROUTE_STATUS.get(_route_name(request), {}).get("validation", 404)
    return error_response(status, validation_message(list(exc.errors())))


async def on_engine_error(request: Request, exc: EngineError) -> JSONResponse:
    status = status_for(request, exc)
    if status >= 500:
        log.error("%s %s failed: %s", request.method, request.url.path, exc.message)
    return error_response(status, exc.message)


async def on_http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    # Unknown routes and wrong methods: the original answers 404 for both.
    if exc.status_code in (404, 405):
        return error_response(404, "not found")
    return error_response(exc.status_code, str(exc.detail))


async def on_crash(request: Request, exc: Exception) -> JSONResponse:
    # Never a stack trace to the client; the details go to the log.
    log.exception("unhandled error in %s %s", request.method, request.url.path)
    return error_response(500, f"internal error: {type(exc).__name__}")


def install(app: Any) -> None:
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(EngineError, on_engine_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_crash)
