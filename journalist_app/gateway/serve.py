"""``cpcp-gateway``: serve the officer gateway on loopback (see cpcp.serving)."""

from __future__ import annotations

import sys

from cpcp.serving import main as serve_main

from . import create_app


def main(argv: list[str] | None = None) -> int:
    return serve_main(
        prog="cpcp-gateway", description=__doc__ or "", create_app=create_app,
        address=lambda s: (s.gateway.host, s.gateway.port), argv=argv, role="gateway",
    )


if __name__ == "__main__":
    sys.exit(main())
