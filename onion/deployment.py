"""A deployment's onion setup, derived once from the one :class:`cpcp.settings.Settings`.

The tor CPCP owns keeps its DataDirectory at ``<data_dir>/tor`` and logs to
``<data_dir>/logs/tor.log``; the onion services live in ``<data_dir>/onion/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cpcp.settings import Settings

from .services import OnionLayout, OnionService, cpcp_services
from .tor import TorOptions, server_options


@dataclass(frozen=True)
class OnionDeployment:
    data_dir: Path
    tor_dir: Path
    log_file: Path
    layout: OnionLayout
    services: tuple[OnionService, ...]

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
        )

    def tor_options(self) -> TorOptions:
        """The torrc of the deployment's own tor (no SOCKS port: the server browses nothing)."""
        self.log_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        return server_options(self.tor_dir, log_file=self.log_file)
