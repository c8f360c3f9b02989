"""Small helpers the app and end-to-end tests share: reading pages, building uploads."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Sequence
from pathlib import Path

import pytest

CSRF_RE = re.compile(r'name="csrf_token" type="hidden" value="([^"]+)"|value="([^"]+)"[^>]*name="csrf_token"')
CODENAME_RE = re.compile(r'<p class="codename"[^>]*>(.*?)</p>', re.DOTALL)


def csrf(html: str) -> str:
    match = re.search(r'<input[^>]*name="csrf_token"[^>]*>', html)
    assert match, "page has no CSRF token"
    value = re.search(r'value="([^"]+)"', match.group(0))
    assert value
    return value.group(1)


def codename_of(html: str) -> str:
    match = CODENAME_RE.search(html)
    assert match, "page shows no codename"
    return " ".join(re.findall(r"<span>([a-z0-9-]+)</span>", match.group(1)))


Part = tuple[str, str] | tuple[str, str, bytes, str]


def multipart(parts: Sequence[Part]) -> tuple[bytes, str]:
    """Encode fields and files in the given order, as a browser would."""
    boundary = "----cpcpTest" + secrets.token_hex(8)
    out = bytearray()
    for part in parts:
        out += f"--{boundary}\r\n".encode()
        if len(part) == 2:
            name, value = part
            out += f'Content-Disposition: form-data; name="{name}"\r\n\r\n'.encode()
            out += value.encode("utf-8") + b"\r\n"
        else:
            name, filename, data, ctype = part
            out += f'Content-Disposition: form-data; name="{name}"; filename="{filename}"\r\n'.encode()
            out += f"Content-Type: {ctype}\r\n\r\n".encode()
            out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"


CHROMIUM = Path("/usr/bin/chromium")  # Debian's; never Playwright's own browser downloads


def require_browser(*, packages: str, packages_there: bool) -> None:
    """Skip the calling module when Chromium or its Python packages are missing, unless
    CPCP_TEST_REQUIRE_BROWSER=1 (scripts/test sets it), when that is an error."""
    missing = [what for what, there in ((packages, packages_there), (str(CHROMIUM), CHROMIUM.exists()))
               if not there]
    if not missing:
        return
    why = f"not installed: {' and '.join(missing)} (scripts/setup --dev installs them)"
    if os.environ.get("CPCP_TEST_REQUIRE_BROWSER") == "1":
        raise RuntimeError(f"CPCP_TEST_REQUIRE_BROWSER=1 but {why}")
    pytest.skip(why, allow_module_level=True)
