"""Serving a server app with Hypercorn on loopback (Tor forwards to it), for every app.

No access log (it would hold request times and paths), no Server header, one worker: source
sessions live in the process's memory. Start-up checks run before the socket opens, so a bad
key is one clear line and exit status 2, not a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from hypercorn.asyncio import serve
from hypercorn.config import Config

from .errors import CPCPError
from .framing import close_after_ambiguous_framing
from .services import CoreServices, Role, build_core, start_core
from .settings import Settings, load_settings
from .store import ensure_mode


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"{host}:{port}"]
    config.accesslog = None
    config.include_server_header = False
    config.workers = 1
    # A slow Tor upload of hundreds of MB must not be cut off; idle connections still are.
    config.keep_alive_timeout = 30
    return config


def setup_logging(settings: Settings, name: str) -> None:
    """Errors and start-up only, to the data folder's log and stderr; never request details."""
    # One folder, a file per app: shared by the two apps' users where they are two.
    settings.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    ensure_mode(settings.log_dir, 0o2770 if settings.shared_data else 0o700)
    handlers: list[logging.Handler] = [
        logging.FileHandler(settings.log_dir / f"{name}.log"),
        logging.StreamHandler(sys.stderr),
    ]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    # python-gnupg logs gpg's exit codes and, at debug level, its command lines: keep it quiet.
    logging.getLogger("gnupg").setLevel(logging.ERROR)


def main(
    *,
    prog: str,
    description: str,
    create_app: Callable[..., Any],
    address: Callable[[Settings], tuple[str, int]],
    argv: list[str] | None = None,
    serve_app: Callable[..., Awaitable[None]] = serve,
    role: Role = "all",
) -> int:
    """Run one server app. ``serve_app`` is Hypercorn's ``serve`` unless the app brings its
    own accept loop (the source app reads tor's PROXY lines: source_app/circuits.py)."""
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", type=Path, help="cpcp.toml (default: $CPCP_CONFIG)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        setup_logging(settings, prog)
        core: CoreServices = build_core(settings, role=role)
        app = create_app(settings, core=core)
    except CPCPError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    host, port = address(settings)
    shutdown = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.set)
        await start_core(core)
        print(f"{prog}: http://{host}:{port}/", flush=True)
        await serve_app(close_after_ambiguous_framing(app), hypercorn_config(host, port),
                        shutdown_trigger=shutdown.wait)

    try:
        asyncio.run(run())
    except CPCPError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return 2
    return 0
