"""Shared fixtures: throwaway keys, a fresh database per test (SQLite and PostgreSQL), a
deployment folder initialised by the real admin code, and the source app.

PostgreSQL tests use ``CPCP_TEST_POSTGRES_URL`` (scripts/test starts a server on loopback);
without it they are skipped, unless ``CPCP_TEST_REQUIRE_POSTGRES=1``, when they fail.
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
from quart import Quart
from sqlalchemy.engine import make_url

from cpcp.admin import init_deployment
from cpcp.services import CoreServices, build_core
from cpcp.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
TEST_KEYS = ROOT / "keys" / "test"
FPR = {
    line.split()[0]: line.split()[1]
    for line in (TEST_KEYS / "FINGERPRINTS").read_text().splitlines()
    if line.strip()
}


@dataclass(frozen=True)
class Deployment:
    root: Path
    config: Path
    settings: Settings


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "db_kind" in metafunc.fixturenames:
        metafunc.parametrize("db_kind", ["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])


def _postgres_admin_url() -> str | None:
    url = os.environ.get("CPCP_TEST_POSTGRES_URL")
    if not url:
        if os.environ.get("CPCP_TEST_REQUIRE_POSTGRES") == "1":
            pytest.fail("CPCP_TEST_REQUIRE_POSTGRES=1 but CPCP_TEST_POSTGRES_URL is not set")
        pytest.skip("no test PostgreSQL (run scripts/test)")
    return url


def _psql(url: str, sql: str) -> None:
    u = make_url(url)
    subprocess.run(
        ["psql", "-q", "-h", u.host or "127.0.0.1", "-p", str(u.port or 5432), "-U", u.username or "cpcp",
         "-d", u.database or "postgres", "-c", sql],
        check=True, capture_output=True,
    )


@contextmanager
def fresh_database(db_kind: str, sqlite_file: Path, prefix: str = "cpcp_test") -> Iterator[str]:
    """The URL of a new, empty database: ``sqlite_file``, or a PostgreSQL database dropped after."""
    if db_kind == "sqlite":
        yield f"sqlite+aiosqlite:///{sqlite_file}"
        return
    admin = _postgres_admin_url()
    assert admin is not None
    name = f"{prefix}_{secrets.token_hex(6)}"
    _psql(admin, f"CREATE DATABASE {name}")
    try:
        yield str(make_url(admin).set(database=name))
    finally:
        _psql(admin, f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


@pytest.fixture
def database_url(db_kind: str, tmp_path: Path) -> Iterator[str]:
    with fresh_database(db_kind, tmp_path / "data" / "cpcp.sqlite") as url:
        yield url


def write_deployment(root: Path, database_url: str, *, extra: str = "", custodian: bool = False) -> Path:
    keys = root / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    for who in ("officer-a", "officer-b", "oversight", "custodian"):
        shutil.copy(TEST_KEYS / f"{who}.pub.asc", keys / f"{who}.asc")
    # The custodian (SP) is an officer of no unit: it sees no tip, only disclosure requests.
    custodian_entry = f"""
[[officers]]
handle = "sp"
name = "Test custodian SP"
fingerprint = "{FPR['custodian']}"
key_file = "custodian.asc"
custodian = true
""" if custodian else ""
    (root / "deployment.toml").write_text(
        custodian_entry + f"""
[[officers]]
handle = "officer-a"
name = "Test officer A"
fingerprint = "{FPR['officer-a']}"
key_file = "officer-a.asc"

[[officers]]
handle = "officer-b"
name = "Test officer B"
fingerprint = "{FPR['officer-b']}"
key_file = "officer-b.asc"

[[units]]
slug = "ps-sadar-bazar"
kind = "police_station"
name_en = "Sadar Bazar Police Station"
name_hi = "थाना सदर बाजार"
officers = ["officer-a"]

[[units]]
slug = "cell-cyber"
kind = "cell"
name_en = "Cyber Cell"
name_hi = "साइबर सेल"
officers = ["officer-b"]

[[units]]
slug = "control-room"
kind = "control_room"
name_en = "District Control Room"
name_hi = "जनपद नियंत्रण कक्ष"
officers = ["officer-a", "officer-b"]
""",
        encoding="utf-8",
    )
    config = root / "cpcp.toml"
    config.write_text(
        f"""
