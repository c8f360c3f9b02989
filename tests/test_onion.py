"""onion/ without a tor: client keys, key-file modes, torrc lines, publication logic, the CLI."""

from __future__ import annotations

import base64
import http.server
import math
import re
import shutil
import socket
import stat
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import pytest
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey

from cpcp.errors import ConfigError
from cpcp.settings import load_settings
from onion.cli import _print_addresses, _wait_published, http_answer, ssh_answer
from onion.cli import main as onion_main
from onion.clients import (
    SEAL_NAME,
    ClientRegistry,
    auth_private_line,
    clamp,
    generate_key_pair,
    parse_client_lines,
    public_key,
    workstation_instructions,
)
from onion.deployment import OnionDeployment, parse_torrc_fragment
from onion.errors import BadClientName, OnionError, TorFailed, UnknownClient, UnsafeKeyFile
from onion.services import (
    KEY_FILE,
    OFFICER,
    SOURCE,
    SSH,
    DosDefences,
    OnionLayout,
    OnionPublisher,
    OnionService,
    Publication,
    cpcp_services,
    service_lines,
)
from onion.testnet import AUTHORITY_TIMING, AUTHORITY_VOTES, Authority, free_port
from onion.tor import OptionLine, Tor, TorControl, UploadWatch, render_torrc, server_options

from .conftest import write_deployment

ADDRESS = "a" * 56 + ".onion"
B32_KEY = re.compile(r"^[A-Z2-7]{52}$")


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- x25519 client keys -------------------------------------------------------------------------


def x25519(scalar: bytes, u: bytes) -> bytes:
    """RFC 7748's X25519 function, through the library onion.clients uses."""
    return X25519PrivateKey.from_private_bytes(scalar).exchange(X25519PublicKey.from_public_bytes(u))


