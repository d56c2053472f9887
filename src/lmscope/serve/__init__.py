"""`lmscope serve`: a local web explorer over one model, drawn with `lmscope.viz` (tokens with
top-k predictions, logit lens, attention, DLA, patching, steering). See docs/serve.md.

Needs the `serve` extra (`pip install 'lmscope[serve]'`: Starlette and uvicorn).

`lmscope.serve` is this package and is also callable (as `lmscope.harvest` is):
`lmscope.serve(model)` calls `lmscope.serve.serve`.

Example:
    >>> server = lmscope.serve(model)          # a free loopback port, in a background thread
    >>> server.url
    'http://127.0.0.1:53123/'
    >>> server.stop()
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
import time
import types
from typing import Any

from lmscope.model import HookedTransformer
from lmscope.serve.explorer import BusyError, Explorer, Limits, RequestError

__all__ = ["BusyError", "Explorer", "Limits", "RequestError", "Server", "serve"]


def _require() -> None:
    """ImportError naming the extra when Starlette or uvicorn is missing."""
    missing = []
    for name in ("starlette", "uvicorn"):
        try:
            __import__(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ImportError(
            f"lmscope serve needs {' and '.join(missing)}: pip install 'lmscope[serve]'"
        )


def is_loopback(host: str) -> bool:
    """Whether `host` names this machine only (127.0.0.0/8, ::1, localhost).

    Example:
        >>> is_loopback("127.0.0.1"), is_loopback("0.0.0.0")
        (True, False)
    """
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    """A running explorer: `url`, `explorer` (its computations), `stop()`; a context manager.

    Example:
        >>> with lmscope.serve(model) as server:
        ...     print(server.url)
    """

    def __init__(self, explorer: Explorer, host: str, port: int, allowed_hosts: list[str]) -> None:
        import uvicorn

        from lmscope.serve.app import create_app

        self.explorer = explorer
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._socket = socket.socket(family, socket.SOCK_STREAM)
        self._socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            self._socket.bind((host, port))
        except OSError as err:
            self._socket.close()
            raise OSError(f"cannot listen on {host}:{port}: {err}; choose another --port") from err
        self.host, self.port = host, self._socket.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{self.port}/"
        config = uvicorn.Config(
            create_app(explorer, allowed_hosts), log_level="warning", access_log=False,
            timeout_graceful_shutdown=2,
        )  # fmt: skip
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(
            target=self._server.run, kwargs={"sockets": [self._socket]}, daemon=True,
            name=f"lmscope-serve-{self.port}",
        )  # fmt: skip
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the explorer did not start on {self.url}")
            time.sleep(0.01)

    def __repr__(self) -> str:
        return f"<lmscope explorer of {self.explorer.model.cfg.model_name} at {self.url}>"

    def _repr_html_(self) -> str:
        return f"<a href='{self.url}' target='_blank'>lmscope explorer at {self.url}</a>"

    def stop(self) -> None:
        """Stop serving (requests in flight finish first) and close the port."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()

    def wait(self) -> None:
        """Block until the server stops (Ctrl-C stops it)."""
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            self.stop()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def serve(
    model: HookedTransformer,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_remote: bool = False,
    limits: Limits | None = None,
) -> Server:
    """Serve the explorer over `model` in a background thread and return its `Server` (`url`,
    `stop()`). `port=0` takes a free port. Binds loopback only unless `allow_remote=True`
    (anyone who can reach the port can then run the model: a warning is printed).

    Example:
        >>> server = lmscope.serve(HookedTransformer.from_pretrained("smollm2-135m"))
        >>> print(server.url)    # open it in a browser
        >>> server.stop()
    """
    _require()
    if not isinstance(model, HookedTransformer):
        raise TypeError(f"serve takes a HookedTransformer, got {type(model).__name__}")
    if is_loopback(host):
        allowed = ["127.0.0.1", "localhost", "::1", "[::1]"]
    elif not allow_remote:
        raise ValueError(
            f"host {host!r} is not a loopback address: the explorer runs the model for anyone "
            "who can reach it; pass allow_remote=True (--allow-remote) to bind it anyway"
        )
    else:
        allowed = ["*"]
        print(
            f"lmscope serve: warning: listening on {host}, reachable from other machines; "
            "anyone who can reach the port can run the model",
            file=sys.stderr,
        )
    return Server(Explorer(model, limits), host, port, allowed)


class _CallableModule(types.ModuleType):
    """This package's module type: calling the module calls `serve`."""

    def __call__(self, *args: Any, **kwargs: Any) -> Server:
        return serve(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
