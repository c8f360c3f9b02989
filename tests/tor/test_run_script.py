"""``scripts/run`` and ``scripts/status`` for real: the README's commands, with the deployment's
own tor joined to the module's private Tor network through ``[tor] torrc_include``.

No fakes: scripts/run runs scripts/setup, ``cpcp-admin demo``, the three apps and
``cpcp-onion run`` (which starts tor) as it does for a user; only ports come from the
environment, so the test does not collide with a demo running on this machine.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from onion.testnet import PrivateTorNetwork, free_port
from onion.tor import render_torrc

from ..conftest import ROOT
from .tornet import fresh_client, get_with_retries, refused, say

ONIONS_WITHIN = 120.0  # fresh machine: setup, demo keys, apps, tor start
PUBLISHED_WITHIN = 120.0
STOPPED_WITHIN = 60.0
ONION = r"http://([a-z2-7]{56}\.onion)/"
#: scripts/run's summary: the source onion on its line, the officer onion alone on the next.
SOURCE_LINE = rf"^  source onion \(citizens, Tor Browser\):\s+{ONION}$"
OFFICER_LINE = rf"^\s+{ONION}$"


@dataclass
class Running:
    """scripts/run as a subprocess in its own process group, its output collected by a thread."""

    proc: subprocess.Popen[str]
    started: float
    lines: list[str] = field(default_factory=list)
    reader: threading.Thread | None = None

    def read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, within: float) -> re.Match[str]:
        """The first output line matching ``pattern``, waiting for it; fails with the output."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + within
        while True:
            for line in list(self.lines):
                if match := regex.search(line):
                    return match
            if self.proc.poll() is not None and self.reader is not None:
                self.reader.join(5)
                if not any(regex.search(line) for line in self.lines):
                    pytest.fail(f"scripts/run exited ({self.proc.returncode}) before "
                                f"{pattern!r}:\n" + "\n".join(self.lines[-40:]))
            if time.monotonic() > deadline:
                pytest.fail(f"no {pattern!r} within {within:.0f}s:\n" + "\n".join(self.lines[-40:]))
            time.sleep(0.1)

    def output(self) -> str:
        return "\n".join(self.lines)

    def finish(self) -> None:
        """After the process ended: the last lines read, the pipe closed."""
        if self.reader is not None:
            self.reader.join(5)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


def processes_of(pgid: int, marker: str) -> list[str]:
    """Live processes in process group ``pgid`` or with ``marker`` (the demo folder) in their
    command line: what scripts/run started, wherever it went."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(") ", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if fields[0] == "Z":
            continue
        if int(fields[2]) == pgid or marker in cmdline:
            found.append(f"{entry.name}: {cmdline.strip()}")
    return found


@pytest.fixture
def run_env(network: PrivateTorNetwork, tmp_path: Path) -> dict[str, str]:
    """The environment of a user's shell, plus the test network and free ports."""
    fragment = tmp_path / "testnet.torrc"
    fragment.write_text("# The module's private Tor network, instead of the real one.\n"
                        + render_torrc(network.dir_authority_options()))
    gateway = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CPCP_")}
    return {
        **env,
        "CPCP_TOR__TORRC_INCLUDE": str(fragment),
        "CPCP_SOURCE__PORT": str(free_port()),
        "CPCP_GATEWAY__PORT": str(gateway),
        "CPCP_DESK_PORT": str(free_port()),
        # The demo's desk.toml names the gateway on 8081.
        "CPCP_DESK_GATEWAY_URL": f"http://127.0.0.1:{gateway}",
    }


@pytest.fixture
def start_run(run_env: dict[str, str]) -> Iterator[list[Running]]:
    """Starts scripts/run on demand (append to the list); kills what is left at the end."""
    runs: list[Running] = []
    yield runs
    for run in runs:
        if run.proc.poll() is None:
            os.killpg(run.proc.pid, signal.SIGKILL)
            run.proc.wait()
        run.finish()