def test_x25519_matches_rfc_7748_vectors() -> None:
    h = bytes.fromhex
    # Section 5.2: the function itself, then iterated (k, u = X25519(k, u), k).
    assert x25519(
        h("a546e36bf0527c9d3b16154b82465edd62144c0ac1fc5a18506a2244ba449ac4"),
        h("e6db6867583030db3594c1a424b15f7c726624ec26b3353b10a903a6d0ab1c4c"),
    ) == h("c3da55379de9c6908e94ea4df28d084f32eccf03491c71f754b4075577a28552")
    assert x25519(
        h("4b66e9d4d1b4673c5ad22691957d6af5c11b6421e0ea01d42ca4169e7918ba0d"),
        h("e5210f12786811d3f4b7959d0538ae2c31dbe7106fc03c3efc4cd549c715a493"),
    ) == h("95cbde9476e8907d7aade45cb4b873f88b595a68799fa152e6f8f7647aac7957")
    k = u = (9).to_bytes(32, "little")
    for i in range(1000):
        k, u = x25519(k, u), k
        if i == 0:
            assert k == h("422c8e7a6227d7bca1350b3e2bb7279f7897b87bb6854b783c60e80311ae3079")
    assert k == h("684cf59ba83309552800ef566f2f4d3c1c3887c49360e3875f2eb94d99532c51")
    # Section 6.1: Diffie-Hellman; public_key is what onion.clients prints for tor.
    alice = h("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
    bob = h("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
    assert public_key(alice) == h("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
    assert public_key(bob) == h("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
    shared = h("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")
    assert x25519(alice, public_key(bob)) == shared
    assert x25519(bob, public_key(alice)) == shared
    # Clamping (as tor stores a private key) does not change the public key.
    assert public_key(clamp(alice)) == public_key(alice)


def test_client_key_pair_is_in_tors_format() -> None:
    pair = generate_key_pair("desk-1")
    assert B32_KEY.match(pair.public) and B32_KEY.match(pair.private)
    private = base64.b32decode(pair.private + "====")
    assert private == clamp(private)
    assert base64.b32decode(pair.public + "====") == public_key(private)
    assert pair.private not in repr(pair)
    assert generate_key_pair("desk-1").private != pair.private


def test_workstation_gets_the_auth_private_line_and_torrc_lines() -> None:
    pair = generate_key_pair("desk-1")
    line = auth_private_line(ADDRESS, pair.private)
    assert line == f"{'a' * 56}:descriptor:x25519:{pair.private}"
    text = workstation_instructions(ADDRESS, pair, auth_dir="/var/lib/tor/onion_auth")
    lines = text.splitlines()
    assert line in lines
    assert "ClientOnionAuthDir /var/lib/tor/onion_auth" in lines
    assert pair.public not in text  # the workstation needs only its private key


def test_registry_keeps_public_keys_0600_and_a_sealing_key(tmp_path: Path) -> None:
    registry = ClientRegistry(tmp_path / "officer" / "authorized_clients")
    registry.ensure()
    assert registry.names() == []
    assert list(registry.public_keys()) == [SEAL_NAME]  # never zero keys: never published open
    pair = registry.add("desk-1")
    auth = registry.directory / "desk-1.auth"
    assert auth.read_text() == f"descriptor:x25519:{pair.public}\n"
    assert mode(auth) == 0o600 and mode(registry.directory) == 0o700
    assert pair.private not in auth.read_text()
    assert registry.names() == ["desk-1"]
    with pytest.raises(BadClientName):
        registry.add("desk-1")
    registry.revoke("desk-1")
    assert registry.names() == [] and not auth.exists()
    with pytest.raises(UnknownClient):
        registry.revoke("desk-1")


@pytest.mark.parametrize("name", ["", "../etc", "a b", "_sealed", "x" * 65, "desk\n1", ".hidden"])
def test_registry_refuses_names_that_are_not_plain_file_names(tmp_path: Path, name: str) -> None:
    with pytest.raises(BadClientName):
        ClientRegistry(tmp_path).add(name)


def test_registry_refuses_a_malformed_key_file(tmp_path: Path) -> None:
    registry = ClientRegistry(tmp_path)
    registry.ensure()
    (tmp_path / "broken.auth").write_text("descriptor:x25519:not-a-key\n")
    with pytest.raises(UnsafeKeyFile):
        registry.public_keys()


# --- onion key files -----------------------------------------------------------------------------


def test_onion_key_must_be_0600_in_a_0700_folder(tmp_path: Path) -> None:
    layout = OnionLayout(tmp_path / "onion")
    folder = layout.service_dir(SOURCE)
    folder.mkdir(parents=True, mode=0o700)
    key = folder / KEY_FILE
    key.write_bytes(b"== ed25519v1-secret: type0 ==\x00\x00\x00" + bytes(64))
    key.chmod(0o600)
    layout.check_key(SOURCE)
    key.chmod(0o640)
    with pytest.raises(UnsafeKeyFile):
        layout.check_key(SOURCE)
    key.chmod(0o600)
    folder.chmod(0o755)
    with pytest.raises(UnsafeKeyFile):
        layout.check_key(SOURCE)


def test_address_is_read_from_tors_hostname_file(tmp_path: Path) -> None:
    layout = OnionLayout(tmp_path)
    assert layout.address(SOURCE) is None
    layout.service_dir(SOURCE).mkdir()
    (layout.service_dir(SOURCE) / "hostname").write_text(ADDRESS + "\n")
    assert layout.address(SOURCE) == ADDRESS
    (layout.service_dir(SOURCE) / "hostname").write_text("example.com\n")
    with pytest.raises(OnionError):
        layout.address(SOURCE)


# --- torrc ----------------------------------------------------------------------------------------


def test_torrc_rendering_keeps_order_and_repeats() -> None:
    text = render_torrc({"SocksPort": "0", "DirAuthority": ["a 127.0.0.1:1 X", "b 127.0.0.1:2 Y"],
                         "Log": "notice stdout"})
    assert text == ("SocksPort 0\nDirAuthority a 127.0.0.1:1 X\nDirAuthority b 127.0.0.1:2 Y\n"
                    "Log notice stdout\n")


@pytest.mark.parametrize("key,value", [
    ("SocksPort", "0\nControlPort 0.0.0.0:9051"),  # a second line smuggled in
    ("HiddenServiceDir", '/tmp/x" HiddenServicePort="80'),  # breaks stem's SETCONF quoting
    ("Bad Key", "1"),
    ("Log", "notice file /tmp/x\\y"),
])
def test_torrc_rendering_refuses_injection(key: str, value: str) -> None:
    with pytest.raises(TorFailed):
        render_torrc({key: value})


def test_server_tor_listens_on_loopback_with_cookie_auth_and_no_socks(tmp_path: Path) -> None:
    options = server_options(tmp_path / "tor", log_file=tmp_path / "tor.log")
    assert options["DataDirectory"] == str(tmp_path / "tor")
    assert options["ControlPort"] == "127.0.0.1:auto"
    assert options["ControlPortWriteToFile"] == str(tmp_path / "tor" / "control-port")
    assert options["CookieAuthentication"] == "1"
    assert options["SocksPort"] == "0"
    assert server_options(tmp_path, socks_port=9150)["SocksPort"] == "127.0.0.1:9150"
    render_torrc(options)


def test_private_network_nodes_know_only_loopback_authorities() -> None:
    auth = Authority("auth0", Path("/x"), or_port=5000, dir_port=7000, v3ident="A" * 40,
                     fingerprint="B" * 40)
    assert auth.dir_authority_line == f"auth0 orport=5000 no-v2 v3ident={'A' * 40} 127.0.0.1:7000 {'B' * 40}"
    text = render_torrc({**AUTHORITY_VOTES, **AUTHORITY_TIMING})
    assert "V3AuthVotingInterval 10\n" in text and "TestingDirAuthVoteHSDir *\n" in text


def test_service_lines_turn_on_every_dos_defence_tor_knows() -> None:
    notes: list[str] = []
    lines = service_lines(OnionService(SOURCE, target_port=8080), DosDefences(), lambda _: True, notes)
    assert ("HiddenServicePort", "80 127.0.0.1:8080") in lines
    assert ("HiddenServiceVersion", "3") in lines
    for key in ("HiddenServiceEnableIntroDoSDefense", "HiddenServicePoWDefensesEnabled",
                "HiddenServiceMaxStreamsCloseCircuit"):
        assert (key, "1") in lines
    assert notes == []


def test_only_the_source_onion_exports_circuit_ids_to_its_app() -> None:
    """The source app budgets wrong codenames per circuit (issue 8): its onion must send tor's
    PROXY line; the gateway does not read one, so the officer onion must not."""
    source, officer = cpcp_services(source_port=8080, gateway_port=8081)
    assert ("HiddenServiceExportCircuitID", "haproxy") in service_lines(
        source, DosDefences(), lambda _: True)
    assert "HiddenServiceExportCircuitID" not in dict(service_lines(
        officer, DosDefences(), lambda _: True))


def test_service_lines_skip_pow_on_an_older_tor_with_a_note() -> None:
    notes: list[str] = []
    lines = service_lines(OnionService(SOURCE, target_port=8080), DosDefences(),
                          lambda key: "PoW" not in key, notes)
    assert not [k for k, _ in lines if "PoW" in k]
    assert ("HiddenServiceEnableIntroDoSDefense", "1") in lines
    assert len(notes) == 1 and "HiddenServicePoWDefensesEnabled" in notes[0]


def test_onion_targets_only_loopback() -> None:
    with pytest.raises(OnionError):
        OnionService(SOURCE, target_port=8080, target_host="0.0.0.0")


# --- publication logic against a stand-in tor ---------------------------------------------------


class FakeUploads:
    def __init__(self) -> None:
        self.waited: set[str] = set()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def wait(self, addresses: set[str], timeout: float) -> None:
        self.waited |= addresses


class FakeTor:
    """Behaves like tor where publication depends on it: writes key and hostname on SETCONF."""

    def __init__(self, foreign: Mapping[str, list[OptionLine]] | None = None, pow_: bool = True) -> None:
        self.conf: dict[str, list[OptionLine]] = dict(foreign or {})
        self.history: list[list[str]] = []
        self.uploads = FakeUploads()
        self.pow = pow_

    version = "0.4.8.13"

    def supports_option(self, name: str) -> bool:
        return self.pow or "PoW" not in name

    def bootstrap_progress(self) -> tuple[int, str]:
        return 100, "Done"

    def wait_bootstrapped(self, timeout: float) -> float:
        return 0.0

    def socks_port(self) -> int | None:
        return None

    def set_options(self, lines: Sequence[OptionLine]) -> None:
        raise AssertionError("not used by publication")

    def hidden_services(self) -> dict[str, list[OptionLine]]:
        return {d: list(lines) for d, lines in self.conf.items()}

    def set_hidden_services(self, conf: Mapping[str, Sequence[OptionLine]]) -> None:
        self.conf = {d: list(lines) for d, lines in conf.items()}
        self.history.append([Path(d).name for d in conf])
        for directory in conf:
            folder = Path(directory)
            if folder.exists() and not (folder / "hostname").exists():
                (folder / KEY_FILE).write_bytes(b"key")
                (folder / KEY_FILE).chmod(0o600)
                (folder / "hostname").write_text(folder.name[0] * 56 + ".onion\n")

    def descriptor_uploads(self) -> UploadWatch:
        return self.uploads

    def close(self) -> None:
        pass


def test_fake_and_real_tor_offer_the_same_interface() -> None:
    def methods(cls: type) -> set[str]:
        return {n for n in dir(cls) if not n.startswith("_")}

    assert methods(TorControl) <= methods(Tor)
    assert methods(TorControl) <= methods(FakeTor)
    tor: TorControl = FakeTor()  # and statically
    assert tor.version


def test_publish_keeps_foreign_services_and_waits_for_new_descriptors(tmp_path: Path) -> None:
    foreign = {"/var/lib/tor/other": [("HiddenServicePort", "22 127.0.0.1:22")]}
    tor = FakeTor(foreign)
    layout = OnionLayout(tmp_path / "onion")
    publisher = OnionPublisher(tor=tor, layout=layout)
    services = cpcp_services(source_port=8080, gateway_port=8081)
    result = publisher.publish(services)
    assert result.addresses == {SOURCE: "s" * 56 + ".onion", OFFICER: "o" * 56 + ".onion"}
    assert tor.uploads.waited == {"s" * 56, "o" * 56}
    assert list(tor.conf) == ["/var/lib/tor/other", str(layout.service_dir(SOURCE)),
                              str(layout.service_dir(OFFICER))]
    assert mode(layout.root) == 0o700 and mode(layout.service_dir(OFFICER)) == 0o700
    assert list(layout.clients(OFFICER).public_keys()) == [SEAL_NAME]
    assert not (layout.service_dir(SOURCE) / "authorized_clients").exists()
    # Unchanged: nothing is set again, nothing waited for.
    tor.uploads.waited.clear()
    assert publisher.publish(services).uploaded == []
    assert len(tor.history) == 1 and tor.uploads.waited == set()
    # After a revocation the officer onion goes down once, then comes back; the source stays.
    assert publisher.publish(services, republish=[OFFICER]).uploaded == [OFFICER]
    assert tor.history[1:] == [["other", SOURCE], ["other", SOURCE, OFFICER]]
    publisher.unpublish([SOURCE, OFFICER])
    assert list(tor.conf) == ["/var/lib/tor/other"]


def test_publish_notes_missing_pow(tmp_path: Path) -> None:
    result = OnionPublisher(tor=FakeTor(pow_=False), layout=OnionLayout(tmp_path)).publish(
        cpcp_services(source_port=8080, gateway_port=8081))
    assert len(result.notes) == 2 and all("proof-of-work" in n for n in result.notes)


def test_publish_refuses_a_world_readable_key(tmp_path: Path) -> None:
    tor, layout = FakeTor(), OnionLayout(tmp_path)
    OnionPublisher(tor=tor, layout=layout).publish(cpcp_services(source_port=8080, gateway_port=8081))
    (layout.service_dir(SOURCE) / KEY_FILE).chmod(0o644)
    with pytest.raises(UnsafeKeyFile):
        OnionPublisher(tor=tor, layout=layout).publish(cpcp_services(source_port=8080, gateway_port=8081))


# --- the CLI without a tor ----------------------------------------------------------------------


def test_cli_manages_clients_when_tor_is_not_running(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = write_deployment(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cpcp.sqlite'}")
    assert onion_main(["--config", str(config), "add-client", "desk-1"]) == 2
    assert "run' once first" in capsys.readouterr().err
    layout = OnionLayout.for_data_dir(tmp_path / "data")
    layout.service_dir(OFFICER).mkdir(parents=True)
    (layout.service_dir(OFFICER) / "hostname").write_text(ADDRESS + "\n")
    assert onion_main(["--config", str(config), "add-client", "desk-1"]) == 0
    out, err = capsys.readouterr()
    assert re.search(rf"^{'a' * 56}:descriptor:x25519:[A-Z2-7]{{52}}$", out, re.MULTILINE)
    assert "ClientOnionAuthDir /var/lib/tor/onion_auth" in out
    assert "tor is not running" in err
    assert onion_main(["--config", str(config), "list-clients"]) == 0
    assert capsys.readouterr().out == "desk-1\n"
    assert onion_main(["--config", str(config), "status"]) == 1
    out = capsys.readouterr().out
    assert "tor: not running" in out and f"officer onion: {ADDRESS}" in out and "1 workstation(s)" in out
    assert onion_main(["--config", str(config), "revoke-client", "desk-1"]) == 0
    assert onion_main(["--config", str(config), "revoke-client", "desk-1"]) == 2
    assert onion_main(["--config", str(config), "add-client", "../x"]) == 2
    capsys.readouterr()


# --- [tor] torrc_include, cpcp-onion run's waiting, status of the apps ---------------------------

KNOWN = frozenset({"TestingTorNetwork", "DirAuthority", "UseDefaultFallbackDirs", "UseBridges",
                   "Bridge", "Log", "ControlPort", "ControlPortWriteToFile", "SocksPort",
                   "HiddenServiceDir", "DataDirectory", "CookieAuthentication", "MetricsPort",
                   "__OwningControllerProcess"})


def test_a_torrc_fragment_becomes_options_under_their_canonical_names() -> None:
    text = ("# a test network\n\nTestingTorNetwork 1\n"
            "dirauthority a orport=1 no-v2 v3ident=AB 127.0.0.1:2 CD   # first\n"
            "DirAuthority\tb orport=3 no-v2 v3ident=EF 127.0.0.1:4 GH\n"
            "UseBridges 1\n")
    assert parse_torrc_fragment(text, where="f", known=KNOWN) == [
        ("TestingTorNetwork", "1"),
        ("DirAuthority", "a orport=1 no-v2 v3ident=AB 127.0.0.1:2 CD"),
        ("DirAuthority", "b orport=3 no-v2 v3ident=EF 127.0.0.1:4 GH"),
        ("UseBridges", "1"),
    ]


@pytest.mark.parametrize(("line", "message"), [
    ("ControlPort 0.0.0.0:9051", "ControlPort may not be set here"),
    ("controlport 9051", "ControlPort may not be set here"),  # tor's names ignore case
    ("ControlP 9051", "this tor has no option 'ControlP'"),  # tor would take the abbreviation
    ("ControlPortWriteToFile /tmp/x", "ControlPortWriteToFile may not be set here"),
    ("CookieAuthentication 0", "CookieAuthentication may not be set here"),
    ("SocksPort 0.0.0.0:9050", "SocksPort may not be set here"),
    ("MetricsPort 0.0.0.0:9035", "MetricsPort may not be set here"),
    ("HiddenServiceDir /tmp/evil", "HiddenServiceDir may not be set here"),
    ("DataDirectory /tmp", "DataDirectory may not be set here"),
    ("__OwningControllerProcess 1", "__OwningControllerProcess may not be set here"),
    ("%include /etc/tor/torrc.d", "only plain 'Option value' lines"),
    ("Bridge obfs4 1.2.3.4:443 \\", "only plain 'Option value' lines"),
    ('Bridge "1.2.3.4:443"', "unsafe value"),
    ("UseBridges", "UseBridges has no value"),
    ("NoSuchOption 1", "this tor has no option 'NoSuchOption'"),
])
def test_a_torrc_fragment_cannot_take_over_what_cpcp_sets(line: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"bridges.torrc:2: {message}")):
        parse_torrc_fragment(f"UseBridges 1\n{line}\n", where="bridges.torrc", known=KNOWN)


def test_deployment_tor_reads_the_fragment_after_its_own_lines(tmp_path: Path) -> None:
    fragment = tmp_path / "testnet.torrc"
    fragment.write_text("TestingTorNetwork 1\nLog info file /tmp/t.log\n")
    config = write_deployment(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cpcp.sqlite'}")
    settings = load_settings(config, env={"CPCP_TOR__TORRC_INCLUDE": str(fragment)})
    dep = OnionDeployment.from_settings(settings)
    options = dep.tor_options(known=lambda: KNOWN)
    own = server_options(dep.tor_dir, log_file=dep.log_file)
    assert list(options)[:len(own)] == list(own)  # CPCP's lines first, unchanged
    assert options["TestingTorNetwork"] == ["1"]
    assert options["Log"] == [f"notice file {dep.log_file}", "info file /tmp/t.log"]
    render_torrc(options)
    fragment.write_text("ControlPort 9051\n")
    with pytest.raises(ConfigError, match="ControlPort may not be set here"):
        dep.tor_options(known=lambda: KNOWN)
    assert OnionDeployment.from_settings(load_settings(config, env={})).tor_options(
        known=lambda: frozenset()) == {k: [v] if isinstance(v, str) else v for k, v in own.items()}


@pytest.mark.parametrize("value", ["0", "-5", "nan", "soon"])
def test_cli_refuses_a_timeout_that_is_not_a_positive_number(
    value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        onion_main(["--timeout", value, "status"])
    assert exited.value.code == 2
    assert "not a positive number of seconds" in capsys.readouterr().err


class StandInTor:
    """What run's waiting asks of tor: is it running, how far is its bootstrap."""

    def __init__(self, progress: int, *, running: bool = True) -> None:
        self.progress, self.running = progress, running

    def bootstrap_progress(self) -> tuple[int, str]:
        return self.progress, "Done" if self.progress >= 100 else "Connecting to a relay"


class StandInUploads:
    def __init__(self, published: bool) -> None:
        self.published = published

    def wait(self, addresses: set[str], timeout: float) -> None:
        if not self.published:
            time.sleep(min(timeout, 0.01))
            raise TorFailed("not yet")


def standin_deployment(tmp_path: Path) -> OnionDeployment:
    return OnionDeployment(data_dir=tmp_path, tor_dir=tmp_path / "tor",
                           log_file=tmp_path / "tor.log", layout=OnionLayout(tmp_path / "onion"),
                           services=())


def test_run_keeps_trying_and_says_why_when_tor_does_not_bootstrap(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stop = threading.Event()
    timer = threading.Timer(0.5, stop.set)
    timer.start()
    result = Publication(addresses={SOURCE: "s" * 56 + ".onion"})
    started = time.monotonic()
    done = _wait_published(standin_deployment(tmp_path), StandInTor(5), StandInUploads(False),
                           result, started=started, warn_every=0.1, stop=stop)
    elapsed = time.monotonic() - started
    timer.join()
    assert done is False  # stopped, not given up: it was still trying
    warnings = capsys.readouterr().err.splitlines()
    # At 0.1 s, then 0.2 s later, then 0.4 s later...: doubling, not one per poll, however
    # late the timer fired on a busy machine.
    assert 1 <= len(warnings) <= math.log2(elapsed / 0.1 + 1) + 1, (elapsed, warnings)
    assert warnings[0].startswith("cpcp-onion: the onions are NOT reachable yet: tor is not "
                                  "bootstrapped after 0s (at 5%: Connecting to a relay).")
    assert "Still trying" in warnings[0] and str(tmp_path / "tor.log") in warnings[0]


def test_run_says_when_tor_is_bootstrapped_and_the_onions_published(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = Publication(addresses={SOURCE: "s" * 56 + ".onion"})
    assert _wait_published(standin_deployment(tmp_path), StandInTor(100), StandInUploads(True),
                           result, started=time.monotonic(), warn_every=60, stop=threading.Event())
    err = capsys.readouterr().err
    assert "cpcp-onion: tor bootstrapped in" in err and "cpcp-onion: both onions published" in err
    assert not _wait_published(standin_deployment(tmp_path), StandInTor(5, running=False),
                               StandInUploads(False), result, started=time.monotonic(),
                               warn_every=60, stop=threading.Event())
    assert "tor exited before the onions were published" in capsys.readouterr().err


class Answering(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


@contextmanager
def app_on(port: int, status: int) -> Iterator[None]:
    handler = type("Handler", (Answering,), {"status": status})
    with http.server.ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            yield
        finally:
            server.shutdown()
            thread.join()


def test_http_answer_tells_up_from_down() -> None:
    port = free_port()
    assert http_answer(port) == (False, "does not answer (Connection refused)")
    with app_on(port, 303):
        assert http_answer(port) == (True, "answers (HTTP 303)")
    with app_on(port, 503):
        assert http_answer(port) == (False, "answers (HTTP 503)")


def test_status_checks_the_apps_behind_the_onions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = write_deployment(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cpcp.sqlite'}")
    source, gateway = free_port(), free_port()
    monkeypatch.setenv("CPCP_SOURCE__PORT", str(source))
    monkeypatch.setenv("CPCP_GATEWAY__PORT", str(gateway))
    with app_on(source, 200):
        assert onion_main(["--config", str(config), "status"]) == 1  # no tor, no gateway
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("tor: not running")
    assert out[1] == f"source onion: (no key yet) -> 127.0.0.1:{source}, NOT published"
    assert out[2] == (f"officer onion: (no key yet) -> 127.0.0.1:{gateway}, NOT published, "
                      "0 workstation(s)")
    assert out[3:] == [f"source app: http://127.0.0.1:{source}/ answers (HTTP 200)",
                       f"gateway: http://127.0.0.1:{gateway}/ does not answer (Connection refused)"]


@pytest.mark.skipif(shutil.which("tor") is None, reason="needs the tor binary")
def test_no_listener_or_weakening_option_of_the_real_tor_passes_a_fragment() -> None:
    """Against every option this tor knows: the allowlist, not a list of what to refuse."""
    from onion.deployment import ALLOWED_OPTIONS
    from onion.tor import known_options

    known = known_options()
    assert ALLOWED_OPTIONS <= known  # names this tor has
    dangerous = {name for name in known if name.endswith("Port") or name.startswith(
        ("Control", "Cookie", "HiddenService", "__", "Hardware", "Accel"))}
    dangerous |= {"PidFile", "SafeLogging", "DisableNetwork", "PublishHidServDescriptors", "Sandbox",
                  "DataDirectoryGroupReadable", "KeyDirectoryGroupReadable", "CacheDirectoryGroupReadable",
                  "User", "RunAsDaemon", "DataDirectory", "KeyDirectory", "CacheDirectory"} & known
    assert len(dangerous) > 30
    for name in sorted(dangerous):
        with pytest.raises(ConfigError, match="may not be set here"):
            parse_torrc_fragment(f"{name} 1\n", where="f", known=known)


# --- the admin SSH onion ------------------------------------------------------------------------


def test_admin_key_prints_the_servers_line_and_keeps_the_private_key_apart(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert onion_main(["admin-key", "laptop"]) == 0  # no settings needed: the admin's machine
    out = capsys.readouterr().out
    (line,) = [x for x in out.splitlines() if not x.startswith("#")]
    assert parse_client_lines(line, where="x").keys() == {"laptop"}
    (private,) = re.findall(r"^# private key: ([A-Z2-7]{52})$", out, re.MULTILINE)
    assert private not in line
    assert onion_main(["admin-key", "../x"]) == 2


@pytest.mark.parametrize(("text", "problem"), [
    ("laptop descriptor:x25519:short", UnsafeKeyFile),
    ("laptop", UnsafeKeyFile),
    (f"{SEAL_NAME} descriptor:x25519:{'A' * 52}", BadClientName),
    (f"a descriptor:x25519:{'A' * 52}\na descriptor:x25519:{'B' * 52}", BadClientName),
    (f"../a descriptor:x25519:{'A' * 52}", BadClientName),
])
def test_admin_client_lines_refuse_what_tor_would_skip(text: str, problem: type[Exception]) -> None:
    with pytest.raises(problem):
        parse_client_lines(text, where="clients")


def test_registry_replace_authorizes_exactly_the_listed_keys(tmp_path: Path) -> None:
    registry = ClientRegistry(tmp_path / "authorized_clients")
    one, two = generate_key_pair("one"), generate_key_pair("two")
    assert registry.replace({"one": one.public, "two": two.public})
    assert not registry.replace({"one": one.public, "two": two.public})  # unchanged
    assert registry.replace({"two": two.public})
    keys = registry.public_keys()
    assert keys == {SEAL_NAME: keys[SEAL_NAME], "two": two.public}
    assert all(mode(p) == 0o600 for p in registry.directory.iterdir())


def ssh_deployment(tmp_path: Path, clients: str | None) -> Path:
    config = write_deployment(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cpcp.sqlite'}")
    text = config.read_text() + "\n[tor]\nssh_port = 22\n"
    if clients is not None:
        (tmp_path / "ssh-clients").write_text(clients)
        (tmp_path / "ssh-clients").chmod(0o640)
        text += 'ssh_clients_file = "ssh-clients"\n'
    config.write_text(text)
    return config


def test_ssh_onion_is_off_by_default_and_never_without_client_keys(tmp_path: Path) -> None:
    assert [s.name for s in cpcp_services(source_port=1, gateway_port=2)] == [SOURCE, OFFICER]
    with pytest.raises(ConfigError, match="ssh_clients_file"):
        load_settings(ssh_deployment(tmp_path / "a", None), env={})
    dep = OnionDeployment.from_settings(load_settings(ssh_deployment(tmp_path / "b", "# none\n"),
                                                      env={}))
    with pytest.raises(OnionError, match="no admin key"):
        dep.sync_ssh_clients()
    config = ssh_deployment(tmp_path / "c", f"laptop descriptor:x25519:{'A' * 52}\n")
    (tmp_path / "c" / "ssh-clients").chmod(0o666)
    with pytest.raises(ConfigError, match="chmod go-w"):
        OnionDeployment.from_settings(load_settings(config, env={})).sync_ssh_clients()


def test_ssh_onion_forwards_port_22_to_sshd_for_the_listed_admins_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    laptop, spare = generate_key_pair("laptop"), generate_key_pair("spare")
    config = ssh_deployment(tmp_path, f"laptop descriptor:x25519:{laptop.public}\n"
                                      f"spare descriptor:x25519:{spare.public}  # in the safe\n")
    dep = OnionDeployment.from_settings(load_settings(config, env={}))
    (ssh,) = [s for s in dep.services if s.name == SSH]
    assert (ssh.virtual_port, ssh.target_port, ssh.client_auth) == (22, 22, True)
    assert not ssh.export_circuit_id
    assert service_lines(ssh, DosDefences(), lambda _: True)[1] == ("HiddenServicePort",
                                                                     "22 127.0.0.1:22")
    assert dep.sync_ssh_clients()
    assert not dep.sync_ssh_clients()
    tor = FakeTor()
    result = OnionPublisher(tor=tor, layout=dep.layout).publish(dep.services)
    assert result.addresses[SSH] == "s" * 56 + ".onion" and SSH in result.uploaded
    keys = dep.layout.clients(SSH).public_keys()
    assert {keys["laptop"], keys["spare"]} == {laptop.public, spare.public}
    assert dep.layout.clients(OFFICER).names() == []  # officers' workstations are apart
    # A key taken out of the file is revoked at the next start.
    (tmp_path / "ssh-clients").write_text(f"laptop descriptor:x25519:{laptop.public}\n")
    assert dep.sync_ssh_clients() and dep.layout.clients(SSH).names() == ["laptop"]
    _print_addresses(dep, result)
    assert (f"admin ssh onion: {'s' * 56}.onion port 22 (client authorization, 1 admin key(s))"
            in capsys.readouterr().out)


def test_ssh_answer_wants_an_ssh_banner() -> None:
    port = free_port()
    assert ssh_answer(port)[0] is False
    with app_on(port, 200):
        assert ssh_answer(port, timeout=0.5) == (False, "answers, but not as an SSH server")
    server = socket.create_server(("127.0.0.1", port))

    def greet() -> None:
        conn, _ = server.accept()
        with conn:
            conn.sendall(b"SSH-2.0-OpenSSH_9.2p1\r\n")

    thread = threading.Thread(target=greet)
    thread.start()
    try:
        assert ssh_answer(port) == (True, "answers (SSH)")
    finally:
        thread.join()
        server.close()


def test_tor_data_dir_setting_gives_tor_a_folder_apart_from_the_apps(tmp_path: Path) -> None:
    config = write_deployment(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cpcp.sqlite'}")
    shared = OnionDeployment.from_settings(load_settings(config, env={}))
    assert (shared.tor_dir, shared.layout.root, shared.log_file) == (
        tmp_path / "data" / "tor", tmp_path / "data" / "onion", tmp_path / "data" / "logs" / "tor.log")
    config.write_text(config.read_text() + '\n[tor]\ndata_dir = "tor-home"\n')
    apart = OnionDeployment.from_settings(load_settings(config, env={}))
    home = tmp_path / "tor-home"  # relative to the settings file, like the other paths
    assert (apart.data_dir, apart.tor_dir, apart.layout.root, apart.log_file) == (
        home, home / "tor", home / "onion", home / "logs" / "tor.log")


# --- retired officers' workstations: cpcp-onion sync-workstations and run ------------------------


def retiring_b(tmp_path: Path) -> tuple[Path, ClientRegistry]:
    """officer-b retired with desk-b and shift-desk, officer-a serving with shift-desk; the
    officer onion authorizes desk-a, desk-b and shift-desk."""
    config = write_deployment(tmp_path, f"sqlite+aiosqlite:///{tmp_path / 'data' / 'cpcp.sqlite'}")
    path = tmp_path / "deployment.toml"
    text = path.read_text(encoding="utf-8")
    text = text.replace('handle = "officer-a"\n', 'handle = "officer-a"\nworkstations = ["shift-desk"]\n', 1)
    text = text.replace('handle = "officer-b"\n', 'handle = "officer-b"\nretired = true\n'
                        'workstations = ["desk-b", "shift-desk"]\n', 1)
    path.write_text(text, encoding="utf-8")
    registry = OnionLayout.for_data_dir(tmp_path / "data").clients(OFFICER)
    for name in ("desk-a", "desk-b", "shift-desk"):
        registry.add(name)
    return config, registry


def test_retired_workstations_follow_the_rule_of_cpcp_admin_deploy(tmp_path: Path) -> None:
    retiring_b(tmp_path)
    from cpcp.deployment import load_deployment

    deployment = load_deployment(tmp_path / "deployment.toml")
    assert deployment.kept_workstations == {"shift-desk"}
    assert deployment.retired_workstations() == {"desk-b": ("officer-b",)}


def test_sync_workstations_revokes_a_retired_officers_key_and_keeps_a_shared_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, registry = retiring_b(tmp_path)
    kept = registry.public_keys()["desk-a"]
    assert onion_main(["--config", str(config), "sync-workstations"]) == 0
    out, err = capsys.readouterr()
    assert out == "revoked workstation desk-b (officer officer-b retired)\n"
    assert "tor is not running; the change applies when 'cpcp-onion run' starts it" in err
    assert registry.names() == ["desk-a", "shift-desk"]  # shift-desk: officer-a still uses it
    assert registry.public_keys()["desk-a"] == kept
    # Idempotent: a second run has nothing to do and says nothing.
    assert onion_main(["--config", str(config), "sync-workstations"]) == 0
    assert capsys.readouterr() == ("", "")
    assert registry.names() == ["desk-a", "shift-desk"]


def test_sync_workstations_re_publishes_the_officer_onion_on_the_running_tor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, registry = retiring_b(tmp_path)
    calls: list[set[str]] = []
    monkeypatch.setattr("onion.cli._apply", lambda dep, args: calls.append(set(registry.names())))
    assert onion_main(["--config", str(config), "sync-workstations"]) == 0
    assert calls == [{"desk-a", "shift-desk"}]  # after the key went, once
    assert onion_main(["--config", str(config), "sync-workstations"]) == 0
    assert len(calls) == 1  # nothing changed: nothing to re-publish
    capsys.readouterr()


def test_sync_workstations_refuses_a_broken_deployment_file_and_changes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, registry = retiring_b(tmp_path)
    path = tmp_path / "deployment.toml"
    path.write_text(path.read_text(encoding="utf-8").replace('["desk-b", ', '["../desk-b", ', 1),
                    encoding="utf-8")
    assert onion_main(["--config", str(config), "sync-workstations"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "cpcp-onion: officer officer-b: workstation '../desk-b' is not a cpcp-onion" in err
    path.write_text("[[officers]\n", encoding="utf-8")
    assert onion_main(["--config", str(config), "sync-workstations"]) == 2
    assert f"cpcp-onion: deployment file {path}:" in capsys.readouterr().err
    path.unlink()
    assert onion_main(["--config", str(config), "sync-workstations"]) == 2
    assert "No such file" in capsys.readouterr().err
    assert registry.names() == ["desk-a", "desk-b", "shift-desk"]


def test_run_revokes_retired_officers_keys_before_tor_starts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, registry = retiring_b(tmp_path)
    seen: list[list[str]] = []

    def launch(**kwargs: object) -> Tor:
        seen.append(registry.names())
        raise TorFailed("stand-in: no tor here")

    monkeypatch.setattr("onion.cli.signal.signal", lambda *args: None)  # keep pytest's handlers
    monkeypatch.setattr("onion.cli.Tor.launch", launch)
    assert onion_main(["--config", str(config), "run"]) == 2
    assert seen == [["desk-a", "shift-desk"]]  # what the fresh tor would have published
    err = capsys.readouterr().err
    assert "cpcp-onion: revoked workstation desk-b (officer officer-b retired)" in err
    assert "stand-in: no tor here" in err


def test_add_client_refuses_a_name_a_retired_officer_lists(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, registry = retiring_b(tmp_path)
    layout = OnionLayout.for_data_dir(tmp_path / "data")
    (layout.service_dir(OFFICER) / "hostname").write_text(ADDRESS + "\n")
    assert onion_main(["--config", str(config), "sync-workstations"]) == 0
    capsys.readouterr()
    assert onion_main(["--config", str(config), "add-client", "desk-b"]) == 2
    assert ("workstation 'desk-b' is listed on the entry of retired officer(s) officer-b"
            in capsys.readouterr().err)
    assert registry.names() == ["desk-a", "shift-desk"]
    assert onion_main(["--config", str(config), "add-client", "desk-c"]) == 0  # the control
    capsys.readouterr()
