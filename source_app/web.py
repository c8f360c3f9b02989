"""Request-level plumbing shared by the views: locale, translations, security headers."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from babel.support import Translations
from quart import Quart, Response, current_app, g, request

LANG_COOKIE = "cpcp_lang"

# No script, no inline style, nothing from anywhere else; no framing; forms post only here.
CSP = (
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
    "frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Permissions-Policy": "camera=(), microphone=(), geolocation=(), interest-cohort=()",
}


def translations() -> Translations:
    catalogs: dict[str, Translations] = current_app.extensions["cpcp_translations"]
    return catalogs[g.locale]


def gettext(message: str, **variables: Any) -> str:
    text = translations().ugettext(message)
    return text % variables if variables else text


def ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
    text = translations().ungettext(singular, plural, n)
    variables.setdefault("num", n)
    return text % variables


def safe_next(target: str | None) -> str:
    """Only an on-site path: the language link must never redirect anywhere else."""
    if not target:
        return "/"
    parts = urlsplit(target)
    # Browsers read "/\\host" as "//host": backslashes and control characters are refused too.
    if (parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 32 for c in target)):
        return "/"
    return target


def install(app: Quart) -> None:
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=lambda s, **kw: gettext(s, **kw),
        ngettext=lambda s, p, n, **kw: ngettext(s, p, n, **kw),
        newstyle=True,
    )

    @app.after_request
    async def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        response.headers.pop("Server", None)
        return response

    @app.context_processor
    async def template_globals() -> dict[str, Any]:
        return {
            "locale": g.get("locale", "en"),
            "other_locales": [loc for loc in ("hi", "en") if loc != g.get("locale")],
            "current_path": request.full_path.rstrip("?") if request else "/",
        }
