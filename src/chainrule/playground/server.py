"""The playground's web server: static pages and a small JSON API over chainrule.

Standard library only (``http.server.ThreadingHTTPServer``). The API:

=======  ===============================  =================================================
GET      ``/``, ``/static/<file>``        the page (files shipped in the package, nothing else)
GET      ``/api/meta``                    choices, limits and defaults for the controls
POST     ``/api/session``                 ``{config}`` -> a new session: data, network, state
POST     ``/api/config``                  ``{session, config}`` -> live change, or a rebuild
POST     ``/api/train``                   ``{session, epochs | batches, since}`` -> new state
POST     ``/api/stepthrough``             ``{session, mode, index}`` -> the ledger, for the page
POST     ``/api/weight``                  ``{session, layer, row, col, value}``: set one weight
POST     ``/api/upload?name=FILE``        the CSV bytes -> an upload id and a summary
GET      ``/api/export/<session>/model.safetensors``, ``.../model.py``: the downloads
=======  ===============================  =================================================

Safety: the server listens on 127.0.0.1 unless told otherwise; on loopback it
answers only requests whose ``Host`` is a loopback name (a web page elsewhere
cannot reach it through DNS rebinding); every POST must carry the header
``X-Chainrule: 1``, which a cross-site form cannot send; request bodies are
capped (64 KiB of JSON, 20 MB of CSV); uploads are parsed by
:func:`chainrule.data.load_csv` and never touch a path the page names; the
only file-system access reachable from the page is the export, which writes a
private temporary file and sends it back. Nothing the page sends is evaluated.
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import sys
import threading
import traceback
from collections import OrderedDict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from .. import __version__
from .config import (
    ACTIVATIONS,
    CLASSIFICATION_SETS,
    FEATURES,
    LIMITS,
    LOSSES,
    OPTIMIZERS,
    REGRESSION_SETS,
    REGULARIZERS,
    Config,
    ConfigError,
)
from .datasets import FEATURE_LABELS, MAX_UPLOAD_BYTES, UploadError, Uploads, make_data
from .ledger_view import StepThroughUnavailable
from .session import Session, TrainingDiverged

__all__ = ["App", "make_server", "PlaygroundServer", "is_loopback"]

MAX_JSON_BYTES = 64 * 1024
MAX_SESSIONS = 32
MAX_EPOCHS_PER_CALL = 200
MAX_BATCHES_PER_CALL = 10_000

_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}

# The page runs only its own scripts (no inline script, nothing from elsewhere).
_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
        "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'none'")


class HTTPError(Exception):
    """A request the API refuses: status and a message for the page."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def is_loopback(host: str) -> bool:
    """True for names and addresses of this machine only (127.0.0.0/8, ::1, localhost)."""
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def _static_files() -> dict[str, tuple[bytes, str]]:
    """The page's files, read from the package once: the only files the server sends."""
    out: dict[str, tuple[bytes, str]] = {}
    root = resources.files("chainrule.playground") / "static"
    for entry in root.iterdir():
        name = entry.name
        suffix = name[name.rfind("."):] if "." in name else ""
        if entry.is_file() and suffix in _TYPES:
            out[name] = (entry.read_bytes(), _TYPES[suffix])
    return out