data_dir = "data"
database_url = "{database_url}"
keys_dir = "keys"
deployment_file = "deployment.toml"
oversight_key_file = "oversight.asc"
oversight_fingerprint = "{FPR['oversight']}"
default_locale = "hi"
max_upload_bytes = 2097152

[kdf]
# Light for tests; production keeps the defaults (64 MiB, 3 passes).
time_cost = 1
memory_kib = 8192

[source]
login_failure_delay = 0.05
{extra}
""",
        encoding="utf-8",
    )
    return config


@pytest.fixture
def deployment(tmp_path: Path, database_url: str, request: pytest.FixtureRequest) -> Deployment:
    """An initialised deployment: secrets, keyrings, schema, units, officers (and a custodian
    with ``@pytest.mark.custodian``)."""
    custodian = request.node.get_closest_marker("custodian") is not None
    config = write_deployment(tmp_path, database_url, custodian=custodian)
    settings = load_settings(config, env={})
    init_deployment(settings)
    return Deployment(root=tmp_path, config=config, settings=settings)


@pytest.fixture
async def core(deployment: Deployment) -> AsyncIterator[CoreServices]:
    services = build_core(deployment.settings)
    yield services
    await services.close()


@pytest.fixture
async def app(deployment: Deployment, core: CoreServices) -> AsyncIterator[Quart]:
    from source_app import create_app

    application = create_app(deployment.settings, core=core)
    async with application.test_app():
        yield application


@pytest.fixture(scope="session")
def officer_gnupg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A stand-in for an officer's workstation: a GnuPG home with the test private keys."""
    home = tmp_path_factory.mktemp("officer-gnupg")
    home.chmod(0o700)
    for who in ("officer-a", "officer-b", "oversight"):
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import", str(TEST_KEYS / f"{who}.secret.asc")],
                       check=True, capture_output=True)
    return home


@pytest.fixture(scope="session")
def custodian_gnupg(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The custodian's (SP's) workstation: only the throwaway custodian private key."""
    home = tmp_path_factory.mktemp("custodian-gnupg")
    home.chmod(0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import", str(TEST_KEYS / "custodian.secret.asc")],
                   check=True, capture_output=True)
    return home


def gpg_decrypt(home: Path, ciphertext: bytes) -> bytes:
    """Stock gpg on the command line, as an officer would run it."""
    done = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--decrypt"],
                          input=ciphertext, capture_output=True, check=True)
    return done.stdout


def gpg_encrypt(home: Path, plaintext: bytes, recipients: list[str], *, armor: bool = False) -> bytes:
    args = ["gpg", "--homedir", str(home), "--batch", "--quiet", "--trust-model", "always", "--encrypt"]
    if armor:
        args.append("--armor")
    for r in recipients:
        args += ["--recipient", r]
    return subprocess.run(args, input=plaintext, capture_output=True, check=True).stdout




def _agents_under(root: Path) -> dict[int, Path]:
    """gpg-agent daemons whose GnuPG home lies under ``root``, by pid."""
    found: dict[int, Path] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            args = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone already
        if not args or Path(os.fsdecode(args[0])).name != "gpg-agent" or b"--homedir" not in args:
            continue
        home = Path(os.fsdecode(args[args.index(b"--homedir") + 1]))
        if home.is_relative_to(root):
            found[int(proc.name)] = home
    return found


def stop_gpg_agents(root: Path) -> int:
    """Stop every gpg-agent that gpg started for a GnuPG home under ``root``; how many."""
    agents = _agents_under(root)
    for home in set(agents.values()):
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                       capture_output=True, check=False)
    for pid in _agents_under(root):  # a home that was already deleted: gpgconf cannot reach it
        try:
            os.kill(pid, 15)
        except ProcessLookupError:
            pass
    return len(agents)


@pytest.fixture(scope="module", autouse=True)
def _no_gpg_agent_left(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """gpg starts an agent per GnuPG home and leaves it running; the servers and tests of a
    module are done with theirs when the module ends (gpg starts a new one if a later module
    uses a session-wide home again), so none outlives its module and none the run."""
    yield
    stop_gpg_agents(tmp_path_factory.getbasetemp())
