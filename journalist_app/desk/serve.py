"""``cpcp-desk --config desk.toml``: serve the desk with Hypercorn on loopback.

No access log (it would record which cases were opened when), no Server header. Start-up
problems (bad settings, no private key) are one clear line and exit status 2.
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

from . import create_app
from .errors import DeskError
from .framing import close_after_ambiguous_framing
from .settings import load_desk_settings


def hypercorn_config(host: str, port: int) -> Config:
    config = Config()
    config.bind = [f"[{host}]:{port}" if ":" in host else f"{host}:{port}"]
    config.accesslog = None
    config.include_server_header = False
    config.workers = 1  # sessions and decrypted metadata live in this process's memory
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpcp-desk", description="The CPCP officer desk (loopback only).")
    parser.add_argument("--config", type=Path, help="desk.toml (default: $CPCP_DESK_CONFIG)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", force=True)
    try:
        settings = load_desk_settings(args.config)
        app = create_app(settings)
    except DeskError as exc:
        print(f"cpcp-desk: {exc}", file=sys.stderr)
        return 2
    shutdown = asyncio.Event()

    async def run() -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, shutdown.set)
        print(f"cpcp-desk: http://{settings.host}:{settings.port}/", flush=True)
        await serve(close_after_ambiguous_framing(app), hypercorn_config(settings.host, settings.port), shutdown_trigger=shutdown.wait)

    asyncio.run(run())
    return 0


if __name__ == "__main__":
    sys.exit(main())
