"""``cpcp-alerts``: the long-running alerter (cpcp/alerts.py), as its own system user.

It needs the database and the deployment file (for the alert URLs), nothing else of the server: not the data
folder's secrets, store or keyrings (so it builds no core services), and never a request.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from pathlib import Path

from .alertconfig import load_alert_config
from .alerts import Alerter
from .audit import AuditLog
from .db import make_engine, make_sessionmaker
from .errors import CPCPError
from .settings import load_settings


async def serve(config_file: Path | None, *, poll_seconds: float) -> None:
    settings = load_settings(config_file)
    if settings.deployment_file is None:
        raise CPCPError("deployment_file is not set: it says who gets alerts")
    alerts = load_alert_config(settings.deployment_file)
    engine = make_engine(settings.database_url)
    sessions = make_sessionmaker(engine)
    alerter = Alerter(sessions=sessions, audit=AuditLog(sessions=sessions), config=alerts,
                      poll_seconds=poll_seconds)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    units = sum(1 for u in alerts.units.values() if u.urls)
    print(f"cpcp-alerts: {units} unit(s) with alerts, oversight "
          f"{'set' if alerts.oversight else 'not set'}, delay {alerts.min_delay:.0f}-"
          f"{alerts.max_delay:.0f}s", flush=True)
    try:
        await alerter.run(stop)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpcp-alerts", description=__doc__)
    parser.add_argument("--config", type=Path, help="cpcp.toml (default: $CPCP_CONFIG)")
    parser.add_argument("--poll", type=float, default=5.0, help="seconds between polls")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    # Apprise's own messages can carry a URL's user name or host: kept out of the journal.
    logging.getLogger("apprise").setLevel(logging.CRITICAL + 1)
    try:
        asyncio.run(serve(args.config, poll_seconds=args.poll))
    except CPCPError as exc:
        print(f"cpcp-alerts: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
