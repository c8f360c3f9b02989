"""``scripts/status DEMO`` reads the ports the programs use: DEMO/cpcp.toml and DEMO/desk.toml,
overridden by the same ``CPCP_*`` and ``CPCP_DESK_*`` variables the programs read (through
the same settings loaders), without tor (tests/tor/test_run_script.py runs it with tor)."""

from __future__ import annotations

import http.server
import os
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import ROOT, stop_gpg_agents

STATUS = ROOT / "scripts" / "status"


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    folder = tmp_path_factory.mktemp("status") / "demo"
    subprocess.run([str(ROOT / ".venv" / "bin" / "cpcp-admin"), "demo", str(folder)],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    yield folder
    stop_gpg_agents(folder)


class _Quiet(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def answering() -> Iterator[list[int]]:
    """Three loopback HTTP servers standing in for the source app, the gateway and the desk."""
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Quiet) for _ in range(3)]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    yield [int(s.server_address[1]) for s in servers]
    for server in servers:
        server.shutdown()
        server.server_close()


def status(demo: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CPCP_")}
    return subprocess.run([str(STATUS), str(demo)], cwd=ROOT, env={**clean, **env}, capture_output=True,
                          text=True, timeout=120, check=False)


def test_status_reports_the_ports_of_the_demo_files(demo: Path) -> None:
    done = status(demo)
    assert done.returncode == 1, done.stdout + done.stderr  # nothing runs
    out = done.stdout
    assert "source onion: (no key yet) -> 127.0.0.1:8080, NOT published" in out
    assert "officer onion: (no key yet) -> 127.0.0.1:8081, NOT published" in out
    assert "source app: http://127.0.0.1:8080/" in out
    assert "gateway: http://127.0.0.1:8081/" in out
    assert "desk: http://127.0.0.1:8090/" in out


def test_status_uses_the_ports_set_in_the_environment(demo: Path, answering: list[int]) -> None:
    source, gateway, desk = answering
    done = status(demo, CPCP_SOURCE__PORT=str(source), CPCP_GATEWAY__PORT=str(gateway),
                  CPCP_DESK_PORT=str(desk))
    out = done.stdout
    assert f"source onion: (no key yet) -> 127.0.0.1:{source}, NOT published" in out, out
    assert f"officer onion: (no key yet) -> 127.0.0.1:{gateway}, NOT published" in out, out
    # Each stand-in answers on the port from the environment, not the file's.
    assert f"source app: http://127.0.0.1:{source}/ answers (HTTP 200)" in out, out
    assert f"gateway: http://127.0.0.1:{gateway}/ answers (HTTP 200)" in out, out
    assert f"desk: http://127.0.0.1:{desk}/ answers (HTTP 200)" in out, out
    for default in (8080, 8081, 8090):
        assert f":{default}/" not in out
    assert done.returncode == 1 and out.rstrip().endswith("NOT all up")  # tor is not running


def test_status_refuses_a_misspelt_port_variable(demo: Path) -> None:
    """``CPCP_SOURCE_PORT`` (one underscore, as in ``CPCP_DESK_PORT``) is not a setting: the
    programs would silently use the file's port while status and the user expect another."""
    done = status(demo, CPCP_SOURCE_PORT="18080")
    assert done.returncode == 2, done.stdout + done.stderr
    assert "CPCP_SOURCE__PORT" in done.stderr
