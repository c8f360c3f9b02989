"""Request-level plumbing shared by the views: locale, translations, security headers."""

from __future__ import annotations

import gzip
import hashlib
import mimetypes
from dataclasses import dataclass
from pathlib import Path
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


# Hashed static URLs never change content, so a phone on Tor fetches each file once.
IMMUTABLE = "public, max-age=31536000, immutable"
# Static files carry no secret and reflect no input: compressing them opens no length side
# channel (BREACH). HTML pages carry CSRF tokens and reflect input, so they stay uncompressed.
COMPRESSIBLE = {"text/css", "image/svg+xml", "text/plain", "application/json"}


@dataclass(frozen=True)
class StaticAsset:
    body: bytes
    gzipped: bytes | None
    mimetype: str
    hashed_name: str


def hashed_name(name: str, body: bytes) -> str:
    digest = hashlib.sha256(body).hexdigest()[:12]
    stem, dot, suffix = name.rpartition(".")
    return f"{stem}.{digest}.{suffix}" if dot else f"{name}.{digest}"


def load_static(folder: Path) -> dict[str, StaticAsset]:
    """Read, hash and pre-compress every static file once, at start-up."""
    assets: dict[str, StaticAsset] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        name = path.relative_to(folder).as_posix()
        body = path.read_bytes()
        mimetype = mimetypes.guess_type(name)[0] or "application/octet-stream"
        gzipped = gzip.compress(body, 9, mtime=0) if mimetype in COMPRESSIBLE else None
        if gzipped is not None and len(gzipped) >= len(body):
            gzipped = None
        assets[name] = StaticAsset(body, gzipped, mimetype, hashed_name(name, body))
    return assets


def static_url(name: str) -> str:
    assets: dict[str, StaticAsset] = current_app.extensions["cpcp_static"]
    return f"/static/{assets[name].hashed_name}"


async def serve_static(filename: str) -> Response:
    """Hashed names are cached for good; the plain name still works, uncached (old pages)."""
    by_hash: dict[str, StaticAsset] = current_app.extensions["cpcp_static_by_hash"]
    assets: dict[str, StaticAsset] = current_app.extensions["cpcp_static"]
    asset = by_hash.get(filename)
    immutable = asset is not None
    asset = asset or assets.get(filename)
    if asset is None:
        return Response("Not found", status=404, mimetype="text/plain")
    use_gzip = asset.gzipped is not None and request.accept_encodings["gzip"] > 0
    response = Response(asset.gzipped if use_gzip else asset.body, mimetype=asset.mimetype)
    if use_gzip:
        response.headers["Content-Encoding"] = "gzip"
    if asset.gzipped is not None:
        response.headers["Vary"] = "Accept-Encoding"
    g.static_cache = IMMUTABLE if immutable else None
    return response


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

    static_folder = Path(app.static_folder) if app.static_folder else None
    assets = load_static(static_folder) if static_folder and static_folder.is_dir() else {}
    app.extensions["cpcp_static"] = assets
    app.extensions["cpcp_static_by_hash"] = {a.hashed_name: a for a in assets.values()}
    if "static" in app.view_functions:
        # Same /static/<path:filename> rule, served from memory instead of the disk.
        app.view_functions["static"] = serve_static
    app.jinja_env.globals["static_url"] = static_url

    @app.after_request
    async def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers[name] = value
        cache = g.get("static_cache")
        if cache:
            response.headers["Cache-Control"] = cache
            response.headers.pop("Pragma", None)
        response.headers.pop("Server", None)
        return response

    @app.context_processor
    async def template_globals() -> dict[str, Any]:
        return {
            "locale": g.get("locale", "en"),
            "other_locales": [loc for loc in ("hi", "en") if loc != g.get("locale")],
            "current_path": request.full_path.rstrip("?") if request else "/",
        }
