"""CPCP's two onion services, published through a :class:`~onion.tor.TorControl`.

- **source** (public v3 onion) in front of the source app;
- **officer** (v3 onion with client authorization) in front of the gateway.

Each is a ``HiddenServiceDir`` under ``<data_dir>/onion/``, set on the running tor with SETCONF.
Why a directory rather than ``ADD_ONION`` with a saved key: tor applies the per-service
denial-of-service options (introduction-point rate limits, proof-of-work, stream limits) only
to services from its configuration, not to ephemeral ones; the service's ed25519 key is written
by tor itself, 0600 in a 0700 folder, and read back on every start, so the address survives
restarts without the key ever passing through the control port; and revoking a workstation is
deleting one public-key file. The cost: the tor must run as a user that can own those folders
(the deployment's own tor does; an attached system tor must be the deployment's own instance).

Fail closed: a key file readable by others is refused; the officer onion always carries at
least one client key (see :mod:`onion.clients`), so it is never published open.
"""

from __future__ import annotations

import logging
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NewType

from .clients import ClientRegistry
from .errors import OnionError, TorFailed, UnsafeKeyFile
from .tor import LOOPBACK, SECONDS, OptionLine, TorControl

log = logging.getLogger(__name__)

#: "<56 base32 characters>.onion"
OnionAddress = NewType("OnionAddress", str)

SOURCE = "source"
OFFICER = "officer"
SSH = "ssh"
KEY_FILE = "hs_ed25519_secret_key"


@dataclass(frozen=True)
class DosDefences:
    """Onion-service denial-of-service defences, each applied when the tor knows it.

    Introduction rate limits are enforced by the introduction points (tor >= 0.4.2);
    proof-of-work (tor >= 0.4.8, built with the pow module) makes clients pay for
    introductions only while the service is under load, so Tor Browser users see no cost
    normally.
    """

    intro_rate_per_sec: int = 25
    intro_burst_per_sec: int = 200
    proof_of_work: bool = True
    pow_queue_rate: int = 250
    pow_queue_burst: int = 2500
    #: Streams per rendezvous circuit; above it the circuit is closed (0: no limit).
    max_streams: int = 32


@dataclass(frozen=True)
class OnionService:
    """One onion service: virtual port 80 forwarded to a loopback ``target_port``."""

    name: str
    target_port: int
    client_auth: bool = False
    virtual_port: int = 80
    target_host: str = LOOPBACK
    #: Tor writes a PROXY protocol line with the rendezvous circuit's id first on each
    #: connection (``HiddenServiceExportCircuitID haproxy``); the app must read it.
    export_circuit_id: bool = False

    def __post_init__(self) -> None:
        if self.target_host != LOOPBACK:
            raise OnionError(f"onion {self.name}: the target must be {LOOPBACK}, not {self.target_host}")
        if not (0 < self.target_port < 65536 and 0 < self.virtual_port < 65536):
            raise OnionError(f"onion {self.name}: bad port")


@dataclass(frozen=True)
class OnionLayout:
    """Where the onion services live: ``<data_dir>/onion/<name>/``."""

    root: Path

    @classmethod
    def for_data_dir(cls, data_dir: Path) -> OnionLayout:
        return cls(data_dir.resolve() / "onion")

    def service_dir(self, name: str) -> Path:
        return self.root / name

    def clients(self, name: str) -> ClientRegistry:
        return ClientRegistry(self.service_dir(name) / "authorized_clients")

    def address(self, name: str) -> OnionAddress | None:
        """The service's address, once tor has created its key; None before."""
        try:
            text = (self.service_dir(name) / "hostname").read_text(encoding="ascii").strip()
        except FileNotFoundError:
            return None
        if not (text.endswith(".onion") and len(text) == 62):
            raise OnionError(f"{self.service_dir(name) / 'hostname'}: not a v3 onion address")
        return OnionAddress(text)

    def check_key(self, name: str) -> None:
        """Refuse a service key that others than its owner could read (it *is* the address)."""
        path = self.service_dir(name) / KEY_FILE
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise UnsafeKeyFile(f"{path} has mode {mode:04o}; it must be 0600")
        folder = stat.S_IMODE(path.parent.stat().st_mode)
        if folder & 0o077:
            raise UnsafeKeyFile(f"{path.parent} has mode {folder:04o}; it must be 0700")


def service_lines(service: OnionService, dos: DosDefences, supports: Callable[[str], bool],
                  notes: list[str] | None = None) -> list[OptionLine]:
    """The torrc lines that follow ``HiddenServiceDir`` for ``service``.

    ``supports`` says whether the tor knows an option; what it does not know is left out, with a
    note appended to ``notes`` (the caller logs them).
    """
    lines: list[OptionLine] = [
        ("HiddenServiceVersion", "3"),
        ("HiddenServicePort", f"{service.virtual_port} {service.target_host}:{service.target_port}"),
    ]
    if service.export_circuit_id:
        # Not optional like the defences below: without it the source app could not tell
        # callers apart, and one jammer would lock every source out (tor has it since 0.4.0).
        lines.append(("HiddenServiceExportCircuitID", "haproxy"))
    wanted: list[OptionLine] = [
        ("HiddenServiceEnableIntroDoSDefense", "1"),
        ("HiddenServiceEnableIntroDoSRatePerSec", str(dos.intro_rate_per_sec)),
        ("HiddenServiceEnableIntroDoSBurstPerSec", str(dos.intro_burst_per_sec)),
    ]
    if dos.proof_of_work:
        wanted += [
            ("HiddenServicePoWDefensesEnabled", "1"),
            ("HiddenServicePoWQueueRate", str(dos.pow_queue_rate)),
            ("HiddenServicePoWQueueBurst", str(dos.pow_queue_burst)),
        ]
    if dos.max_streams:
        wanted += [
            ("HiddenServiceMaxStreams", str(dos.max_streams)),
            ("HiddenServiceMaxStreamsCloseCircuit", "1"),
        ]
    skipped = [key for key, _ in wanted if not supports(key)]
    if skipped and notes is not None:
        notes.append(f"onion {service.name}: this tor lacks {', '.join(skipped)}; "
                     f"those defences are off (proof-of-work needs tor >= 0.4.8)")
    lines += [(key, value) for key, value in wanted if key not in skipped]
    return lines


