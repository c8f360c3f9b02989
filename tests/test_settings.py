from __future__ import annotations

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
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n', {"CPCP_DEFAULT_LOCALE": "fr"}, "default_locale"),
        ('data_dir = "d"\noversight_fingerprint = "abc"\n', {}, "40-hex"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\ndatabase_url = "mysql://x"\n', {}, "database_url"),
        (f'data_dir = "d"\noversight_fingerprint = "{FPR}"\n[kdf]\nmemory_kib = 1\n', {}, "too weak"),
        ("data_dir = [", {}, "cpcp.toml"),
    ],
)
def test_bad_settings_fail_closed_with_a_clear_message(
    tmp_path: Path, body: str, env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, body), env=env)
