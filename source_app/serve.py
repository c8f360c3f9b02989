"""``cpcp-source``: serve the source app with Hypercorn on loopback (Tor forwards to it).

No access log (it would hold request times and paths), no Server header, one worker: the
sessions live in this process's memory.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from hypercorn.asyncio import serve
from hypercorn.config import Config

from cpcp.errors import CPCPError
from cpcp.services import build_core, start_core
from cpcp.settings import Settings, load_settings

from . import create_app


def hypercorn_config(settings: Settings) -> Config:
    config = Config()
    config.bind = [f"{settings.source.host}:{settings.source.port}"]
    config.accesslog = None
    config.include_server_header = False
    config.workers = 1
    # A slow Tor upload of hundreds of MB must not be cut off; idle connections still are.
    config.keep_alive_timeout = 30
    config.h11_max_incomplete_size = 64 * 1024
    return config


def setup_logging(settings: Settings) -> None:
    """Errors and start-up only, to the data folder's log and stderr; never request details."""
    settings.log_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    handlers: list[logging.Handler] = [
        logging.FileHandler(settings.log_dir / "source_app.log"),
        logging.StreamHandler(sys.stderr),
    ]
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s",
                        handlers=handlers, force=True)
    # python-gnupg logs gpg's exit codes and, at debug level, its command lines: keep it quiet.
    logging.getLogger("gnupg").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpcp-source", description=__doc__)
    parser.add_argument("--config", type=Path, help="cpcp.toml (default: $CPCP_CONFIG)")
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
        setup_logging(settings)
        core = build_core(settings)
        app = create_app(settings, core=core)
    except CPCPError as exc:
        print(f"cpcp-source: {exc}", file=sys.stderr)
        return 2
    config = hypercorn_config(settings)
    shutdown = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.set)
        # Checked here, in the serving loop, so a bad key is one clear line, not a traceback.
        await start_core(core)
        print(f"CPCP source app: http://{settings.source.host}:{settings.source.port}/", flush=True)
        await serve(app, config, shutdown_trigger=shutdown.wait)

    try:
        asyncio.run(run())
    except CPCPError as exc:
        print(f"cpcp-source: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
