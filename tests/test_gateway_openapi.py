"""A property-based API tester (schemathesis) against the real gateway process: every
operation in its OpenAPI document, with generated valid and invalid input, authenticated as
an officer, must never produce a server error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pyotp
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from cpcp.services import build_core

from .conftest import Deployment
from .servers import Server, start_server
from .test_gateway import PASSPHRASE, make_case


@pytest.fixture
def gateway_server(deployment: Deployment, monkeypatch: pytest.MonkeyPatch) -> Iterator[Server]:
    async def prepare() -> str:
        core = build_core(deployment.settings)
        try:
            await make_case(core, "ps-sadar-bazar")
            await make_case(core, "cell-cyber")  # another unit's case: must stay invisible
            return await core.officer_auth.enrol("officer-a", PASSPHRASE)
        finally:
            await core.close()

    secret = asyncio.run(prepare())
    # Generated polls of the change feed may ask to wait a minute: held at most one second.
    monkeypatch.setenv("CPCP_GATEWAY__FEED_MAX_WAIT", "1")
    server = start_server(deployment, app="gateway")
    server.totp_secret = secret  # type: ignore[attr-defined]
    yield server
    server.stop()


@pytest.fixture
def token(gateway_server: Server) -> str:
    import httpx

    code = pyotp.TOTP(gateway_server.totp_secret).now()  # type: ignore[attr-defined]
    r = httpx.post(f"{gateway_server.url}/api/v1/token",
                   json={"handle": "officer-a", "passphrase": PASSPHRASE, "code": code})
    assert r.status_code == 200, r.text
    return str(r.json()["token"])


def test_gateway_api_never_fails_with_a_server_error(gateway_server: Server, token: str) -> None:
    # schemathesis' own pytest plugin does not run under this pytest; drive hypothesis directly.
    schema = schemathesis.openapi.from_url(f"{gateway_server.url}/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.method.upper() == "DELETE" and operation.path == "/api/v1/token":
            continue  # would revoke the token the rest of the run uses

        @given(case=operation.as_strategy())
        @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck),
                  database=None)
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        check()
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert len(tested) >= 12, tested
