"""A deployment's onion setup, derived once from the one :class:`cpcp.settings.Settings`.

The tor CPCP owns keeps its DataDirectory at ``<data_dir>/tor`` and logs to
``<data_dir>/logs/tor.log``; the onion services live in ``<data_dir>/onion/``. The setting
``[tor] torrc_include`` adds lines of the admin's own (bridges, a test network's authorities)
after CPCP's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from cpcp.errors import ConfigError
from cpcp.settings import Settings

from .errors import TorFailed
from .services import OnionLayout, OnionService, cpcp_services
from .tor import OptionLine, TorOptions, check_option, known_options, server_options

#: Options a torrc_include may not set: CPCP sets them itself, or they would open a listener or
#: weaken the control port's authentication (which hands out the onion keys) or the onions.
OWNED_OPTIONS = frozenset({
    "DataDirectory", "CacheDirectory", "KeyDirectory", "RunAsDaemon", "User",
    "ORPort", "DirPort", "SocksPort", "DNSPort", "TransPort", "NATDPort", "HTTPTunnelPort",
    "MetricsPort", "ExtORPort", "HashedControlPassword",
})
OWNED_PREFIXES = ("Control", "Cookie", "HiddenService", "__")


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
        if name in OWNED_OPTIONS or name.startswith(OWNED_PREFIXES):
            raise ConfigError(f"{at}: {name} is CPCP's to set (or unsafe here); "
                              "remove it from the fragment")
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

    @classmethod
    def from_settings(cls, settings: Settings) -> OnionDeployment:
        data_dir = settings.data_dir.resolve()
        return cls(
            data_dir=data_dir,
            tor_dir=data_dir / "tor",
            log_file=settings.log_dir.resolve() / "tor.log",
            layout=OnionLayout.for_data_dir(data_dir),
            services=tuple(cpcp_services(source_port=settings.source.port,
                                         gateway_port=settings.gateway.port)),
            torrc_include=settings.tor.torrc_include,
        )

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
                text = include.read_text(encoding="utf-8")
            except (OSError, UnicodeDecodeError) as exc:
                raise ConfigError(f"tor.torrc_include: cannot read {include}: {exc}") from exc
            for key, value in parse_torrc_fragment(text, where=str(include), known=known()):
                options.setdefault(key, []).append(value)
        return options
