"""Request plumbing: the Host check against DNS rebinding, and security headers."""

from __future__ import annotations

import secrets

from quart import Quart, Response, g, request

# No script at all (but the inbox's own, below), nothing from anywhere else, no framing; forms
# post only here.
CSP = ("default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
       "frame-ancestors 'none'; base-uri 'none'")
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


def allow_script() -> str:
    """A fresh nonce that lets this one answer run the desk's own script (the inbox's live
    update): a tip's text rendered into the page cannot carry it, so it can never run."""
    nonce: str = secrets.token_urlsafe(18)
    g.script_nonce = nonce
    return nonce


def install(app: Quart, *, allowed_hosts: frozenset[str]) -> None:
    """Refuse any request whose Host is not this desk's loopback address: a web page that
    rebinds its own name to 127.0.0.1 would otherwise reach the desk as same-origin."""

    @app.before_request
    async def check_host() -> Response | None:
        if request.headers.get("Host", "").lower() not in allowed_hosts:
            return Response("This desk answers only on its loopback address.\n", status=421,
                            content_type="text/plain; charset=utf-8", headers=SECURITY_HEADERS)
        return None

    @app.after_request
    async def security_headers(response: Response) -> Response:
        for name, value in SECURITY_HEADERS.items():
            response.headers.setdefault(name, value)
        nonce = g.get("script_nonce")
        if nonce and response.headers.get("Content-Security-Policy") == CSP:
            response.headers["Content-Security-Policy"] = (
                f"{CSP}; script-src 'nonce-{nonce}'; connect-src 'self'")
        response.headers.pop("Server", None)
        return response
