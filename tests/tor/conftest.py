"""Fixtures of the Tor end-to-end modules: each module gets its own private Tor network on
127.0.0.1 (onion.testnet), one SQLite deployment, and its source app and gateway processes.

Needs the ``tor`` and ``tor-gencert`` binaries (Debian's ``tor``; scripts/setup installs them);
without them these modules are skipped, unless ``CPCP_TEST_REQUIRE_TOR=1``, when they fail.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cpcp.admin import init_deployment
from cpcp.settings import load_settings
from onion.testnet import PrivateTorNetwork

from ..conftest import Deployment, write_deployment
from ..servers import Server, start_server
from .tornet import say

TOR_MISSING = not (shutil.which("tor") and shutil.which("tor-gencert"))
if TOR_MISSING and os.environ.get("CPCP_TEST_REQUIRE_TOR") == "1":
    raise RuntimeError("CPCP_TEST_REQUIRE_TOR=1 but tor or tor-gencert is not installed")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.slow)
            if TOR_MISSING:
                item.add_marker(pytest.mark.skip(reason="tor is not installed (scripts/setup installs it)"))
            # stem 1.8.2 starts its threads with Thread.setDaemon(), deprecated since Python 3.10.
            item.add_marker(pytest.mark.filterwarnings(r"ignore:setDaemon\(\) is deprecated:DeprecationWarning"))


@pytest.fixture(scope="module")
def tor_deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """SQLite only: what is tested through Tor is Tor, not the database."""
    root = tmp_path_factory.mktemp("tor-deployment")
    config = write_deployment(root, f"sqlite+aiosqlite:///{root / 'data' / 'cpcp.sqlite'}")
    settings = load_settings(config, env={})
    init_deployment(settings)
    return Deployment(root=root, config=config, settings=settings)


@pytest.fixture(scope="module")
def network(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateTorNetwork]:
    net = PrivateTorNetwork(tmp_path_factory.mktemp("tornet"))
    with net:
        say(request, f"\n{request.module.__name__}: private Tor network (tor {net.service.version}) "
                     f"bootstrapped in {net.bootstrap_seconds:.1f}s")
        started = time.monotonic()
        yield net
        say(request, f"\n{request.module.__name__}: tests on the network took "
                     f"{time.monotonic() - started:.1f}s")
    # __exit__ raised if any tor had survived; check again from the outside.
    assert not [pid for pid in net.pids if Path(f"/proc/{pid}").exists()]


@pytest.fixture(scope="module")
def source_server(tor_deployment: Deployment) -> Iterator[Server]:
    server = start_server(tor_deployment)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def gateway_server(tor_deployment: Deployment) -> Iterator[Server]:
    server = start_server(tor_deployment, app="gateway")
    yield server
    server.stop()