@dataclass
class Publication:
    """What :meth:`OnionPublisher.publish` did."""

    addresses: dict[str, OnionAddress] = field(default_factory=dict)
    uploaded: list[str] = field(default_factory=list)  # services whose descriptor was (re)published
    notes: list[str] = field(default_factory=list)


class OnionPublisher:
    """Publishes CPCP's onion services on one tor, keeping any other service that tor has."""

    def __init__(self, *, tor: TorControl, layout: OnionLayout, dos: DosDefences | None = None) -> None:
        self._tor = tor
        self._layout = layout
        self._dos = dos or DosDefences()

    def desired(self, services: Sequence[OnionService], notes: list[str]) -> dict[str, list[OptionLine]]:
        """HiddenServiceDir -> lines, for ``services``."""
        supports = self._tor.supports_option
        return {str(self._layout.service_dir(s.name)): service_lines(s, self._dos, supports, notes)
                for s in services}

    def publish(self, services: Sequence[OnionService], *, timeout: float | None = 120 * SECONDS,
                republish: Sequence[str] = (),
                on_addresses: Callable[[Publication], None] | None = None) -> Publication:
        """Make tor serve ``services``; wait until each new or changed one has a descriptor on
        an HSDir (``timeout=None``: do not wait). ``on_addresses`` is called as soon as the
        addresses are known, before that wait.

        ``republish`` names services to take down and put back although their torrc lines did
        not change: after a client key was added or revoked. Taking one down closes its
        introduction and rendezvous circuits; v3 client authorization only encrypts the
        descriptor, so without this a revoked workstation that kept the old descriptor could
        still introduce itself at the old introduction points.
        """
        result = Publication()
        self._prepare(services)
        wanted = self.desired(services, result.notes)
        if result.notes:
            result.notes = [f"tor {self._tor.version}: {note}" for note in result.notes]
        for note in result.notes:
            log.warning("%s", note)
        current = self._tor.hidden_services()
        others = {d: lines for d, lines in current.items() if d not in wanted}
        folder_of = {s.name: str(self._layout.service_dir(s.name)) for s in services}
        changed = [name for name, folder in folder_of.items()
                   if current.get(folder) != wanted[folder] or name in republish]
        down = {folder_of[n] for n in republish if n in folder_of and folder_of[n] in current}
        with self._tor.descriptor_uploads() as uploads:
            if down:
                self._tor.set_hidden_services(
                    {**others, **{d: lines for d, lines in wanted.items() if d not in down}})
            if changed:
                self._tor.set_hidden_services({**others, **wanted})
            for service in services:
                result.addresses[service.name] = self._created(service.name)
            if on_addresses is not None:
                on_addresses(result)
            targets = {result.addresses[n].removesuffix(".onion"): n for n in changed}
            if targets and timeout is not None:
                uploads.wait(set(targets), timeout)
                result.uploaded = sorted(targets.values())
        return result

    def _prepare(self, services: Sequence[OnionService]) -> None:
        """Folders 0700; a client-authorized service gets its key folder before tor sees it."""
        self._layout.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._layout.root.chmod(0o700)
        for service in services:
            folder = self._layout.service_dir(service.name)
            folder.mkdir(mode=0o700, exist_ok=True)
            folder.chmod(0o700)
            if service.client_auth:
                registry = self._layout.clients(service.name)
                registry.ensure()
                if not registry.public_keys():
                    raise OnionError(f"onion {service.name}: no client key; refusing to publish it open")

    def _created(self, name: str) -> OnionAddress:
        """The address tor wrote for ``name``, after checking its key file's mode."""
        address = self._layout.address(name)
        if address is None:
            raise TorFailed(f"onion {name}: tor wrote no hostname in {self._layout.service_dir(name)}")
        self._layout.check_key(name)
        return address

    def unpublish(self, names: Sequence[str]) -> None:
        """Stop serving the named services (their keys stay on disk)."""
        drop = {str(self._layout.service_dir(n)) for n in names}
        self._tor.set_hidden_services({d: lines for d, lines in self._tor.hidden_services().items()
                                       if d not in drop})

    def published(self) -> frozenset[str]:
        """The CPCP services this tor serves now (what tor has, not what is on disk)."""
        return frozenset(Path(d).name for d in self._tor.hidden_services()
                         if Path(d).parent == self._layout.root)


def cpcp_services(*, source_port: int, gateway_port: int, ssh_port: int = 0) -> list[OnionService]:
    """The source onion in front of the source app (which reads tor's circuit ids to budget
    wrong codenames per circuit: source_app/circuits.py), the officer onion in front of the
    gateway and, with ``ssh_port``, the admin SSH onion (port 22, client authorization) in
    front of sshd on loopback."""
    services = [
        OnionService(SOURCE, target_port=source_port, export_circuit_id=True),
        OnionService(OFFICER, target_port=gateway_port, client_auth=True),
    ]
    if ssh_port:
        services.append(OnionService(SSH, target_port=ssh_port, virtual_port=22, client_auth=True))
    return services
