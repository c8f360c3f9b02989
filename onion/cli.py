"""``cpcp-onion``: publish CPCP's onion services and manage officer workstations' client keys.

  cpcp-onion run                    start the deployment's own tor, publish both onions, stay up
  cpcp-onion --control-port N run   publish on a running tor (cookie auth) instead, and exit
  cpcp-onion add-client NAME        authorize an officer workstation; prints what its tor needs
  cpcp-onion revoke-client NAME     remove a workstation's key (its open circuits are closed)
  cpcp-onion list-clients           the authorized workstations
  cpcp-onion status                 tor, the onion addresses, what is published (exit 0: all up)

The admin commands act on the running tor when there is one (the deployment's own, found
through <data_dir>/tor/control-port, or --control-port), and otherwise only on disk.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from cpcp.errors import CPCPError
from cpcp.settings import load_settings

from .clients import workstation_instructions
from .deployment import OnionDeployment
from .errors import OnionError, TorNotRunning
from .services import OFFICER, SOURCE, OnionPublisher, Publication
from .tor import SECONDS, Tor

PROG = "cpcp-onion"


def _attach(dep: OnionDeployment, args: argparse.Namespace) -> Tor:
    if args.control_port is not None:
        return Tor.attach(control_port=args.control_port)
    if args.control_socket is not None:
        return Tor.attach(control_socket=args.control_socket)
    return Tor.attach_data_dir(dep.tor_dir)


def _print_addresses(dep: OnionDeployment, result: Publication) -> None:
    source, officer = result.addresses[SOURCE], result.addresses[OFFICER]
    workstations = len(dep.layout.clients(OFFICER).names())
    print(f"source onion: http://{source}/", flush=True)
    print(f"officer onion: http://{officer}/ (client authorization, {workstations} workstation(s))",
          flush=True)
    for note in result.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)


def cmd_run(dep: OnionDeployment, args: argparse.Namespace) -> int:
    attached = args.control_port is not None or args.control_socket is not None
    if attached:
        tor = _attach(dep, args)
    else:
        tor = Tor.launch(data_dir=dep.tor_dir, options=dep.tor_options(), name="cpcp-tor")
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    with tor:
        print(f"{PROG}: tor {tor.version} ({'attached' if attached else f'pid {tor.pid}'})",
              file=sys.stderr, flush=True)
        OnionPublisher(tor=tor, layout=dep.layout).publish(
            dep.services, timeout=args.timeout, on_addresses=lambda r: _print_addresses(dep, r))
        print(f"{PROG}: both onions published", file=sys.stderr, flush=True)
        if attached:
            return 0
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, on_signal)
        while not stop.wait(1.0):
            if not tor.running:
                print(f"{PROG}: tor exited", file=sys.stderr)
                return 1
    return 0


def _apply(dep: OnionDeployment, args: argparse.Namespace) -> None:
    """Re-publish the officer onion on the running tor, if one runs."""
    try:
        with _attach(dep, args) as tor:
            OnionPublisher(tor=tor, layout=dep.layout).publish(
                dep.services, timeout=args.timeout, republish=[OFFICER])
            print(f"{PROG}: officer onion re-published", file=sys.stderr)
    except TorNotRunning:
        print(f"{PROG}: tor is not running; the change applies when '{PROG} run' starts it",
              file=sys.stderr)


def cmd_add_client(dep: OnionDeployment, args: argparse.Namespace) -> int:
    address = dep.layout.address(OFFICER)
    if address is None:
        raise OnionError(f"the officer onion has no address yet: run '{PROG} run' once first")
    pair = dep.layout.clients(OFFICER).add(args.name)
    _apply(dep, args)
    sys.stdout.write(workstation_instructions(address, pair, auth_dir=args.auth_dir))
    return 0


def cmd_revoke_client(dep: OnionDeployment, args: argparse.Namespace) -> int:
    dep.layout.clients(OFFICER).revoke(args.name)
    _apply(dep, args)
    print(f"{PROG}: workstation {args.name!r} revoked")
    return 0


def cmd_list_clients(dep: OnionDeployment, args: argparse.Namespace) -> int:
    for name in dep.layout.clients(OFFICER).names():
        print(name)
    return 0


def cmd_status(dep: OnionDeployment, args: argparse.Namespace) -> int:
    up = True
    served: set[str] = set()
    try:
        with _attach(dep, args) as tor:
            progress, summary = tor.bootstrap_progress()
            pow_ok = tor.supports_option("HiddenServicePoWDefensesEnabled")
            print(f"tor: {tor.version}, bootstrapped {progress}% ({summary}); "
                  f"proof-of-work defences {'available' if pow_ok else 'not available'}")
            served = set(OnionPublisher(tor=tor, layout=dep.layout).published())
            up = progress >= 100
    except TorNotRunning as exc:
        print(f"tor: not running ({exc})")
        up = False
    for service in dep.services:
        address = dep.layout.address(service.name)
        state = "published" if service.name in served else "NOT published"
        extra = ""
        if service.client_auth:
            extra = f", {len(dep.layout.clients(service.name).names())} workstation(s)"
        print(f"{service.name} onion: {address or '(no key yet)'} -> 127.0.0.1:{service.target_port}, "
              f"{state}{extra}")
        up = up and service.name in served
    return 0 if up else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="cpcp.toml (default: $CPCP_CONFIG)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--control-port", type=int, help="a running tor's loopback control port")
    where.add_argument("--control-socket", type=Path, help="a running tor's control socket")
    parser.add_argument("--timeout", type=float, default=300 * SECONDS,
                        help="seconds to wait for bootstrap and publication (default 300)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="publish both onions (on our own tor unless --control-port)")
    add = sub.add_parser("add-client", help="authorize an officer workstation")
    add.add_argument("name")
    add.add_argument("--auth-dir", default="/var/lib/tor/onion_auth",
                     help="the workstation's ClientOnionAuthDir, for the printed lines")
    revoke = sub.add_parser("revoke-client", help="remove an officer workstation's key")
    revoke.add_argument("name")
    sub.add_parser("list-clients", help="list authorized officer workstations")
    sub.add_parser("status", help="say what is up")
    return parser


COMMANDS = {
    "run": cmd_run,
    "add-client": cmd_add_client,
    "revoke-client": cmd_revoke_client,
    "list-clients": cmd_list_clients,
    "status": cmd_status,
}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    try:
        dep = OnionDeployment.from_settings(load_settings(args.config))
        return COMMANDS[args.command](dep, args)
    except CPCPError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