class App:
    """The server's state: sessions (newest last, the oldest dropped past a cap) and uploads."""

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.sessions: OrderedDict[str, Session] = OrderedDict()
        self.uploads = Uploads()
        self.max_sessions = max_sessions
        self.lock = threading.Lock()
        self.static = _static_files()

    # ----- sessions -------------------------------------------------------------

    def session(self, body: dict[str, Any]) -> Session:
        sid = body.get("session")
        if not isinstance(sid, str):
            raise HTTPError(400, "missing 'session' (the id /api/session returned)")
        with self.lock:
            s = self.sessions.get(sid)
            if s is not None:
                self.sessions.move_to_end(sid)
        if s is None:
            raise HTTPError(404, "unknown session (the server was restarted or dropped it); "
                                 "the page starts a new one")
        return s

    def _config(self, body: dict[str, Any], base: Config | None = None) -> Config:
        params = body.get("config", {})
        try:
            return Config.from_params(params, base)
        except ConfigError as e:
            raise HTTPError(400, str(e)) from None

    def new_session(self, body: dict[str, Any]) -> dict[str, Any]:
        cfg = self._config(body)
        data = make_data(cfg, self.uploads)
        sid = secrets.token_hex(12)
        s = Session(sid, cfg, data)
        with self.lock:
            old = body.get("session")
            if isinstance(old, str):
                self.sessions.pop(old, None)  # the page replaces its session
            self.sessions[sid] = s
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)
        with s.lock:
            return s.describe(**_sizes(body))

    def configure(self, body: dict[str, Any]) -> dict[str, Any]:
        s = self.session(body)
        with s.lock:
            cfg = self._config(body, s.cfg)
            # the data is made again only when it changes (an uploaded table is parsed anew)
            data = make_data(cfg, self.uploads) if s.cfg.data_changed(cfg) else None
            rebuilt = s.reconfigure(cfg, data)
            if rebuilt:
                return {"rebuilt": True, **s.describe(**_sizes(body))}
            return {"rebuilt": False, "config": cfg.to_dict(), "params": cfg.to_params()}

    def train(self, body: dict[str, Any]) -> dict[str, Any]:
        s = self.session(body)
        epochs = _count(body, "epochs", MAX_EPOCHS_PER_CALL)
        batches = _count(body, "batches", MAX_BATCHES_PER_CALL)
        since = _count(body, "since", 10**9)
        with s.lock:
            try:
                s.train(epochs=epochs, batches=batches)
            except TrainingDiverged:
                pass  # the snapshot carries the message; the page stops playing
            return s.snapshot(since=since, **_sizes(body))

    def weight(self, body: dict[str, Any]) -> dict[str, Any]:
        s = self.session(body)
        args = [body.get(k) for k in ("layer", "row", "col")]
        ints = [a for a in args if isinstance(a, int) and not isinstance(a, bool)]
        if len(ints) != len(args):
            raise HTTPError(400, "weight: layer, row and col must be whole numbers")
        layer, row, col = ints
        with s.lock:
            s.set_weight(layer, row, col, body.get("value"))
            return s.snapshot(since=_count(body, "since", 10**9), **_sizes(body))

    def stepthrough(self, body: dict[str, Any]) -> dict[str, Any]:
        s = self.session(body)
        mode = body.get("mode", "example")
        index = body.get("index")
        if index is not None and (isinstance(index, bool) or not isinstance(index, int)):
            raise HTTPError(400, f"step-through: index must be a whole number, got {index!r}")
        with s.lock:
            return s.stepthrough(mode, index)

    def upload(self, name: str, raw: bytes) -> dict[str, Any]:
        return self.uploads.add(name, raw)

    def export(self, sid: str, what: str) -> tuple[bytes, str, str]:
        s = self.session({"session": sid})
        with s.lock:
            if what == "model.safetensors":
                return (s.checkpoint_bytes(), "application/octet-stream",
                        s.export_name() + ".safetensors")
            if what == "model.py":
                return (s.python_snippet().encode(), "text/x-python; charset=utf-8",
                        s.export_name() + ".py")
        raise HTTPError(404, f"no export called {what!r} (model.safetensors or model.py)")

    def meta(self) -> dict[str, Any]:
        return {
            "version": __version__,
            "defaults": Config().to_params(),
            "datasets": {"classification": {k: list(v) for k, v in CLASSIFICATION_SETS.items()},
                         "regression": list(REGRESSION_SETS)},
            "features": {f: FEATURE_LABELS[f] for f in FEATURES},
            "activations": list(ACTIVATIONS), "losses": list(LOSSES),
            "optimizers": list(OPTIMIZERS), "regularizers": list(REGULARIZERS),
            "limits": {k: list(v) if isinstance(v, tuple) else v for k, v in LIMITS.items()},
            "max_upload_bytes": MAX_UPLOAD_BYTES,
        }


def _count(body: dict[str, Any], key: str, top: int) -> int:
    v = body.get(key, 0)
    if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v <= top:
        raise HTTPError(400, f"{key}={v!r}: expected a whole number from 0 to {top}")
    return v


def _sizes(body: dict[str, Any]) -> dict[str, int]:
    """Heatmap resolutions the page asks for (the boundary and the small per-neuron maps)."""
    grid = body.get("grid", 100)
    maps = body.get("maps", 24)
    for key, v, top in (("grid", grid, 200), ("maps", maps, 64)):
        if isinstance(v, bool) or not isinstance(v, int) or not 2 <= v <= top:
            raise HTTPError(400, f"{key}={v!r}: expected a whole number from 2 to {top}")
    return {"grid": grid, "maps": maps}


