"""``cpcp-onion``: publish CPCP's onion services and manage officer workstations' client keys.

  cpcp-onion run                    start the deployment's own tor, publish both onions, stay up
  cpcp-onion --control-port N run   publish on a running tor (cookie auth) instead, and exit
  cpcp-onion add-client NAME        authorize an officer workstation; prints what its tor needs
  cpcp-onion revoke-client NAME     remove a workstation's key (its open circuits are closed)
  cpcp-onion list-clients           the authorized workstations
  cpcp-onion sync-workstations      revoke the keys of workstations of retired officers
                                    (the deployment file's retired entries; as tor's user)
  cpcp-onion status                 tor, the onions, the apps behind them (exit 0: all up)

``run`` prints both addresses as soon as tor has the keys, before the onions are reachable; on
stderr it says when they are published. When tor cannot get there within --timeout (offline,
Tor blocked) it says so on stderr, keeps tor running and keeps trying: a service does not give
up. ``run`` first revokes the keys ``sync-workstations`` would, so that a start never
publishes a retired officer's workstation. The admin commands act on the running tor when there is one (the deployment's own, found
through <data_dir>/tor/control-port, or --control-port), and otherwise only on disk.
"""

from __future__ import annotations

import argparse
import http.client
import logging
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import TextIO

from cpcp.errors import CPCPError
from cpcp.settings import Settings, load_settings

from .clients import admin_key_instructions, check_name, generate_key_pair, workstation_instructions
from .deployment import OnionDeployment
from .errors import OnionError, TorFailed, TorNotRunning
from .services import OFFICER, SOURCE, SSH, OnionPublisher, OnionService, Publication
from .tor import LOOPBACK, SECONDS, Tor, UploadWatch

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
    if SSH in result.addresses:
        admins = len(dep.layout.clients(SSH).names())
        print(f"admin ssh onion: {result.addresses[SSH]} port 22 (client authorization, "
              f"{admins} admin key(s))", flush=True)
    for note in result.notes:
        print(f"{PROG}: note: {note}", file=sys.stderr)


def cmd_run(dep: OnionDeployment, args: argparse.Namespace) -> int:
    if args.control_port is None and args.control_socket is None:
        return _serve(dep, args)
    changed = dep.sync_ssh_clients()
    revoked = _sync_workstations(dep, out=sys.stderr, prefix=f"{PROG}: ")
    republish = ([SSH] if changed else []) + ([OFFICER] if revoked else [])
    with _attach(dep, args) as tor:  # a one-shot publication: give up after --timeout
        print(f"{PROG}: tor {tor.version} (attached)", file=sys.stderr, flush=True)
        OnionPublisher(tor=tor, layout=dep.layout).publish(
            dep.services, timeout=args.timeout, republish=republish,
            on_addresses=lambda r: _print_addresses(dep, r))
        print(f"{PROG}: the onions are published", file=sys.stderr, flush=True)
    return 0


