"""Hindi and English at the desk, switched as on the source app: a language link sets a cookie,
the desk's ``default_locale`` applies until then.

The catalogues are compiled in memory from the .po files translators edit (no .mo can go
stale), and one that fails to parse stops the desk at start-up rather than showing an officer
English where Hindi was chosen. The desk imports nothing of the server, so this is its own
small copy of the source app's loader.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations
from quart import Quart, current_app, g, redirect, request
from quart.typing import ResponseReturnValue

from . import timefmt
from .errors import ConfigError
from .settings import LOCALES

CATALOGS = Path(__file__).parent / "translations"
LANG_COOKIE = "cpcp_desk_lang"
LANGUAGE_NAMES = {"hi": "हिन्दी", "en": "English"}


def load_translations(catalog_dir: Path = CATALOGS, domain: str = "messages") -> Mapping[str, Translations]:
    """One Translations per locale, from ``<dir>/<locale>/LC_MESSAGES/<domain>.po``."""
    out: dict[str, Translations] = {}
    for locale in LOCALES:
        po_path = catalog_dir / locale / "LC_MESSAGES" / f"{domain}.po"
        try:
            with po_path.open("rb") as fh:
                catalog = read_po(fh, locale=locale, domain=domain, abort_invalid=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"translation catalogue {po_path}: {exc}") from exc
        buf = io.BytesIO()
        write_mo(buf, catalog, use_fuzzy=False)
        buf.seek(0)
        out[locale] = Translations(fp=buf, domain=domain)
    return out


def pick_locale(requested: str | None, default: str) -> str:
    """The officer's chosen language, else the desk's default (Accept-Language is not used:
    the language is the officer's choice on this desk, not the browser's)."""
    return requested if requested in LOCALES else default


def current_locale() -> str:
    found: str = g.get("locale") or current_app.extensions["cpcp_desk"].settings.default_locale
    return found


def gettext(message: str, **variables: Any) -> str:
    catalogs: Mapping[str, Translations] = current_app.extensions["cpcp_desk_translations"]
    text = catalogs[current_locale()].ugettext(message)
    return text % variables if variables else text


def ngettext(singular: str, plural: str, n: int, **variables: Any) -> str:
    """The plural form the language asks for; ``%(num)d`` is ``n``."""
    catalogs: Mapping[str, Translations] = current_app.extensions["cpcp_desk_translations"]
    text = catalogs[current_locale()].ungettext(singular, plural, n)
    variables.setdefault("num", n)
    return text % variables


_ = gettext


def N_(message: str) -> str:  # the conventional name, which extraction looks for
    """Marks a message for extraction where it cannot be translated yet (a module constant);
    the page translates it when it shows it."""
    return message


def safe_next(target: str | None) -> str:
    """Only a path on this desk: the language link must never redirect anywhere else."""
    if not target:
        return "/"
    parts = urlsplit(target)
    # Browsers read "/\\host" as "//host": backslashes and control characters are refused too.
    if (parts.scheme or parts.netloc or not target.startswith("/") or target.startswith("//")
            or "\\" in target or any(ord(c) < 32 for c in target)):
        return "/"
    return target


def install(app: Quart, *, default_locale: str, zone: ZoneInfo,
            catalogs: Mapping[str, Translations] | None = None) -> None:
    """Catalogues, the locale of each request, the language link, and the ``when`` filter
    every template writes a time with."""
    app.extensions["cpcp_desk_translations"] = catalogs or load_translations()
    app.jinja_env.filters["when"] = lambda value: timefmt.show(value, zone, current_locale())
    app.jinja_env.add_extension("jinja2.ext.i18n")
    app.jinja_env.install_gettext_callables(  # type: ignore[attr-defined]
        gettext=lambda s, **kw: gettext(s, **kw),
        ngettext=lambda s, p, n, **kw: ngettext(s, p, n, **kw),
        newstyle=True,
    )

    @app.before_request
    async def set_locale() -> None:
        g.locale = pick_locale(request.cookies.get(LANG_COOKIE), default_locale)

    @app.context_processor
    async def locale_globals() -> dict[str, Any]:
        locale = current_locale()
        return {"locale": locale, "language_names": LANGUAGE_NAMES,
                "other_locales": [loc for loc in LOCALES if loc != locale],
                "current_path": request.full_path.rstrip("?") if request else "/"}

    @app.get("/lang/<code>")
    async def set_language(code: str) -> ResponseReturnValue:
        response = redirect(safe_next(request.args.get("next")), 303)
        if code in LOCALES:
            response.set_cookie(LANG_COOKIE, code, max_age=365 * 24 * 3600, httponly=True,
                                samesite="Strict", path="/")
        return response