class Handler(BaseHTTPRequestHandler):
    """One request. The server object carries the :class:`App` and its settings."""

    server: PlaygroundServer
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out at once (no 40 ms ACK stalls)
    server_version = "chainrule-playground"

    # ----- plumbing --------------------------------------------------------------

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if self.server.verbose:
            super().log_message(format, *args)

    def _send(self, status: int, body: bytes, ctype: str,
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        self.send_header("Cache-Control", "no-store")
        if ctype.startswith("text/html"):
            self.send_header("Content-Security-Policy", _CSP)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj: Any) -> None:
        body = json.dumps(obj, separators=(",", ":"), allow_nan=False).encode()
        self._send(status, body, "application/json")

    def _error(self, status: int, message: str) -> None:
        self._json(status, {"error": message})

    def _host_ok(self) -> bool:
        """On loopback, only loopback Host names (no DNS rebinding from another site)."""
        if not self.server.loopback_only:
            return True
        host = self.headers.get("Host", "")
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return is_loopback(name)

    def _body(self, cap: int) -> bytes:
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise HTTPError(411, "the request needs a Content-Length")
        n = int(length)
        if n > cap:
            self.close_connection = True  # the unread body must not be taken for a request
            raise HTTPError(413, f"the request body has {n:,} bytes; the limit is {cap:,}")
        return self.rfile.read(n)

    def _dispatch(self, fn: Any) -> None:
        try:
            if not self._host_ok():
                raise HTTPError(403, "this server answers only requests for localhost")
            fn()
        except ConnectionError:
            # the page went away mid-answer (a closed tab while playing): nothing to tell
            self.close_connection = True
        except HTTPError as e:
            self._error(e.status, str(e))
        except (ConfigError, UploadError, StepThroughUnavailable) as e:
            self._error(400, str(e))
        except Exception as e:  # a bug: say so on the page, keep serving, log the traceback
            traceback.print_exc(file=sys.stderr)
            self._error(500, f"internal error: {type(e).__name__}: {e}")

    # ----- GET ---------------------------------------------------------------------

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(self._get)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(self._get)

    def _get(self) -> None:
        path = urlsplit(self.path).path
        app = self.server.app
        if path in ("/", "/index.html"):
            body, ctype = app.static["index.html"]
            self._send(200, body, ctype)
        elif path.startswith("/static/") and path[len("/static/"):] in app.static:
            body, ctype = app.static[path[len("/static/"):]]
            self._send(200, body, ctype)
        elif path == "/api/meta":
            self._json(200, app.meta())
        elif path.startswith("/api/export/"):
            parts = path[len("/api/export/"):].split("/")
            if len(parts) != 2:
                raise HTTPError(404, "export: expected /api/export/<session>/model.safetensors")
            data, ctype, filename = app.export(parts[0], parts[1])
            self._send(200, data, ctype,
                       {"Content-Disposition": f'attachment; filename="{filename}"'})
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            raise HTTPError(404, f"nothing at {path}")

    # ----- POST --------------------------------------------------------------------

    def do_POST(self) -> None:  # noqa: N802
        self._dispatch(self._post)

    def _post(self) -> None:
        if self.headers.get("X-Chainrule") != "1":
            raise HTTPError(403, "POST requests must carry the header 'X-Chainrule: 1'")
        url = urlsplit(self.path)
        app = self.server.app
        if url.path == "/api/upload":
            name = unquote(parse_qs(url.query).get("name", ["upload.csv"])[0])
            raw = self._body(MAX_UPLOAD_BYTES)
            self._json(200, app.upload(name, raw))
            return
        routes = {"/api/session": app.new_session, "/api/config": app.configure,
                  "/api/train": app.train, "/api/stepthrough": app.stepthrough,
                  "/api/weight": app.weight}
        fn = routes.get(url.path)
        if fn is None:
            raise HTTPError(404, f"no API call {url.path}")
        raw = self._body(MAX_JSON_BYTES)
        try:
            body = json.loads(raw or b"{}")
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, f"the request body is not JSON ({e})") from None
        if not isinstance(body, dict):
            raise HTTPError(400, "the request body must be a JSON object")
        self._json(200, fn(body))


class PlaygroundServer(ThreadingHTTPServer):
    """A threading HTTP server holding the playground's :class:`App`."""

    daemon_threads = True
    allow_reuse_address = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # a browser closing its connection is routine, not worth a traceback
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def __init__(self, address: tuple[str, int], app: App | None = None,
                 verbose: bool = False) -> None:
        host = address[0]
        if ":" in host:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, Handler)
        self.app = app or App()
        self.verbose = verbose
        self.loopback_only = is_loopback(host)


def make_server(host: str = "127.0.0.1", port: int = 0, verbose: bool = False
                ) -> PlaygroundServer:
    """A playground server bound to ``host:port`` (port 0: a free one), not yet serving."""
    return PlaygroundServer((host, port), verbose=verbose)
