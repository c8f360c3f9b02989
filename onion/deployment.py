"""A deployment's onion setup, derived once from the one :class:`cpcp.settings.Settings`.

The tor CPCP owns keeps its DataDirectory at ``<data_dir>/tor`` and logs to
``<data_dir>/logs/tor.log``; the onion services live in ``<data_dir>/onion/``, where
``<data_dir>`` is ``[tor] data_dir`` if set (a folder of tor's own user), else the deployment's
data folder. The setting
``[tor] torrc_include`` adds lines of the admin's own (bridges, a test network's authorities)
after CPCP's.

The deployment file (``deployment_file``) says which officers are retired: their workstations'
client keys of the officer onion are revoked here, by tor's user, who alone can write them
(:meth:`OnionDeployment.sync_workstations`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cpcp.deployment import Deployment, load_deployment
from cpcp.errors import ConfigError
from cpcp.settings import Settings

from .clients import parse_client_lines
from .errors import OnionError, TorFailed, UnknownClient
from .services import OFFICER, SSH, OnionLayout, OnionService, cpcp_services
from .tor import OptionLine, TorOptions, check_option, known_options, server_options

#: The only options a torrc_include may set: how this tor reaches the Tor network (bridges,
#: proxies, firewalls, directory authorities for a test network), which relays it uses, and
#: logging. Everything else (listeners, the control port and its authentication, folders,
#: onion services, SafeLogging, DisableNetwork, crypto engines...) is CPCP's or could weaken
#: tor or take the onions down. ClientTransportPlugin runs a program (obfs4proxy): the
#: fragment is trusted as much as cpcp.toml, and must be no more writable than it.
ALLOWED_OPTIONS = frozenset({
    "UseBridges", "Bridge", "ClientTransportPlugin",
    "HTTPSProxy", "HTTPSProxyAuthenticator", "Socks4Proxy", "Socks5Proxy", "Socks5ProxyUsername",
    "Socks5ProxyPassword", "TCPProxy", "ReachableAddresses", "ReachableORAddresses",
    "FascistFirewall", "FirewallPorts", "ClientUseIPv4", "ClientUseIPv6",
    "DirAuthority", "AlternateBridgeAuthority", "FallbackDir", "UseDefaultFallbackDirs",
    "TestingTorNetwork", "PathsNeededToBuildCircuits", "ShutdownWaitLength",
    "EntryNodes", "ExcludeNodes", "ExcludeExitNodes", "StrictNodes", "NumEntryGuards",
    "BandwidthRate", "BandwidthBurst", "Log",
})


def parse_torrc_fragment(text: str, *, where: str, known: frozenset[str]) -> list[OptionLine]:
    """The ``Option value`` lines of a torrc fragment, each under its canonical option name.

    Only plain lines (and ``#`` comments): no ``%include``, quoted values or continuations.
    ``known`` is what the tor binary knows; an option outside it is refused, which also refuses
    tor's abbreviations (``ControlP`` would be ControlPort) before the owned-option check.
    """
    canonical = {name.lower(): name for name in known}
    lines: list[OptionLine] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()  # tor, too, ends a plain value at '#'
        if not line:
            continue
        at = f"{where}:{number}"
        if line.endswith("\\") or line.startswith("%"):
            raise ConfigError(f"{at}: only plain 'Option value' lines are supported: {line!r}")
        key, *rest = line.split(None, 1)
        value = rest[0].strip() if rest else ""
        name = canonical.get(key.lower())
        if name is None:
            raise ConfigError(f"{at}: this tor has no option {key!r}")
        if not value:
            raise ConfigError(f"{at}: {name} has no value")
        if name not in ALLOWED_OPTIONS:
            raise ConfigError(f"{at}: {name} may not be set here (only bridges, proxies, firewalls, "
                              "directory authorities, relay choice, bandwidth and Log)")
        try:
            check_option(name, value)
        except TorFailed as exc:
            raise ConfigError(f"{at}: {exc}") from exc
        lines.append((name, value))
    return lines


@dataclass(frozen=True)
class OnionDeployment:
    data_dir: Path
    tor_dir: Path
    log_file: Path
    layout: OnionLayout
    services: tuple[OnionService, ...]
    torrc_include: Path | None = None
    ssh_clients_file: Path | None = None
    deployment_file: Path | None = None

    @classmethod
    def from_settings(cls, settings: Settings) -> OnionDeployment:
        data_dir = (settings.tor.data_dir or settings.data_dir).resolve()
        return cls(
            data_dir=data_dir,
            tor_dir=data_dir / "tor",
            log_file=data_dir / "logs" / "tor.log",
            layout=OnionLayout.for_data_dir(data_dir),
            services=tuple(cpcp_services(source_port=settings.source.port,
                                         gateway_port=settings.gateway.port,
                                         ssh_port=settings.tor.ssh_port)),
            torrc_include=settings.tor.torrc_include,
            ssh_clients_file=settings.tor.ssh_clients_file,
            deployment_file=settings.deployment_file,
        )

    def sync_workstations(self) -> list[tuple[str, str]]:
        """Revoke the officer-onion client key of every workstation listed on a retired
        officer's entry of the deployment file and by no serving officer (the rule of
        ``cpcp-admin deploy``); (workstation, officer) for each key that went, [] when none.

        On disk only: the caller re-publishes the officer onion on a running tor. No
        deployment file: nothing to do. A broken one is a ConfigError, before any change.
        """
        if self.deployment_file is None:
            return []
        gone = self.deployment().retired_workstations()
        registry = self.layout.clients(OFFICER)
        revoked: list[tuple[str, str]] = []
        for name in registry.names():
            if name in gone:
                try:
                    registry.revoke(name)
                except UnknownClient:
                    continue  # removed meanwhile (a cpcp-onion run starting at the same time)
                revoked.append((name, ", ".join(gone[name])))
        return revoked

    def deployment(self) -> Deployment:
        if self.deployment_file is None:
            raise ConfigError("deployment_file is not set")
        return load_deployment(self.deployment_file)

    def sync_ssh_clients(self) -> bool:
        """Authorize exactly the admins' keys of ``ssh_clients_file`` on the SSH onion (if it
        is on); True if that changed its keys. No key at all is refused, never published open."""
        if not any(s.name == SSH for s in self.services) or self.ssh_clients_file is None:
            return False
        path = self.ssh_clients_file
        try:
            if path.stat().st_mode & 0o022:
                raise ConfigError(f"tor.ssh_clients_file: {path} is writable by group or others; "
                                  "it says who may reach the SSH onion: chmod go-w")
            keys = parse_client_lines(path.read_text(encoding="ascii"), where=str(path))
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigError(f"tor.ssh_clients_file: cannot read {path}: {exc}") from exc
        if not keys:
            raise OnionError(f"onion {SSH}: {path} lists no admin key; refusing to publish it")
        return self.layout.clients(SSH).replace(keys)

    def tor_options(self, known: Callable[[], frozenset[str]] = known_options) -> TorOptions:
        """The torrc of the deployment's own tor (no SOCKS port: the server browses nothing),
        then the lines of ``torrc_include``. ``known`` lists the tor binary's options."""
        self.log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        options: dict[str, list[str]] = {}
        for key, value in server_options(self.tor_dir, log_file=self.log_file).items():
            options[key] = [value] if isinstance(value, str) else list(value)
        include = self.torrc_include
        if include is not None:
            try:
                if include.stat().st_mode & 0o022:
                    raise ConfigError(f"tor.torrc_include: {include} is writable by group or others; "
                                      "it configures tor: chmod go-w")
                text = include.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"tor.torrc_include: cannot read {include}: {exc}") from exc
            for key, value in parse_torrc_fragment(text, where=str(include), known=known()):
                options.setdefault(key, []).append(value)
        return options
