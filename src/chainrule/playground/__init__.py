"""The backpropagation playground: train a small network in the browser, step through backprop.

``chainrule playground`` (or ``cr.playground()`` in Python) starts a local web
server and opens a page in the spirit of TensorFlow Playground: pick a data
set, shape the network, press play, watch the decision boundary. Every number
on the page comes from chainrule: the server trains with ``nn``, ``optim`` and
``nn.functional``'s losses, and the step-through shows ``cr.explain``'s ledger,
neuron by neuron. See docs/playground.md.

>>> import chainrule as cr
>>> pg = cr.playground(open_browser=False, dataset="xor", hidden="8,8")  # doctest: +SKIP
>>> pg.url                                                                # doctest: +SKIP
'http://127.0.0.1:8765/#dataset=xor&hidden=8,8'
>>> pg.stop()                                                             # doctest: +SKIP

In Jupyter the returned object shows the page inline (an iframe).
"""

from __future__ import annotations

import html
import sys
import threading
import types
import webbrowser
from typing import Any
from urllib.parse import quote

from .config import Config, ConfigError
from .server import App, PlaygroundServer, is_loopback, make_server

__all__ = ["playground", "Playground", "Config", "ConfigError", "App", "make_server",
           "DEFAULT_PORT"]

#: the port tried first when none is given (a free one is taken when it is busy)
DEFAULT_PORT = 8765


def _in_notebook() -> bool:
    """True inside a Jupyter kernel (where the page is shown inline instead of in a new tab)."""
    ipython = sys.modules.get("IPython")
    if ipython is None:
        return False
    get = getattr(ipython, "get_ipython", None)
    shell = get() if callable(get) else None
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


def _bind(host: str, port: int | None, verbose: bool) -> PlaygroundServer:
    if port is not None:
        try:
            return make_server(host, port, verbose)
        except OSError as e:
            raise OSError(f"playground: cannot listen on {host}:{port} ({e.strerror or e}); "
                          "choose another --port, or 0 for any free port") from None
    try:
        return make_server(host, DEFAULT_PORT, verbose)
    except OSError:
        return make_server(host, 0, verbose)  # the usual port is taken: any free one


def settings_fragment(settings: dict[str, Any]) -> str:
    """Settings (validated) as the URL fragment the page reads, '' when there are none."""
    if not settings:
        return ""
    params = {k: (",".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v)
              for k, v in settings.items()}
    cfg = Config.from_params(params)  # refuse a bad setting here, not on the page
    full = cfg.to_params()
    return "#" + "&".join(f"{k}={quote(full[k], safe=',')}" for k in params)


class Playground:
    """A running playground server (what :func:`playground` returns).

    Attributes
    ----------
    url : str
        The page's address, with the settings given at start in its fragment.
    server : PlaygroundServer

    ``stop()`` shuts it down; ``wait()`` blocks until Ctrl-C (for scripts);
    in Jupyter the object displays the page inline.
    """

    def __init__(self, server: PlaygroundServer, fragment: str = "") -> None:
        self.server = server
        host, port = str(server.server_address[0]), server.server_address[1]  # an IP socket
        shown = f"[{host}]" if ":" in host else host
        if host in ("0.0.0.0", "::"):
            shown = "127.0.0.1"  # reachable from everywhere; this machine calls itself that
        self.base_url = f"http://{shown}:{port}/"
        self.url = self.base_url + fragment
        self._stopped = False
        self._thread = threading.Thread(target=server.serve_forever, name="chainrule-playground",
                                        daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    def stop(self) -> None:
        """Stop serving and release the port (again: nothing happens)."""
        if self._stopped:
            return
        self._stopped = True
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    def wait(self) -> None:
        """Serve until interrupted (Ctrl-C), then stop."""
        try:
            while self._thread.is_alive():
                self._thread.join(timeout=0.5)
        except KeyboardInterrupt:
            pass
        finally:
            self.stop()

    def __enter__(self) -> Playground:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"Playground({self.url!r})"

    def _repr_html_(self) -> str:
        src = html.escape(self.url, quote=True)
        return (f'<iframe src="{src}" width="100%" height="900" style="border:0" '
                f'title="chainrule playground"></iframe>'
                f'<p><a href="{src}" target="_blank">Open the playground in a new tab</a></p>')


def playground(port: int | None = None, host: str = "127.0.0.1",
               open_browser: bool | None = None, block: bool = False,
               verbose: bool = False, **settings: Any) -> Playground:
    """Start the playground server and show the page.

    Parameters
    ----------
    port : int, optional
        Where to listen; by default 8765, or any free port when that is taken.
        0 always takes a free port.
    host : str, default "127.0.0.1"
        Loopback only. Another address (e.g. "0.0.0.0") exposes the
        playground, which has no login, to the network: a warning is printed.
    open_browser : bool, optional
        Open the page in the web browser. Default: yes, except in Jupyter,
        where the returned object shows the page inline.
    block : bool, default False
        Serve until Ctrl-C (for scripts) instead of returning at once.
    verbose : bool
        Log every request on stderr.
    **settings
        The page's initial settings, as in its URL: ``dataset="spiral"``,
        ``hidden="8,8"`` (or ``[8, 8]``), ``act="relu"``, ``lr=0.01``, ... (see
        docs/playground.md for the list). Checked here: a bad one raises.

    Returns
    -------
    Playground
        ``.url``, ``.stop()``, ``.wait()``; displays inline in Jupyter.

    >>> pg = cr.playground(open_browser=False, dataset="spiral", classes=3,   # doctest: +SKIP
    ...                    loss="ce", hidden=[8, 8])
    >>> pg.stop()                                                            # doctest: +SKIP
    """
    fragment = settings_fragment(settings)
    if not is_loopback(host):
        print(f"chainrule playground: warning: listening on {host}: anyone who can reach this "
              "machine can use the playground (it has no login); use the default 127.0.0.1 "
              "unless you mean to share it", file=sys.stderr)
    pg = Playground(_bind(host, port, verbose), fragment)
    notebook = _in_notebook()
    if open_browser is None:
        open_browser = not notebook
    if open_browser:
        try:
            webbrowser.open(pg.url)
        except Exception:  # no browser here: the URL is printed by the caller
            pass
    if block:
        pg.wait()
    return pg


class _CallableModule(types.ModuleType):
    """``cr.playground()`` starts the playground, while ``chainrule.playground`` stays a
    package (``from chainrule.playground import Playground`` keeps working)."""

    def __call__(self, *args: Any, **kwargs: Any) -> Playground:
        return playground(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
