"""The explorer's ASGI app (Starlette): one page (served by the package, no CDN, a content
security policy that allows only its own API) and a JSON API, one POST endpoint per panel.

Errors are JSON `{"error": message}`: 400 for a bad field, 413 for an oversized body, 404/405 for
unknown routes, 503 when the model's queue is full; an unexpected failure is a 500 naming only the
exception's type (its traceback goes to the server's log, never to the client).
"""

from __future__ import annotations

import html
import json
import logging
from functools import cache
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from lmscope.serve.explorer import BusyError, Explorer, RequestError
from lmscope.viz._figure import asset

log = logging.getLogger("lmscope.serve")

MAX_BODY = 64 * 1024  # bytes of JSON per request
PANELS = ("tokens", "lens", "attention", "dla", "patch", "steer")
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src data:; connect-src 'self'; base-uri 'none'; form-action 'none'"
)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


@cache
def _template() -> str:
    return resources.files("lmscope.serve").joinpath("assets", "explorer.html").read_text()


def page(model_name: str) -> str:
    """The explorer's HTML page for a model (the viz runtime inline, nothing loaded from
    elsewhere).

    Example:
        >>> "<html" in page("smollm2-135m")
        True
    """
    runtime = f"<style>{asset('viz.css')}</style><script>{asset('viz.js')}</script>"
    return (
        _template()
        .replace("__VIZ_RUNTIME__", runtime)
        .replace("__MODEL__", html.escape(model_name))
    )


class _TooLarge(RequestError):
    status = 413


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


async def _body(request: Request) -> Any:
    size = request.headers.get("content-length")
    if size is not None and (not size.isdigit() or int(size) > MAX_BODY):
        raise _TooLarge(f"the request body is over {MAX_BODY} bytes")
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise _TooLarge(f"the request body is over {MAX_BODY} bytes")
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise RequestError(f"the request body is not JSON: {err}") from err


class _HostGuard:
    """Refuse requests whose Host header is not one of `hosts` (a DNS-rebinding page would send
    its own name) with a JSON 400; "*" allows any."""

    def __init__(self, app: ASGIApp, hosts: list[str]) -> None:
        self.app, self.hosts = app, hosts

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and "*" not in self.hosts:
            host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
            name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
            if name not in self.hosts:
                response = _error(
                    400, f"host {host!r} is not served: open the explorer by its loopback address"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(explorer: Explorer, allowed_hosts: list[str] | None = None) -> Starlette:
    """The Starlette app over `explorer`; `allowed_hosts` (default: loopback names) guards
    against DNS rebinding.

    Example:
        >>> app = create_app(Explorer(model))
        >>> uvicorn.run(app, host="127.0.0.1", port=8765)
    """
    the_page = page(explorer.model.cfg.model_name)

    async def index(request: Request) -> Response:
        return HTMLResponse(the_page, headers={"Content-Security-Policy": _CSP})

    async def info(request: Request) -> Response:
        return JSONResponse(explorer.info())

    async def panel(request: Request) -> Response:
        name = request.path_params["panel"]
        if name not in PANELS:
            return _error(404, f"no panel {name!r}; the panels are {', '.join(PANELS)}")
        try:
            body = await _body(request)
            result = await run_in_threadpool(getattr(explorer, name), body)
        except RequestError as err:
            return _error(err.status, str(err))
        except BusyError as err:
            return _error(err.status, str(err))
        return JSONResponse(result)

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return _error(exc.status_code, exc.detail or "error")

    async def server_error(request: Request, exc: Exception) -> Response:
        log.exception("error in %s", request.url.path, exc_info=exc)
        return _error(500, f"internal error ({type(exc).__name__}); see the server's log")

    routes = [
        Route("/", index),
        Route("/api/info", info),
        Route("/api/{panel}", panel, methods=["POST"]),
    ]
    hosts = allowed_hosts or [*LOOPBACK, "[::1]"]
    return Starlette(
        routes=routes,
        middleware=[Middleware(_HostGuard, hosts=hosts)],
        exception_handlers={HTTPException: http_error, Exception: server_error},
    )
