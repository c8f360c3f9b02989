from __future__ import annotations

import os
from pathlib import Path

import pytest

from cpcp.errors import ConfigError
from cpcp.settings import load_settings

FPR = "A" * 40


def write(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "cpcp.toml"
    path.write_text(body)
    return path


def test_file_then_environment(tmp_path: Path) -> None:
    cfg = write(tmp_path, f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n[source]\nport = 9000\n')
    s = load_settings(cfg, env={"CPCP_SOURCE__PORT": "9100", "CPCP_DEFAULT_LOCALE": "en",
                                "CPCP_DESK_GATEWAY_URL": "other program's", "CPCP_TEST_X": "1"})
    assert s.data_dir == tmp_path / "d"
    assert s.source.port == 9100
    assert s.default_locale == "en"
    assert s.database_url == f"sqlite+aiosqlite:///{tmp_path / 'd' / 'cpcp.sqlite'}"
    assert s.max_upload_bytes == 500 * 1024 * 1024


@pytest.mark.parametrize(
    ("body", "env", "message"),
    [
        ("", {}, "data_dir"),
        ('data_dir = "d"\n', {}, "oversight_fingerprint"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\nbogus = 1\n', {}, "unknown setting"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n', {"CPCP_SOURCE__PORT": "x"}, "source.port"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n', {"CPCP_SOURCE__PROT": "1"}, "source.prot"),
        # One underscore where two belong: refused, not silently ignored.
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n', {"CPCP_SOURCE_PORT": "1"}, "CPCP_SOURCE__PORT"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n', {"CPCP_GATEWAY_PORT": "1"}, "CPCP_GATEWAY__PORT"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n', {"CPCP_KDF_TIME_COST": "9"}, "CPCP_KDF__TIME_COST"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n', {"CPCP_DEFAULT_LOCALE": "fr"}, "default_locale"),
        ('data_dir = "d"\noversight_fingerprint = "abc"\n', {}, "40-hex"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\ndatabase_url = "mysql://x"\n', {}, "database_url"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n[kdf]\nmemory_kib = 1\n', {}, "too weak"),
        ("data_dir = [", {}, "cpcp.toml"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n[source]\nlogin_circuit_burst = 0\n', {},
         "login_.* must be >= 1"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n', {"CPCP_SOURCE__LOGIN_QUEUE_PER_CIRCUIT": "0"},
         "login_.* must be >= 1"),
    ],
)
def test_bad_settings_fail_closed_with_a_clear_message(
    tmp_path: Path, body: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, body), env=env)


# --- [tor] --------------------------------------------------------------------------------------

BASE = f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n'


def test_torrc_include_is_taken_relative_to_the_file_and_the_environment_overrides_it(
    tmp_path: Path,
) -> None:
    assert load_settings(write(tmp_path, BASE), env={}).tor.torrc_include is None
    (tmp_path / "bridges.torrc").write_text("UseBridges 1\n")
    cfg = write(tmp_path, BASE + '[tor]\ntorrc_include = "bridges.torrc"\n')
    assert load_settings(cfg, env={}).tor.torrc_include == tmp_path / "bridges.torrc"
    other = tmp_path / "testnet.torrc"
    other.write_text("TestingTorNetwork 1\n")
    env = {"CPCP_TOR__TORRC_INCLUDE": str(other)}
    assert load_settings(cfg, env=env).tor.torrc_include == other
    assert load_settings(cfg, env={"CPCP_TOR__TORRC_INCLUDE": ""}).tor.torrc_include is None


@pytest.mark.parametrize(
    ("tor", "env", "message"),
    [
        ('torrc_include = "missing.torrc"\n', {}, r"tor.torrc_include: .*missing.torrc does not"),
        ("", {"CPCP_TOR__TORRC_INCLUDE": "/nonexistent/x.torrc"}, "/nonexistent/x.torrc does not"),
        ('torrc_include = "."\n', {}, "is not a regular file"),
        ('torrc_incl = "x"\n', {}, "unknown setting.*tor.torrc_incl"),
    ],
)
def test_bad_tor_settings_fail_closed_with_a_clear_message(
    tmp_path: Path, tor: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, BASE + "[tor]\n" + tor), env=env)


def test_tor_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'tor' must be a table"):
        load_settings(write(tmp_path, 'tor = "x"\n' + BASE), env={})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_an_unreadable_torrc_include_is_refused(tmp_path: Path) -> None:
    fragment = tmp_path / "secret.torrc"
    fragment.write_text("UseBridges 1\n")
    fragment.chmod(0)
    with pytest.raises(ConfigError, match="cannot read .*secret.torrc: Permission denied"):
        load_settings(write(tmp_path, BASE + '[tor]\ntorrc_include = "secret.torrc"\n'), env={})
