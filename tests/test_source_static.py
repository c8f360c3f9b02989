"""Static files: hashed URLs cached for good and gzipped; CSRF pages uncompressed and no-store."""

from __future__ import annotations

import gzip
import re
from pathlib import Path

from quart import Quart

CSS = Path(__file__).parent.parent / "source_app" / "static" / "cpcp.css"


async def css_url(app: Quart) -> str:
    html = await (await app.test_client().get("/")).get_data(as_text=True)
    found = re.search(r'href="(/static/cpcp\.[0-9a-f]{12}\.css)"', html)
    assert found, "the page must link the hashed stylesheet"
    return found.group(1)


async def test_pages_link_the_hashed_stylesheet_which_is_cached_immutable(app: Quart) -> None:
    url = await css_url(app)
    response = await app.test_client().get(url)
    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "public, max-age=31536000, immutable"
    assert "Pragma" not in response.headers
    assert response.headers["Content-Type"].startswith("text/css")
    assert response.headers["Vary"] == "Accept-Encoding"
    assert "Content-Encoding" not in response.headers
    assert await response.get_data() == CSS.read_bytes()
    # The security headers stay on static files too.
    assert "default-src 'none'" in response.headers["Content-Security-Policy"]


async def test_gzip_is_served_only_when_asked_and_decodes_to_the_file(app: Quart) -> None:
    url = await css_url(app)
    client = app.test_client()
    zipped = await client.get(url, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert zipped.headers["Vary"] == "Accept-Encoding"
    body = await zipped.get_data()
    assert len(body) < CSS.stat().st_size
    assert gzip.decompress(body) == CSS.read_bytes()
    refused = await client.get(url, headers={"Accept-Encoding": "gzip;q=0, identity"})
    assert "Content-Encoding" not in refused.headers
    assert await refused.get_data() == CSS.read_bytes()


async def test_unhashed_and_unknown_static_names(app: Quart) -> None:
    client = app.test_client()
    plain = await client.get("/static/cpcp.css")
    assert plain.status_code == 200
    assert plain.headers["Cache-Control"] == "no-store"
    assert (await client.get("/static/cpcp.000000000000.css")).status_code == 404
    assert (await client.get("/static/../web.py")).status_code == 404


async def test_csrf_pages_stay_uncompressed_and_no_store(app: Quart) -> None:
    client = app.test_client()
    for page in ("/", "/generate", "/login"):
        response = await client.get(page, headers={"Accept-Encoding": "gzip"})
        assert response.status_code == 200
        assert "Content-Encoding" not in response.headers
        assert response.headers["Cache-Control"] == "no-store"
    login = await (await client.get("/login", headers={"Accept-Encoding": "gzip"})).get_data(as_text=True)
    assert "csrf_token" in login