def _serve(dep: OnionDeployment, args: argparse.Namespace) -> int:
    """Our own tor: publish, then stay up until SIGINT/SIGTERM or until tor dies."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    # Before tor starts, so a stop during start-up still ends in tor.close().
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, on_signal)
    dep.sync_ssh_clients()  # a fresh tor: nothing to re-publish
    _sync_workstations(dep, out=sys.stderr, prefix=f"{PROG}: ")  # before publishing: never a retired officer's key
    options = dep.tor_options()
    started = time.monotonic()
    with Tor.launch(data_dir=dep.tor_dir, options=options, name="cpcp-tor") as tor:
        print(f"{PROG}: tor {tor.version} (pid {tor.pid}), log {dep.log_file}",
              file=sys.stderr, flush=True)
        # Subscribed before the onions are set, and only until they are published: tor
        # re-uploads descriptors for as long as it runs, and nobody reads them afterwards.
        with tor.descriptor_uploads() as uploads:
            result = OnionPublisher(tor=tor, layout=dep.layout).publish(
                dep.services, timeout=None, on_addresses=lambda r: _print_addresses(dep, r))
            if not _wait_published(dep, tor, uploads, result, started=started,
                                   warn_every=args.timeout, stop=stop):
                return 0 if stop.is_set() else 1
        while not stop.wait(1.0):
            if not tor.running:
                print(f"{PROG}: tor exited; the onions are down (see {dep.log_file})",
                      file=sys.stderr, flush=True)
                return 1
    return 0


def _wait_published(dep: OnionDeployment, tor: Tor, uploads: UploadWatch, result: Publication, *,
                    started: float, warn_every: float, stop: threading.Event) -> bool:
    """Wait until every onion's descriptor reached an HSDir, saying on stderr when tor is
    bootstrapped and, after ``warn_every`` seconds without publication (then twice as long each
    time), why not yet.

    False if stopped first or tor died. Never gives up on its own: a machine that is offline or
    where Tor is blocked may get there later, and the apps on loopback work meanwhile.
    """
    targets = {address.removesuffix(".onion") for address in result.addresses.values()}
    interval = warn_every
    next_warning = started + interval
    bootstrapped = False
    while not stop.is_set():
        if not tor.running:
            print(f"{PROG}: tor exited before the onions were published (see {dep.log_file})",
                  file=sys.stderr, flush=True)
            return False
        if not bootstrapped:
            progress, summary = tor.bootstrap_progress()
            if progress >= 100:
                bootstrapped = True
                print(f"{PROG}: tor bootstrapped in {time.monotonic() - started:.1f}s",
                      file=sys.stderr, flush=True)
        try:
            uploads.wait(targets, timeout=1.0)
        except TorFailed:
            pass  # not yet
        else:
            print(f"{PROG}: both onions published ({time.monotonic() - started:.1f}s after tor "
                  f"started); they are reachable", file=sys.stderr, flush=True)
            return True
        if time.monotonic() >= next_warning:
            waited = time.monotonic() - started
            if bootstrapped:
                why = f"tor is bootstrapped but has not published them after {waited:.0f}s."
            else:
                why = (f"tor is not bootstrapped after {waited:.0f}s (at {progress}%: {summary}). "
                       "Is this machine offline, or Tor blocked here "
                       "(bridges: [tor] torrc_include)?")
            print(f"{PROG}: the onions are NOT reachable yet: {why} Still trying; tor's log: "
                  f"{dep.log_file}", file=sys.stderr, flush=True)
            # Then less and less often (up to hourly), so a long outage does not flood the log.
            interval = min(interval * 2, max(warn_every, 3600 * SECONDS))
            next_warning = time.monotonic() + interval
    return False


def _apply(dep: OnionDeployment, args: argparse.Namespace) -> None:
    """Re-publish the officer onion on the running tor, if one runs."""
    _republish(dep, lambda: _attach(dep, args), timeout=args.timeout)


def _republish(dep: OnionDeployment, attach: Callable[[], Tor], *, timeout: float) -> None:
    try:
        with attach() as tor:
            progress, summary = tor.bootstrap_progress()
            # A tor that is not bootstrapped could not upload the descriptor before --timeout;
            # it has the change and publishes it once it is (the key is saved either way).
            bootstrapped = progress >= 100
            OnionPublisher(tor=tor, layout=dep.layout).publish(
                dep.services, timeout=timeout if bootstrapped else None, republish=[OFFICER])
            if bootstrapped:
                print(f"{PROG}: officer onion re-published", file=sys.stderr)
            else:
                print(f"{PROG}: tor has the change; it is bootstrapped {progress}% ({summary}) and "
                      "publishes the officer onion once it is up", file=sys.stderr)
    except TorNotRunning:
        print(f"{PROG}: tor is not running; the change applies when '{PROG} run' starts it",
              file=sys.stderr)


def republish_officer_onion(settings: Settings, *, timeout: float = 120 * SECONDS) -> None:
    """After workstation keys were removed on disk (``cpcp-admin deploy`` retiring an officer):
    the deployment's own running tor, if any, re-publishes the officer onion without them."""
    dep = OnionDeployment.from_settings(settings)
    _republish(dep, lambda: Tor.attach_data_dir(dep.tor_dir), timeout=timeout)


