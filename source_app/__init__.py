"""The source-facing web app: codenames, tips, replies, case status. No JavaScript anywhere."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from quart import Quart

from cpcp.i18n import load_translations
from cpcp.services import CoreServices, build_core, start_core
from cpcp.settings import Settings
from cpcp.webids import IdConverter

from . import views, web
from .sessions import MemorySessionInterface

HERE = Path(__file__).parent


def create_app(settings: Settings, *, core: CoreServices | None = None) -> Quart:
    """Build the app. The core's services are built now (fail closed on missing secrets or a
    broken catalogue) and checked before the first request (keys, store sweep)."""
    app = Quart(__name__, template_folder=str(HERE / "templates"), static_folder=str(HERE / "static"))
    app.url_map.converters["id"] = IdConverter
    # The source app's role: it never opens the gateway's secrets.
    core = core or build_core(settings, role="source")
    app.config.update(
        # The upload limit is enforced while streaming; this only bounds non-upload bodies.
        MAX_CONTENT_LENGTH=settings.max_upload_bytes + 1024 * 1024,
        BODY_TIMEOUT=None,
        TEMPLATES_AUTO_RELOAD=False,
        SEND_FILE_MAX_AGE_DEFAULT=dt.timedelta(hours=1),
        PROPAGATE_EXCEPTIONS=False,
    )
    app.extensions["cpcp_core"] = core
    app.extensions["cpcp_translations"] = load_translations(HERE / "translations")
    app.session_interface = MemorySessionInterface(  # type: ignore[assignment]
        idle_timeout=settings.source.session_idle_timeout,
        secure=settings.source.secure_cookie,
    )
    web.install(app)
    views.install(app)
    from .backpressure import BackpressureHTTPConnection, BoundedRequest

    app.request_class = BoundedRequest
    app.asgi_http_class = BackpressureHTTPConnection

    @app.before_serving
    async def startup() -> None:
        await start_core(core)

    @app.after_serving
    async def shutdown() -> None:
        await core.close()

    return app
