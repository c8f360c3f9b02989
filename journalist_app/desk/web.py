"""Request plumbing: the Host check against DNS rebinding, and security headers."""

from __future__ import annotations

from quart import Quart, Response, request

# No script at all, nothing from anywhere else, no framing; forms post only here.
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
        response.headers.pop("Server", None)
        return response
