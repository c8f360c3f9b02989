"""The property-based API tester (schemathesis, as in test_gateway_openapi.py) authenticated as
a custodian, with a sealed identity and a pending disclosure request on the server: approving,
refusing, fetching and uploading with generated input must never produce a server error."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import httpx
import pyotp
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from cpcp.services import build_core

from .conftest import Deployment
from .servers import Server, start_server
from .test_disclosure_gateway import make_sealed_case
from .test_gateway import PASSPHRASE

pytestmark = pytest.mark.custodian


@pytest.fixture
def custodian_token(deployment: Deployment) -> Iterator[tuple[Server, str]]:
    async def prepare() -> str:
        core = build_core(deployment.settings)
        try:
            case_id, _ = await make_sealed_case(core, "ps-sadar-bazar", "98 7654 3210")
            await core.officer_auth.enrol("officer-a", PASSPHRASE)
            officer = await core.officer_auth.identity("officer-a")
            await core.disclosures.request(officer, case_id, "a statement is needed")
            return await core.officer_auth.enrol("sp", PASSPHRASE)
        finally:
            await core.close()

    secret = asyncio.run(prepare())
    server = start_server(deployment, app="gateway")
    r = httpx.post(f"{server.url}/api/v1/token",
                   json={"handle": "sp", "passphrase": PASSPHRASE, "code": pyotp.TOTP(secret).now()})
    assert r.status_code == 200, r.text
    yield server, str(r.json()["token"])
    server.stop()


def test_disclosure_api_never_fails_with_a_server_error_for_a_custodian(
    custodian_token: tuple[Server, str],
) -> None:
    server, token = custodian_token
    schema = schemathesis.openapi.from_url(f"{server.url}/api/v1/openapi.json")
    headers = {"Authorization": f"Bearer {token}"}
    tested = []
    for result in schema.get_all_operations():
        operation = result.ok()
        if "disclosure" not in operation.path and not operation.path.startswith("/api/v1/officers"):
            continue

        @given(case=operation.as_strategy())
        @settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case: Any) -> None:
            case.call_and_validate(headers=headers, checks=[not_a_server_error])

        check()
        tested.append(f"{operation.method.upper()} {operation.path}")
    assert len(tested) >= 8, tested
