"""``chainrule playground``: start the backpropagation playground and open it in the browser.

The main CLI registers it with ``add_parser(subparsers)``.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = ["add_parser", "run"]

DESCRIPTION = """\
Start the backpropagation playground: a local web page where you pick a data
set, shape a network, train it and watch the decision boundary, then step
through backpropagation neuron by neuron (every number comes from chainrule's
engine and cr.explain). The server listens on 127.0.0.1 only and runs until
you press Ctrl-C.
"""

EPILOG = """\
settings (as in the page's URL), for example:
  chainrule playground dataset=spiral classes=3 loss=ce hidden=8,8 act=relu
  chainrule playground dataset=xor hidden=4 lr=0.1 opt=adam --port 9000
keys: dataset (circle xor gauss spiral moons reg-plane reg-gauss), classes,
samples, noise, train, seed, features, hidden, act, loss (ce bce mse), opt
(sgd momentum adam), lr, momentum, batch, reg (none l1 l2), rrate
"""


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Add ``playground`` to the subcommands of the main parser."""
    p = sub.add_parser(
        "playground",
        help="interactive backpropagation playground in the browser",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("settings", nargs="*", metavar="KEY=VALUE",
                   help="initial settings of the page, e.g. dataset=spiral hidden=8,8")
    p.add_argument("--port", type=int, default=None,
                   help="port to listen on (default 8765, or a free one when it is taken; "
                        "0: any free port)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1, this machine only; another "
                        "address exposes the playground to the network, with a warning)")
    p.add_argument("--no-browser", dest="browser", action="store_false",
                   help="do not open the web browser; just print the URL")
    p.add_argument("--verbose", action="store_true", help="log every request")
    p.set_defaults(func=run)
    return p


def _settings(items: list[str]) -> dict[str, Any]:
    from dataclasses import fields

    from .config import Config

    known = [f.name for f in fields(Config)]
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"playground: {item!r} is not KEY=VALUE (e.g. dataset=spiral)")
        key = key.strip()
        # checked here, not only by the page's parser: a key such as port=
        # or block= would otherwise land on playground()'s own parameters
        if key not in known:
            own = (" (the server's own settings are options: --port, --host, --no-browser, "
                   "--verbose)" if key in ("port", "host", "open_browser", "block", "verbose")
                   else "")
            raise ValueError(f"playground: unknown setting {key!r}; the settings are: "
                             f"{', '.join(known)}{own}")
        out[key] = value.strip()
    return out


def run(args: argparse.Namespace) -> int:
    """Serve until Ctrl-C; errors (a bad setting, a busy port) are one line and status 2."""
    from . import playground

    if args.port is not None and not 0 <= args.port <= 65535:
        raise ValueError(f"playground: --port {args.port} is not a port number (0 to 65535)")
    pg = playground(port=args.port, host=args.host, open_browser=False, verbose=args.verbose,
                    **_settings(args.settings))
    # Ctrl-C is how the playground ends: whenever it comes, stop and exit 0
    try:
        print(f"chainrule playground: serving at {pg.url}", flush=True)
        print("press Ctrl-C to stop", file=sys.stderr, flush=True)
        if args.browser:
            import webbrowser

            try:
                webbrowser.open(pg.url)
            except Exception:  # a headless machine: the printed URL is enough
                pass
        pg.wait()
    except KeyboardInterrupt:
        pg.stop()
    return 0