def cmd_add_client(dep: OnionDeployment, args: argparse.Namespace) -> int:
    address = dep.layout.address(OFFICER)
    if address is None:
        raise OnionError(f"the officer onion has no address yet: run '{PROG} run' once first")
    if dep.deployment_file is not None:
        retired = dep.deployment().retired_workstations().get(args.name)
        if retired:  # it would be revoked again at the next sync-workstations or start
            raise OnionError(f"workstation {args.name!r} is listed on the entry of retired officer(s) "
                             f"{', '.join(retired)} in {dep.deployment_file}: list it on the serving "
                             "officer's entry first (or pick another name)")
    pair = dep.layout.clients(OFFICER).add(args.name)
    _apply(dep, args)
    sys.stdout.write(workstation_instructions(address, pair, auth_dir=args.auth_dir))
    return 0


def cmd_revoke_client(dep: OnionDeployment, args: argparse.Namespace) -> int:
    dep.layout.clients(OFFICER).revoke(args.name)
    _apply(dep, args)
    print(f"{PROG}: workstation {args.name!r} revoked")
    return 0


def _sync_workstations(dep: OnionDeployment, *, out: TextIO, prefix: str = "") -> bool:
    """Revoke retired officers' workstation keys on disk, one line each; True if any went."""
    revoked = dep.sync_workstations()
    for name, officer in revoked:
        print(f"{prefix}revoked workstation {name} (officer {officer} retired)", file=out, flush=True)
    return bool(revoked)


def cmd_sync_workstations(dep: OnionDeployment, args: argparse.Namespace) -> int:
    """The deployment file's retirements, applied to the officer onion's client keys: what
    ``cpcp-admin deploy`` leaves to tor's user. Prints nothing when nothing changed."""
    if dep.deployment_file is None:
        raise OnionError("deployment_file is not set in the settings: it lists the retired officers")
    if _sync_workstations(dep, out=sys.stdout):
        try:
            _apply(dep, args)
        except CPCPError as exc:
            raise OnionError(f"the workstation keys above are removed, but the running tor did not "
                             f"re-publish the officer onion ({exc}); restart cpcp-onion") from exc
    return 0


def cmd_list_clients(dep: OnionDeployment, args: argparse.Namespace) -> int:
    for name in dep.layout.clients(OFFICER).names():
        print(name)
    return 0


