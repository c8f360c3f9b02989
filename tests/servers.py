"""Real server processes for end-to-end tests: the source app, the gateway and the desk, each
its own Hypercorn process on a free loopback port, with its own temp folder and output file
(both searched for canaries by the tests), and what a source does through them."""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from .conftest import ROOT, Deployment
from .helpers import codename_of, csrf, multipart


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    url: str
    port: int
    proc: subprocess.Popen[bytes]
    output: Path
    tmpdir: Path

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=15)

    def gpg_children(self) -> list[int]:
        found = []
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    stat = Path(f"/proc/{pid}/stat").read_text()
                except OSError:
                    continue
                if stat.split(") ")[1].split()[1] == str(self.proc.pid) and "(gpg)" in stat:
                    found.append(int(pid))
        return found


def start_server(deployment: Deployment, port: int | None = None, *, app: str = "source") -> Server:
    """Start ``cpcp-source`` (or ``cpcp-gateway`` with app="gateway") as its own process."""
    port = port or free_port()
    module = {"source": "source_app.serve", "gateway": "journalist_app.gateway.serve"}[app]
    tmpdir = deployment.root / "server-tmp"
    tmpdir.mkdir(exist_ok=True)
    output = deployment.root / f"server-{port}-{secrets.token_hex(2)}.out"
    env = {**os.environ, f"CPCP_{app.upper()}__PORT": str(port), "TMPDIR": str(tmpdir)}
    with output.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", module, "--config", str(deployment.config)],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
        )
    return wait_for_port(proc, port, output, tmpdir)


def wait_for_port(proc: subprocess.Popen[bytes], port: int, output: Path, tmpdir: Path) -> Server:
    """The started process as a :class:`Server` once its port accepts connections."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited: {output.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Server(f"http://127.0.0.1:{port}", port, proc, output, tmpdir)
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"{proc.args!r} did not start")


AGENT = f"CanaryAgent/{secrets.token_hex(8)}"


async def begin(client: httpx.AsyncClient) -> str:
    page = (await client.get("/generate")).text
    codename = codename_of(page)
    r = await client.post("/create", data={"csrf_token": csrf(page)})
    assert r.status_code == 303 and r.headers["location"] == "/submit"
    return codename


async def send(client: httpx.AsyncClient, parts: list[object], page: str = "/submit") -> httpx.Response:
    token = csrf((await client.get(page)).text)
    body, ctype = multipart([("csrf_token", token), *parts])  # type: ignore[list-item]
    return await client.post("/submit", content=body, headers={"Content-Type": ctype})


async def desk_login_and_sync(desk: httpx.AsyncClient, handle: str, passphrase: str, code: str) -> str:
    """At a running desk, as an officer's browser: log in, press sync; the inbox page after."""
    page = (await desk.get("/login")).text
    r = await desk.post("/login", data={"csrf_token": csrf(page), "handle": handle,
                                        "passphrase": passphrase, "code": code})
    assert r.status_code == 303, r.text
    inbox = await desk.get("/inbox")
    r = await desk.post("/sync", data={"csrf_token": csrf(inbox.text)})
    assert r.status_code == 303
    return (await desk.get("/inbox")).text


def files_containing(roots: list[Path], needles: list[bytes]) -> list[str]:
    hits = []
    for root in roots:
        for path in root.rglob("*"):
            if path.is_file() and not path.is_socket():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                hits += [f"{path}: {n[:20]!r}" for n in needles if n in data]
    return hits


def write_desk_config(root: Path, gateway_url: str, gnupg_home: Path, *, port: int = 8090,
                      socks_proxy: str | None = None, default_locale: str | None = "en") -> Path:
    """A desk.toml; in English unless told (the tests read English pages; the Hindi default of
    a desk.toml without ``default_locale`` is tested in tests/test_desk_i18n.py)."""
    root.mkdir(parents=True, exist_ok=True)
    config = root / "desk.toml"
    proxy = f'socks_proxy = "{socks_proxy}"\n' if socks_proxy else ""
    locale = f'default_locale = "{default_locale}"\n' if default_locale else ""
    config.write_text(f'gateway_url = "{gateway_url}"\ngnupg_home = "{gnupg_home}"\n'
                      f'data_dir = "data"\nexport_dir = "exports"\nport = {port}\n{proxy}{locale}',
                      encoding="utf-8")
    return config


def start_desk(root: Path, gateway_url: str, gnupg_home: Path, *, socks_proxy: str | None = None) -> Server:
    """``cpcp-desk`` as its own process, with its own temp folder (searched for canaries);
    through ``socks_proxy`` (``socks5h://...``) when the gateway is an onion."""
    port = free_port()
    config = write_desk_config(root, gateway_url, gnupg_home, port=port, socks_proxy=socks_proxy)
    tmpdir = root / "tmp"
    tmpdir.mkdir(exist_ok=True)
    output = root / "desk.out"
    env = {**os.environ, "CPCP_DESK_PORT": str(port), "TMPDIR": str(tmpdir)}
    with output.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "journalist_app.desk.serve", "--config", str(config)],
                                cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
    return wait_for_port(proc, port, output, tmpdir)
