"""``cpcp-source``: serve the source app on loopback (see cpcp.serving), reading the PROXY
line tor's source onion sends first on each connection (see source_app.circuits)."""

from __future__ import annotations

import sys

from cpcp.serving import main as serve_main

from . import create_app
from .circuits import serve_with_circuits


def main(argv: list[str] | None = None) -> int:
    return serve_main(
        prog="cpcp-source", description=__doc__ or "", create_app=create_app,
        address=lambda s: (s.source.host, s.source.port), argv=argv, role="source",
        serve_app=serve_with_circuits,
    )


if __name__ == "__main__":
    sys.exit(main())
