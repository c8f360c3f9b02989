"""The desk: the officer's workstation app, on loopback only.

It reaches the server only through the gateway's HTTP API (through Tor), keeps a cache of
ciphertext, decrypts in memory with the officer's own GnuPG key, and encrypts replies before
they leave the workstation. It imports nothing of the server's code (a test checks).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import secrets
from dataclasses import dataclass
from pathlib import Path

from quart import Quart

from . import i18n, views, web
from .cache import Cache
from .casebook import Casebook
from .client import GatewayClient
from .crypto import DeskCrypto
from .export import Exporter
from .follow import Follower
from .notify import DesktopNotifier, NoNotifier, Notifier
from .sessions import MemorySessions
from .settings import DeskSettings

HERE = Path(__file__).parent


@dataclass
class Desk:
    """The desk's collaborators, built once and kept on the app."""

    settings: DeskSettings
    cache: Cache
    crypto: DeskCrypto
    casebook: Casebook
    exporter: Exporter
    sessions: MemorySessions
    csrf_secret: bytes
    follower: Follower
    gateway: GatewayClient | None = None

    def require_gateway(self) -> GatewayClient:
        assert self.gateway is not None, "the desk is not serving"
        return self.gateway


def create_app(settings: DeskSettings, *, gateway: GatewayClient | None = None,
               crypto: DeskCrypto | None = None, follower: Follower | None = None) -> Quart:
    """Build the desk. Fails closed (ConfigError) if the GnuPG home holds no private key."""
    app = Quart(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    crypto = crypto or DeskCrypto(settings.gnupg_home, gpg_binary=settings.gpg_binary)
    crypto.check()
    cache = Cache(settings.cache_dir)
    casebook = Casebook(cache=cache, crypto=crypto)
    sessions = MemorySessions(idle_timeout=settings.session_idle_timeout)
    catalogs = i18n.load_translations()
    notifier: Notifier = (DesktopNotifier(settings.session_bus, catalogs[settings.default_locale])
                          if settings.desktop_notifications else NoNotifier())
    follower = follower or Follower(cache=cache, casebook=casebook, notifier=notifier, wait=settings.follow_wait,
                                    locale=settings.default_locale)
    desk = Desk(
        settings=settings, cache=cache, crypto=crypto, casebook=casebook,
        exporter=Exporter(export_dir=settings.export_dir, cache=cache, casebook=casebook, crypto=crypto,
                          zone=settings.zone),
        sessions=sessions, csrf_secret=secrets.token_bytes(32), follower=follower, gateway=gateway,
    )
    app.extensions["cpcp_desk"] = desk
    app.session_interface = sessions  # type: ignore[assignment]
    app.config.update(
        MAX_CONTENT_LENGTH=1024 * 1024, PROPAGATE_EXCEPTIONS=False, TEMPLATES_AUTO_RELOAD=False,
        RESPONSE_TIMEOUT=None, SEND_FILE_MAX_AGE_DEFAULT=dt.timedelta(hours=1),
    )
    # python-gnupg logs gpg's output at debug level: keep it quiet.
    logging.getLogger("gnupg").setLevel(logging.ERROR)
    web.install(app, allowed_hosts=settings.allowed_hosts)
    i18n.install(app, default_locale=settings.default_locale, zone=settings.zone, catalogs=catalogs)
    views.install(app)
    own_gateway = gateway is None

    @app.before_serving
    async def startup() -> None:
        await cache.open()
        if desk.gateway is None:
            desk.gateway = GatewayClient.from_settings(settings)

    @app.after_serving
    async def shutdown() -> None:
        await follower.stop()
        casebook.forget()
        sessions.clear()
        if own_gateway and desk.gateway is not None:
            await desk.gateway.aclose()
            desk.gateway = None
        await asyncio.to_thread(crypto.close)

    return app