def launch(runs: list[Running], env: dict[str, str], demo: Path) -> Running:
    proc = subprocess.Popen([str(ROOT / "scripts" / "run"), str(demo)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    run = Running(proc, time.monotonic())
    run.reader = threading.Thread(target=run.read, daemon=True)
    run.reader.start()
    runs.append(run)
    return run


def command(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """Run a command as a user would (its exit status is the caller's to check)."""
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60,
                          check=False)


def stop(run: Running, sig: signal.Signals, *, group: bool, marker: str) -> float:
    """Stop scripts/run with ``sig`` (to the script alone, or to its whole process group as a
    terminal's Ctrl-C does); assert it exits 128+sig and leaves no process; return seconds."""
    started = time.monotonic()
    if group:
        os.killpg(run.proc.pid, sig)
    else:
        os.kill(run.proc.pid, sig)
    assert run.proc.wait(timeout=STOPPED_WITHIN) == 128 + sig, run.output()
    took = time.monotonic() - started
    run.finish()
    assert processes_of(run.proc.pid, marker) == []
    return took


async def test_run_script_publishes_both_onions_keeps_the_source_address_and_stops_clean(
    network: PrivateTorNetwork, run_env: dict[str, str], start_run: list[Running], tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    demo = tmp_path / "demo"
    marker = str(demo)

    # First run, as on a fresh machine: the demo does not exist yet.
    run = launch(start_run, run_env, demo)
    source = run.wait_for(SOURCE_LINE, ONIONS_WITHIN).group(1)
    officer = run.wait_for(OFFICER_LINE, 5).group(1)
    printed = time.monotonic() - run.started
    assert source != officer
    assert f"http://127.0.0.1:{run_env['CPCP_SOURCE__PORT']}/" in run.output()
    assert "add-client NAME" in run.output()
    published = run.wait_for(r"cpcp-onion: both onions published \(([\d.]+)s after tor started\)",
                             PUBLISHED_WITHIN)
    bootstrap = run.wait_for(r"cpcp-onion: tor bootstrapped in ([\d.]+)s", 1).group(1)
    say(request, f"\n  scripts/run (fresh demo): onion addresses printed after {printed:.1f}s; "
                 f"its tor bootstrapped into the private network in {bootstrap}s, both onions "
                 f"published {published.group(1)}s after tor started")

    # A citizen's Tor Browser: the source onion serves the Hindi home page.
    started = time.monotonic()
    home = await get_with_retries(network.socks_port, source, "/")
    assert home.status_code == 200
    assert '<html lang="hi">' in home.text and "आपात स्थिति में 112 डायल करें" in home.text
    # Without a workstation's client key the officer onion does not answer.
    assert await refused(network.socks_port, officer, "/api/v1/openapi.json")
    say(request, f"  through Tor: home page and officer-onion refusal in "
                 f"{time.monotonic() - started:.1f}s")

    # What the summary tells the admin to do for a workstation, on the running demo's tor.
    started = time.monotonic()
    added = command([str(ROOT / ".venv" / "bin" / "cpcp-onion"), "--config", str(demo / "cpcp.toml"),
                     "add-client", "desk-1"], run_env)
    assert added.returncode == 0, added.stderr
    assert "officer onion re-published" in added.stderr
    key = re.findall(rf"^{officer.removesuffix('.onion')}:descriptor:x25519:[A-Z2-7]{{52}}$",
                     added.stdout, re.MULTILINE)
    assert len(key) == 1
    auth_dir = tmp_path / "onion_auth"
    auth_dir.mkdir(mode=0o700)
    (auth_dir / "cpcp-officer.auth_private").write_text(key[0] + "\n")
    (auth_dir / "cpcp-officer.auth_private").chmod(0o600)
    workstation = network.start_client("run-desk", {"ClientOnionAuthDir": str(auth_dir)})
    try:
        socks = workstation.socks_port()
        assert socks is not None
        api = await get_with_retries(socks, officer, "/api/v1/openapi.json")
        assert api.status_code == 200 and "openapi" in api.json()
    finally:
        network.stop_tor("run-desk")
    say(request, f"  add-client on the running demo, workstation tor reaches the gateway: "
                 f"{time.monotonic() - started:.1f}s")

    status = command([str(ROOT / "scripts" / "status"), str(demo)], run_env)
    assert status.returncode == 0, status.stdout + status.stderr
    assert f"source onion: {source}" in status.stdout
    assert f"officer onion: {officer}" in status.stdout
    assert "bootstrapped 100%" in status.stdout and "1 workstation(s)" in status.stdout
    for app in ("source app", "gateway", "desk"):
        assert re.search(rf"^{app}: http://127\.0\.0\.1:\d+/ answers", status.stdout, re.MULTILINE)
    assert status.stdout.rstrip().endswith("all up")

    # Stopped as `kill -INT` does: the script's clean-up stops the apps, cpcp-onion and tor.
    took = stop(run, signal.SIGINT, group=False, marker=marker)
    say(request, f"  SIGINT to scripts/run: everything, tor too, gone in {took:.1f}s")
    down = command([str(ROOT / "scripts" / "status"), str(demo)], run_env)
    assert down.returncode == 1 and "tor: not running" in down.stdout, down.stdout
    assert "desk: http://127.0.0.1" in down.stdout and "does not answer" in down.stdout

    # Restarted: the demo is reused and the source onion keeps its address (its key is in
    # demo/data/onion/source), and is reachable again.
    run = launch(start_run, run_env, demo)
    assert run.wait_for(SOURCE_LINE, ONIONS_WITHIN).group(1) == source
    assert run.wait_for(OFFICER_LINE, 5).group(1) == officer
    again = run.wait_for(r"cpcp-onion: both onions published \(([\d.]+)s after tor started\)",
                         PUBLISHED_WITHIN).group(1)
    started = time.monotonic()
    with fresh_client(network, "after-restart") as socks:
        home = await get_with_retries(socks, source, "/")
    assert home.status_code == 200 and '<html lang="hi">' in home.text
    say(request, f"  restart: same source onion, published {again}s after tor started, "
                 f"reachable {time.monotonic() - started:.1f}s later; whole restart "
                 f"{time.monotonic() - run.started:.1f}s")

    # Stopped as a terminal's Ctrl-C does: every process of the group gets SIGINT at once.
    took = stop(run, signal.SIGINT, group=True, marker=marker)
    say(request, f"  Ctrl-C (SIGINT to the process group): everything gone in {took:.1f}s")


def test_onion_run_without_the_tor_network_keeps_trying_and_says_so(tmp_path: Path) -> None:
    """Where tor reaches no Tor network (offline, blocked): ``cpcp-onion run`` prints both
    addresses at once, then says on stderr that the onions are not reachable, and stays up with
    its tor until it is stopped, instead of exiting."""
    from ..conftest import write_deployment

    config = write_deployment(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cpcp.sqlite'}")
    nowhere = tmp_path / "nowhere.torrc"
    # An authority on a port where nothing listens: tor can never bootstrap.
    nowhere.write_text(f"TestingTorNetwork 1\nUseDefaultFallbackDirs 0\n"
                       f"DirAuthority nowhere orport=9 no-v2 v3ident={'A' * 40} "
                       f"127.0.0.1:{free_port()} {'B' * 40}\n")
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("CPCP_")},
           "CPCP_TOR__TORRC_INCLUDE": str(nowhere), "CPCP_SOURCE__PORT": str(free_port()),
           "CPCP_GATEWAY__PORT": str(free_port())}
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "cpcp-onion"), "--config", str(config),
                             "--timeout", "3", "run"], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    run = Running(proc, time.monotonic())
    run.reader = threading.Thread(target=run.read, daemon=True)
    run.reader.start()
    try:
        run.wait_for(rf"^source onion: {ONION}$", 30)
        run.wait_for(rf"^officer onion: {ONION} \(client authorization", 1)
        line = run.wait_for(r"cpcp-onion: the onions are NOT reachable yet: tor is not "
                            r"bootstrapped after \d+s \(at \d+%", 30).string
        assert "Still trying" in line and "tor.log" in line
        time.sleep(1)
        assert proc.poll() is None, run.output()  # still up, tor with it
        status = command([str(ROOT / ".venv" / "bin" / "cpcp-onion"), "--config", str(config),
                          "status"], env)
        assert status.returncode == 1
        assert "NOT reachable yet (tor is not bootstrapped)" in status.stdout, status.stdout
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=STOPPED_WITHIN) == 0, run.output()
        assert processes_of(proc.pid, str(tmp_path / "data")) == []
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        run.finish()
