"""What the Tor end-to-end modules share besides their fixtures (conftest.py): publishing
CPCP's onions on the private network, and HTTP through a SOCKS port."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager

import httpx
import pytest
from httpx_socks import AsyncProxyTransport
from python_socks import ProxyError, ProxyTimeoutError, ProxyType

from onion.services import OnionLayout, OnionPublisher, cpcp_services
from onion.testnet import PrivateTorNetwork

from ..conftest import Deployment
from ..servers import Server

#: A request that should fail fails within this; one that should work gets this long.
REFUSED_WITHIN = 30.0
ANSWER_WITHIN = 60.0
#: One try of a request that is retried.
ATTEMPT_WITHIN = 15.0
#: What a request through tor raises when tor cannot (yet) reach the onion. ProxyTimeoutError
#: is not a ProxyError.
SOCKS_FAILURES = (ProxyError, ProxyTimeoutError, httpx.TransportError)


def say(request: pytest.FixtureRequest, line: str) -> None:
    """A line on the terminal even when output is captured (timings for the reviewer)."""
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    if capture is None or reporter is None:
        return
    with capture.global_and_fixture_disabled():
        reporter.write_line(line)


def layout_of(deployment: Deployment) -> OnionLayout:
    return OnionLayout.for_data_dir(deployment.settings.data_dir)


def publish(network: PrivateTorNetwork, deployment: Deployment, source: Server,
            gateway: Server) -> dict[str, str]:
    """Both onions on the network's service tor, as ``cpcp-onion run`` publishes them."""
    publisher = OnionPublisher(tor=network.service, layout=layout_of(deployment))
    services = cpcp_services(source_port=source.port, gateway_port=gateway.port)
    return {k: str(v) for k, v in publisher.publish(services, timeout=ANSWER_WITHIN).addresses.items()}


@asynccontextmanager
async def through_tor(socks_port: int, onion: str, timeout: float, *,
                      isolation: str | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client for ``http://onion/`` through a SOCKS port; names resolve inside tor.
    Clients with different ``isolation`` get different circuits (tor isolates streams by SOCKS
    username and password)."""
    transport = AsyncProxyTransport(proxy_type=ProxyType.SOCKS5, proxy_host="127.0.0.1",
                                    proxy_port=socks_port, rdns=True, username=isolation,
                                    password=isolation and "x")
    async with httpx.AsyncClient(transport=transport, base_url=f"http://{onion}", timeout=timeout,
                                 follow_redirects=False) as client:
        yield client


async def get_with_retries(socks_port: int, onion: str, path: str, *,
                           within: float = 2 * ANSWER_WITHIN) -> httpx.Response:
    """GET, retrying while tor still learns the (re)published descriptor. Short attempts: a
    circuit that hangs (the service tor briefly losing part of its view of the network) is
    abandoned and built again rather than waited for."""
    deadline = time.monotonic() + within
    while True:
        try:
            async with through_tor(socks_port, onion, ATTEMPT_WITHIN) as client:
                return await asyncio.wait_for(client.get(path), ATTEMPT_WITHIN)
        except (*SOCKS_FAILURES, TimeoutError):
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(1)


async def refused(socks_port: int, onion: str, path: str) -> bool:
    """True when the onion cannot be reached (tor answers a SOCKS failure, or nothing in time)."""
    try:
        async with through_tor(socks_port, onion, REFUSED_WITHIN) as client:
            await asyncio.wait_for(client.get(path), REFUSED_WITHIN)
    except (*SOCKS_FAILURES, TimeoutError):
        return True
    return False


@contextmanager
def fresh_client(network: PrivateTorNetwork, name: str) -> Iterator[int]:
    """The SOCKS port of a new client tor that has seen no onion's descriptor yet. After a
    service restarts, a client holding the old descriptor may keep trying the old introduction
    points for minutes before it fetches the new one (tor's client behaviour, seen once in CI);
    the checks that the restarted onion answers are about the service, so they use this."""
    tor = network.start_client(name)
    try:
        port = tor.socks_port()
        assert port is not None
        yield port
    finally:
        network.stop_tor(name)
