"""Issue 8 through a private Tor network: a real source logs in while many circuits attack.

The source onion exports circuit ids (onion/services.py), the source app reads tor's PROXY
lines (source_app/circuits.py) and budgets wrong codenames per circuit (cpcp/throttle.py).
For 60 s attackers send wrong codenames made of real words (each costs an argon2 hash) and
garbage, each attacker connection on its own circuit (the client tor isolates streams by SOCKS
username/password) and switching to a new circuit whenever it is told to wait. Meanwhile a
real source logs in with its correct codename again and again on its own circuit.

Asserted: the source gets in within 5 s on >= 95% of its tries, and the wrong codenames hashed
(counted from the attackers' answers: "not known" means hashed, "wait" means throttled) stay
within the configured budget: per circuit its burst plus refill, and in all the site ceiling
plus at most ``login_queue_per_circuit`` tries of each circuit that had not failed before.
"""

from __future__ import annotations

import asyncio
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx
import pytest

from cpcp.admin import init_deployment
from cpcp.codenames import generate_codename
from cpcp.settings import load_settings
from onion.services import SOURCE
from onion.testnet import PrivateTorNetwork

from ..conftest import Deployment, write_deployment
from ..helpers import csrf
from ..servers import Server, begin
from .tornet import SOCKS_FAILURES, get_with_retries, publish, say, through_tor

ATTACK_SECONDS = 60.0
WORDY_ATTACKERS = 12
GARBAGE_ATTACKERS = 12
GETS_IN_WITHIN = 5.0
BURST, PER_HOUR, SITE_PER_MINUTE, QUEUE = 3, 60, 30, 2


@pytest.fixture(scope="module")
def tor_deployment(tmp_path_factory: pytest.TempPathFactory) -> Deployment:
    """SQLite; a codename hash of 32 MiB and 2 passes, so that hashing is what attackers spend."""
    root = tmp_path_factory.mktemp("login-attack")
    config = write_deployment(
        root, f"sqlite+aiosqlite:///{root / 'data' / 'cpcp.sqlite'}",
        extra=f"login_circuit_burst = {BURST}\nlogin_circuit_failures_per_hour = {PER_HOUR}\n"
              f"login_failures_per_minute = {SITE_PER_MINUTE}\nlogin_queue_per_circuit = {QUEUE}\n",
    )
    text = config.read_text().replace("time_cost = 1", "time_cost = 2").replace(
        "memory_kib = 8192", "memory_kib = 32768")
    config.write_text(text)
    settings = load_settings(config, env={})
    assert settings.kdf.memory_kib == 32768
    init_deployment(settings)
    return Deployment(root=root, config=config, settings=settings)


@dataclass
class Tally:
    hashed: Counter[str] = field(default_factory=Counter)  # wrong words answered "not known"
    garbage: int = 0
    throttled: int = 0
    failed: int = 0  # transport errors, timeouts, other answers
    unanswered: int = 0  # wrong words still in flight when the attack was stopped
    wordy_circuits: set[str] = field(default_factory=set)
    circuits: set[str] = field(default_factory=set)

    @property
    def requests(self) -> int:
        return sum(self.hashed.values()) + self.garbage + self.throttled + self.failed


async def attacker(socks: int, onion: str, name: str, *, garbage: bool, tally: Tally,
                   until: float) -> None:
    rotation = 0
    while time.monotonic() < until:
        circuit = f"{name}-{rotation}"
        rotation += 1
        try:
            async with through_tor(socks, onion, 20, isolation=circuit) as client:
                token = csrf((await client.get("/login")).text)
                tally.circuits.add(circuit)
                while time.monotonic() < until:
                    typed = "x" if garbage else generate_codename()
                    if not garbage:
                        tally.wordy_circuits.add(circuit)
                    tally.unanswered += not garbage
                    answer = await client.post("/login", data={"csrf_token": token, "codename": typed})
                    tally.unanswered -= not garbage
                    if answer.status_code == 429:
                        tally.throttled += 1
                        break  # this circuit is spent: build a new one
                    if answer.status_code == 403 and garbage:
                        tally.garbage += 1
                    elif answer.status_code == 403:
                        tally.hashed[circuit] += 1
                    else:
                        tally.failed += 1
        except (*SOCKS_FAILURES, TimeoutError, AssertionError):
            tally.failed += 1
            await asyncio.sleep(0.5)


