"""The gateway: the officer-facing server app behind its own onion with client authorization.

It hands out ciphertext and metadata to the officers' desks, takes replies that are already
encrypted, status changes and assignments, and records every officer action in the audit log.
It can decrypt nothing: no officer private key is on the server.
"""

from __future__ import annotations

from quart import Quart
from quart_schema import QuartSchema
from quart_schema.openapi import Info

from cpcp.feed import ChangeFeed
from cpcp.services import CoreServices, build_core, start_core
from cpcp.settings import Settings
from cpcp.webids import IdConverter

from . import api


def create_app(settings: Settings, *, core: CoreServices | None = None) -> Quart:
    app = Quart(__name__)
    app.url_map.converters["id"] = IdConverter
    # The gateway's role: it never opens secrets.json nor the source app's GnuPG homes.
    core = core or build_core(settings, role="gateway")
    app.config.update(MAX_CONTENT_LENGTH=8 * 1024 * 1024, PROPAGATE_EXCEPTIONS=False)
    app.extensions["cpcp_core"] = core
    feed = ChangeFeed(sessions=core.sessions)
    app.extensions["cpcp_feed"] = feed
    # No documentation UIs: they would load scripts from a CDN. The JSON spec is enough.
    QuartSchema(
        app,
        openapi_path="/api/v1/openapi.json",
        redoc_ui_path=None, scalar_ui_path=None, swagger_ui_path=None,
        info=Info(title="CPCP gateway", version="1",
                  description="Ciphertext and case metadata for officers' desks."),
        security_schemes={"bearer": {"type": "http", "scheme": "bearer"}},
        security=[{"bearer": []}],
    )
    api.install(app)

    @app.before_serving
    async def startup() -> None:
        await start_core(core)

    @app.after_serving
    async def shutdown() -> None:
        await feed.close()
        await core.close()

    return app