def http_answer(port: int, timeout: float = 5 * SECONDS) -> tuple[bool, str]:
    """Whether the app on 127.0.0.1:``port`` answers HTTP (any status below 500), and how."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request("GET", "/")
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as exc:
        why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        return False, f"does not answer ({why or type(exc).__name__})"
    finally:
        conn.close()
    return status < 500, f"answers (HTTP {status})"


#: The app behind each onion, as status names it.
APP_NAMES = {SOURCE: "source app", OFFICER: "gateway", SSH: "sshd"}


def cmd_status(dep: OnionDeployment, args: argparse.Namespace) -> int:
    """tor, each onion, the app behind each; exit 0 only if all are up.

    "published" is what tor can tell: it serves the onion and is bootstrapped (it uploads the
    descriptor within moments; ``run`` says when it has). Each app must answer HTTP on the
    loopback port its onion forwards to.
    """
    served: set[str] = set()
    progress = 0
    try:
        with _attach(dep, args) as tor:
            progress, summary = tor.bootstrap_progress()
            pow_ok = tor.supports_option("HiddenServicePoWDefensesEnabled")
            print(f"tor: {tor.version}, bootstrapped {progress}% ({summary}); "
                  f"proof-of-work defences {'available' if pow_ok else 'not available'}")
            served = set(OnionPublisher(tor=tor, layout=dep.layout).published())
    except TorNotRunning as exc:
        print(f"tor: not running ({exc})")
    up = progress >= 100
    for service in dep.services:
        address = dep.layout.address(service.name)
        if service.name not in served:
            state = "NOT published"
        elif progress < 100:
            state = "NOT reachable yet (tor is not bootstrapped)"
        else:
            state = "published"
        extra = ""
        if service.client_auth:
            who = "admin key(s)" if service.name == SSH else "workstation(s)"
            extra = f", {len(dep.layout.clients(service.name).names())} {who}"
        print(f"{service.name} onion: {address or '(no key yet)'} -> 127.0.0.1:{service.target_port}, "
              f"{state}{extra}")
        up = up and state == "published"
    for service in dep.services:
        up = _app_status(service) and up
    return 0 if up else 1


def ssh_answer(port: int, timeout: float = 5 * SECONDS) -> tuple[bool, str]:
    """Whether an SSH server greets on loopback ``port`` (its "SSH-2.0-..." banner)."""
    try:
        conn = socket.create_connection((LOOPBACK, port), timeout=timeout)
    except OSError as exc:
        return False, f"does not answer ({exc.strerror or type(exc).__name__})"
    try:
        banner = conn.recv(64)
    except OSError:  # silent until the timeout: not sshd, which greets first
        banner = b""
    finally:
        conn.close()
    if not banner.startswith(b"SSH-"):
        return False, "answers, but not as an SSH server"
    return True, "answers (SSH)"


def _app_status(service: OnionService) -> bool:
    if service.name == SSH:
        answers, how = ssh_answer(service.target_port)
        print(f"{APP_NAMES[SSH]}: {LOOPBACK}:{service.target_port} {how}")
        return answers
    answers, how = http_answer(service.target_port)
    name = APP_NAMES.get(service.name, service.name)
    print(f"{name}: http://{LOOPBACK}:{service.target_port}/ {how}")
    return answers


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not value > 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"not a positive number of seconds: {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, help="cpcp.toml (default: $CPCP_CONFIG)")
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--control-port", type=int, help="a running tor's loopback control port")
    where.add_argument("--control-socket", type=Path, help="a running tor's control socket")
    parser.add_argument("--timeout", type=_seconds, default=300 * SECONDS,
                        help="seconds to wait for bootstrap and publication (default 300); 'run' "
                             "on its own tor then says so and keeps trying, the others give up")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", help="publish both onions (on our own tor unless --control-port)")
    add = sub.add_parser("add-client", help="authorize an officer workstation")
    add.add_argument("name")
    add.add_argument("--auth-dir", default="/var/lib/tor/onion_auth",
                     help="the workstation's ClientOnionAuthDir, for the printed lines")
    revoke = sub.add_parser("revoke-client", help="remove an officer workstation's key")
    revoke.add_argument("name")
    sub.add_parser("list-clients", help="list authorized officer workstations")
    sub.add_parser("sync-workstations", help="revoke the workstation keys listed on retired "
                                             "officers' entries of the deployment file")
    sub.add_parser("status", help="say what is up")
    admin = sub.add_parser("admin-key", help="make a client key pair for the admin SSH onion, "
                                             "on the admin's own machine (needs no settings)")
    admin.add_argument("name")
    return parser


COMMANDS = {
    "run": cmd_run,
    "add-client": cmd_add_client,
    "revoke-client": cmd_revoke_client,
    "list-clients": cmd_list_clients,
    "sync-workstations": cmd_sync_workstations,
    "status": cmd_status,
}


def cmd_admin_key(args: argparse.Namespace) -> int:
    check_name(args.name)
    sys.stdout.write(admin_key_instructions(generate_key_pair(args.name)))
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format=f"{PROG}: %(message)s")
    try:
        if args.command == "admin-key":
            return cmd_admin_key(args)
        dep = OnionDeployment.from_settings(load_settings(args.config))
        return COMMANDS[args.command](dep, args)
    except CPCPError as exc:
        print(f"{PROG}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