async def real_source(socks: int, onion: str, codename: str, *, until: float,
                      tries: list[tuple[bool, float]]) -> None:
    while time.monotonic() < until:
        started = time.monotonic()
        ok = False
        try:
            async with through_tor(socks, onion, 20, isolation="the-real-source") as browser:
                token = csrf((await browser.get("/login")).text)
                answer = await browser.post("/login", data={"csrf_token": token, "codename": codename})
                ok = answer.status_code == 303 and answer.headers["location"].endswith(("/case", "/submit"))
        except (*SOCKS_FAILURES, TimeoutError):
            pass
        tries.append((ok, time.monotonic() - started))
        await asyncio.sleep(1.0)


async def test_a_real_source_gets_in_while_many_circuits_attack_the_login(
    request: pytest.FixtureRequest, network: PrivateTorNetwork, tor_deployment: Deployment,
    source_server: Server, gateway_server: Server,
) -> None:
    onions = publish(network, tor_deployment, source_server, gateway_server)
    onion = onions[SOURCE]
    async with httpx.AsyncClient(base_url=source_server.url) as direct:
        codename = await begin(direct)  # the source's codename, made on loopback
    assert (await get_with_retries(network.socks_port, onion, "/login")).status_code == 200

    tally = Tally()
    tries: list[tuple[bool, float]] = []
    began = time.monotonic()
    until = began + ATTACK_SECONDS
    attack = [asyncio.create_task(attacker(network.socks_port, onion, f"{kind}{i}",
                                           garbage=kind == "g", tally=tally, until=until))
              for kind in ("w", "g") for i in range(WORDY_ATTACKERS if kind == "w" else GARBAGE_ATTACKERS)]
    await real_source(network.socks_port, onion, codename, until=until, tries=tries)
    await asyncio.wait(attack, timeout=5)
    for task in attack:
        task.cancel()  # what is still unanswered is counted as hashed below
    await asyncio.gather(*attack, return_exceptions=True)
    seconds = time.monotonic() - began

    latencies = sorted(t for _, t in tries)
    in_time = [ok and t <= GETS_IN_WITHIN for ok, t in tries]
    hashed = sum(tally.hashed.values()) + tally.unanswered
    per_circuit_cap = BURST + int(PER_HOUR * seconds / 3600)
    budget = int(SITE_PER_MINUTE * (1 + seconds / 60)) + QUEUE * len(tally.wordy_circuits)
    say(request, f"\nlogin under attack for {seconds:.0f}s: real source in within {GETS_IN_WITHIN:.0f}s "
                 f"on {sum(in_time)}/{len(tries)} tries ({100 * sum(in_time) / len(tries):.0f}%), "
                 f"login p50 {statistics.median(latencies):.2f}s p95 "
                 f"{latencies[int(0.95 * (len(latencies) - 1))]:.2f}s")
    say(request, f"attack: {tally.requests} requests on {len(tally.circuits)} circuits; "
                 f"wrong codenames hashed <= {hashed} (budget {budget}: site {SITE_PER_MINUTE}/min "
                 f"+ {QUEUE} x {len(tally.wordy_circuits)} fresh circuits; max per circuit "
                 f"{max(tally.hashed.values(), default=0)} of {per_circuit_cap}), garbage refused "
                 f"{tally.garbage}, throttled {tally.throttled}, failed {tally.failed}")

    assert len(tries) >= 20
    assert sum(in_time) >= 0.95 * len(tries)
    assert tally.throttled > 0 and tally.hashed  # the attack did reach the throttle
    assert hashed <= budget
    assert max(tally.hashed.values()) <= per_circuit_cap
