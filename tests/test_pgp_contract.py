"""The OpenPGP layer's contract with real gpg: what each Keyring call returns or refuses, the
agent settings that keep no reply-key passphrase, and what an encryption stream does when gpg
fails.

Every promise here is one a caller acts on: a key reported as able to encrypt, a refusal
message an admin reads at start-up, an uncompressed message, a failed gpg that must surface as
EncryptionFailed rather than as a stored, empty "tip".
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import stat
import subprocess
from pathlib import Path

import pytest

from cpcp.errors import DecryptionFailed, EncryptionFailed, KeyProblem
from cpcp.pgp import _AGENT_CONF, Keyring, random_uid

from .conftest import FPR, TEST_KEYS, gpg_decrypt

F_GETPIPE_SZ = getattr(fcntl, "F_GETPIPE_SZ", 1032)  # Linux


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    keyring = Keyring(tmp_path / "ring")
    for who in ("officer-a", "oversight"):
        keyring.import_public_keys((TEST_KEYS / f"{who}.pub.asc").read_text())
    return keyring


def _packets(home: Path, data: bytes) -> str:
    return subprocess.run(["gpg", "--homedir", str(home), "--batch", "--list-packets"],
                          input=data, capture_output=True, check=False).stdout.decode()


def test_home_is_private_and_the_agent_caches_no_passphrase(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Keyring(home)
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    conf = (home / "gpg-agent.conf").read_text()
    assert conf == _AGENT_CONF
    assert conf.splitlines() == ["default-cache-ttl 0", "max-cache-ttl 10", "allow-loopback-pinentry",
                                 "s2k-count 65536"]
    (home / "gpg-agent.conf").write_text("default-cache-ttl 600\n")
    home.chmod(0o755)
    Keyring(home)  # a changed file is put back, the folder made private again
    assert (home / "gpg-agent.conf").read_text() == _AGENT_CONF
    assert stat.S_IMODE(home.stat().st_mode) == 0o700


def test_import_returns_the_fingerprints_and_refuses_what_is_no_key(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "ring")
    assert ring.import_public_keys((TEST_KEYS / "officer-b.pub.asc").read_text()) == [FPR["officer-b"]]
    with pytest.raises(KeyProblem, match="^no OpenPGP public key found in the data given$"):
        ring.import_public_keys("not a key")
    with pytest.raises(KeyProblem, match="^refusing to import a private key onto the server$"):
        ring.import_public_keys("-----BEGIN PGP PRIVATE KEY BLOCK-----\n")


def test_key_info_describes_the_pinned_key(ring: Keyring) -> None:
    info = ring.key_info(FPR["officer-a"])
    assert info is not None
    assert info.fingerprint == FPR["officer-a"] and info.can_encrypt is True
    assert info.uids and all(isinstance(u, str) for u in info.uids)
    assert info.validity not in ("e", "r")
    assert ring.key_info(FPR["officer-b"]) is None
    # A key id (the fingerprint's tail) matches in gpg but is not the pinned fingerprint.
    assert ring.key_info(FPR["officer-a"][-16:]) is None


def _make_key(home: Path, *usage: str, expire: str = "0", past: bool = False) -> tuple[str, str]:
    home.mkdir(mode=0o700, exist_ok=True)
    base = ["gpg", "--homedir", str(home), "--batch", "--passphrase", ""]
    if past:
        base += ["--faked-system-time", "20200101T000000"]
    subprocess.run([*base, "--quick-gen-key", f"k{len(usage)} <k@test.invalid>", "ed25519", "sign", expire],
                   check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--homedir", str(home), "--with-colons", "--list-keys"],
                             capture_output=True, text=True, check=True).stdout
    fpr = [line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr")][-1]
    for u in usage:
        subprocess.run([*base, "--quick-add-key", fpr, "cv25519", u, expire], check=True, capture_output=True)
    armored = subprocess.run(["gpg", "--homedir", str(home), "--armor", "--export", fpr],
                             capture_output=True, text=True, check=True).stdout
    return fpr, armored


def test_each_unusable_key_is_refused_with_its_reason(ring: Keyring, tmp_path: Path) -> None:
    sign_only, armored = _make_key(tmp_path / "k1")
    ring.import_public_keys(armored)
    info = ring.key_info(sign_only)
    assert info is not None and info.can_encrypt is False and info.expires is None
    with pytest.raises(KeyProblem, match=f"^desk: key {sign_only} has no usable encryption subkey$"):
        ring.require_encryption_key(sign_only, who="desk")
    with pytest.raises(KeyProblem, match=f"^x: no public key with pinned fingerprint {FPR['officer-b']}$"):
        ring.require_encryption_key(FPR["officer-b"], who="x")
    expiring, armored = _make_key(tmp_path / "k2", "encr", expire="2030-01-01")
    ring.import_public_keys(armored)
    info = ring.require_encryption_key(expiring, who="y")
    assert info.expires is not None and info.expires.tzinfo is not None
    assert dt.datetime(2029, 12, 30, tzinfo=dt.UTC) < info.expires < dt.datetime(2030, 1, 2, tzinfo=dt.UTC)
    expired, armored = _make_key(tmp_path / "k3", "encr", expire="1d", past=True)
    ring.import_public_keys(armored)
    with pytest.raises(KeyProblem, match=f"^old: key {expired} has expired$"):
        ring.require_encryption_key(expired, who="old")


def test_a_revoked_key_is_refused(ring: Keyring, tmp_path: Path) -> None:
    home = tmp_path / "rev"
    fpr, _ = _make_key(home, "encr")
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--yes", "--passphrase", "",
                    "--pinentry-mode", "loopback", "--gen-revoke", "--output", str(tmp_path / "rev.asc"), fpr],
                   input=b"y\n0\n\ny\n", capture_output=True, check=False)
    rev_cert = (home / "openpgp-revocs.d" / f"{fpr}.rev").read_text().replace(":-----BEGIN", "-----BEGIN")
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import"], input=rev_cert.encode(),
                   capture_output=True, check=True)
    armored = subprocess.run(["gpg", "--homedir", str(home), "--armor", "--export", fpr],
                             capture_output=True, text=True, check=True).stdout
    ring.import_public_keys(armored)
    with pytest.raises(KeyProblem, match=f"^r: key {fpr} is revoked$"):
        ring.require_encryption_key(fpr, who="r")


def test_recipients_of_a_message_are_read_without_decrypting(ring: Keyring, officer_gnupg: Path) -> None:
    ids = ring.encryption_key_ids(FPR["officer-a"])
    assert len(ids) == 1 and all(re.fullmatch(r"[0-9A-F]{16}", i) for i in ids)
    assert not ids & {FPR["officer-a"][-16:]}  # the signing primary is not a recipient
    assert ring.encryption_key_ids(FPR["officer-b"]) == set()
    both = ids | ring.encryption_key_ids(FPR["oversight"])
    binary = ring.encrypt_bytes(b"hello", [FPR["officer-a"], FPR["oversight"]])
    assert ring.message_recipients(binary) == both
    armored = subprocess.run(["gpg", "--homedir", str(ring.home), "--batch", "--trust-model", "always",
                              "--armor", "--encrypt", "-r", FPR["officer-a"]], input=b"x",
                             capture_output=True, check=True).stdout
    assert ring.message_recipients(armored) == ids
    for not_a_message in (b"", b"hello", b"-----BEGIN PGP PUBLIC KEY BLOCK-----", b"\x99\x01"):
        assert ring.message_recipients(not_a_message) == set()


def test_encrypt_bytes_is_uncompressed_and_fails_loudly(ring: Keyring, officer_gnupg: Path) -> None:
    ciphertext = ring.encrypt_bytes(b"A" * 10000, [FPR["officer-a"]])
    assert ciphertext[:1] in (b"\x84", b"\x85", b"\xc1")  # binary, not armored
    assert gpg_decrypt(officer_gnupg, ciphertext) == b"A" * 10000
    packets = _packets(officer_gnupg, ciphertext)
    assert ":literal data packet:" in packets and "compressed packet" not in packets
    with pytest.raises(EncryptionFailed, match="^gpg: "):
        ring.encrypt_bytes(b"x", [FPR["officer-b"]])


def test_generated_reply_keys_are_locked_exportable_and_deletable(tmp_path: Path) -> None:
    ring = Keyring(tmp_path / "sources")
    uid = random_uid()
    fpr = ring.generate_key(passphrase="p" * 64, uid=uid)
    assert ring.secret_fingerprints() == {fpr}
    info = ring.require_encryption_key(fpr, who="source")
    assert info.uids == (uid,)  # the uid alone: no comment, no e-mail, no host
    assert info.expires is None
    exported = ring.export_public_key(fpr)
    assert "PUBLIC KEY BLOCK" in exported and "PRIVATE" not in exported
    listing = _packets(tmp_path / "sources", exported.encode())
    assert "algo 22" in listing and "algo 18" in listing  # EdDSA primary, ECDH subkey
    ciphertext = ring.encrypt_bytes(b"reply", [fpr])
    assert ring.decrypt_bytes(ciphertext, passphrase="p" * 64) == b"reply"
    ring.delete_key_pair(fpr, passphrase="p" * 64)
    assert ring.secret_fingerprints() == set() and ring.key_info(fpr) is None
    with pytest.raises(KeyProblem, match=f"^no public key {fpr} to export$"):
        ring.export_public_key(fpr)


def test_a_reply_key_is_forgotten_without_its_passphrase(tmp_path: Path) -> None:
    """Retention deletes a source's reply key; the passphrase derives from the codename, which
    the server never has."""
    ring = Keyring(tmp_path / "sources")
    before = dt.datetime.now(dt.UTC).timestamp()
    gone = ring.generate_key(passphrase="p" * 64, uid=random_uid())
    kept = ring.generate_key(passphrase="q" * 64, uid=random_uid())
    created = ring.key_creation_times()
    assert set(created) == {gone, kept}
    assert all(before - 2 <= when <= dt.datetime.now(dt.UTC).timestamp() + 1 for when in created.values())
    ring.forget_key(gone)
    assert ring.key_info(gone) is None and ring.secret_fingerprints() == {kept}
    assert set(ring.key_creation_times()) == {kept}
    ring.forget_key(gone)  # gone already: nothing to do
    ring.import_public_keys((TEST_KEYS / "officer-a.pub.asc").read_text())
    ring.forget_key(FPR["officer-a"])  # a public key alone goes too
    assert set(ring.key_creation_times()) == {kept}


def test_a_key_gpg_would_not_delete_is_reported(ring: Keyring, monkeypatch: pytest.MonkeyPatch) -> None:
    ring.import_public_keys((TEST_KEYS / "officer-a.pub.asc").read_text())
    monkeypatch.setattr(ring._gpg, "delete_keys", lambda *a, **k: None)
    with pytest.raises(KeyProblem, match=f"^gpg did not delete key {FPR['officer-a']}$"):
        ring.forget_key(FPR["officer-a"])


def test_random_uids_say_nothing_and_differ() -> None:
    uids = {random_uid() for _ in range(20)}
    assert len(uids) == 20
    assert all(re.fullmatch(r"cpcp-source-[0-9a-f]{16}", u) for u in uids)


def test_decrypting_garbage_fails_cleanly(ring: Keyring) -> None:
    with pytest.raises(DecryptionFailed, match="^gpg: "):
        ring.decrypt_bytes(b"not a message")


async def test_stream_refuses_no_recipients_and_reports_gpg_failure(ring: Keyring, tmp_path: Path) -> None:
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(EncryptionFailed, match="^no recipients$"):
            await ring.start_encryption([], out)
        # gpg dies mid-upload (killed, out of memory): the tip must fail, not be stored.
        stream = await ring.start_encryption([FPR["officer-a"]], out)
        await stream.write(b"x")
        stream._proc.kill()
        await stream._proc.wait()
        with pytest.raises(EncryptionFailed, match="^gpg stopped reading$"):
            for _ in range(64):
                await stream.write(b"x" * 65536)
        stream = await ring.start_encryption([FPR["officer-a"]], out)
        stream._proc.kill()
        with pytest.raises(EncryptionFailed, match="^gpg exited -9: $"):
            await stream.finish()
    finally:
        os.close(out)


async def test_streamed_tips_are_uncompressed(ring: Keyring, tmp_path: Path, officer_gnupg: Path) -> None:
    path = tmp_path / "out"
    out = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        stream = await ring.start_encryption([FPR["officer-a"]], out)
        await stream.write(b"B" * 100_000)
        await stream.finish()
    finally:
        os.close(out)
    data = path.read_bytes()
    assert len(data) > 100_000  # zlib would shrink this to a few hundred bytes
    packets = _packets(officer_gnupg, data)
    assert ":literal data packet:" in packets and "compressed packet" not in packets
    assert gpg_decrypt(officer_gnupg, data) == b"B" * 100_000


async def test_an_aborted_stream_kills_gpg(ring: Keyring, tmp_path: Path) -> None:
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        stream = await ring.start_encryption([FPR["officer-a"]], out)
        await stream.write(b"half")
        await stream.abort()
        assert stream._proc.returncode is not None and stream._proc.returncode < 0
        await stream.abort()  # again: nothing left to kill
    finally:
        os.close(out)


def test_a_key_whose_primary_encrypts_is_recognised(ring: Keyring, tmp_path: Path) -> None:
    # Officers bring their own keys; an RSA key whose primary key encrypts is common.
    home = tmp_path / "rsa"
    home.mkdir(mode=0o700)
    subprocess.run(["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--quick-gen-key",
                    "rsa officer <rsa@test.invalid>", "rsa2048", "cert,encr", "0"],
                   check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--homedir", str(home), "--with-colons", "--list-keys"],
                             capture_output=True, text=True, check=True).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    armored = subprocess.run(["gpg", "--homedir", str(home), "--armor", "--export", fpr],
                             capture_output=True, text=True, check=True).stdout
    ring.import_public_keys(armored)
    assert ring.require_encryption_key(fpr, who="rsa").can_encrypt
    assert ring.encryption_key_ids(fpr) == {fpr[-16:]}
    # An RSA-2048 session key packet is longer than 255 bytes: old format, two-byte length.
    ciphertext = ring.encrypt_bytes(b"x", [fpr])
    assert ciphertext[:1] == b"\x85"
    assert ring.message_recipients(ciphertext) == {fpr[-16:]}


def test_recipients_of_a_new_format_message_are_read(ring: Keyring) -> None:
    # Other OpenPGP implementations write new-format packet headers (0xC1 for a session key
    # packet); the same message with its first header rewritten so must read the same.
    ciphertext = ring.encrypt_bytes(b"x", [FPR["officer-a"]])
    assert ciphertext[:1] == b"\x84" and ciphertext[1] < 192
    new_format = b"\xc1" + ciphertext[1:]
    assert ring.message_recipients(new_format) == ring.encryption_key_ids(FPR["officer-a"])


async def test_the_pipe_into_gpg_holds_a_mebibyte(ring: Keyring, tmp_path: Path) -> None:
    # bench/upload.py: with 1 MiB gpg and the request parser overlap instead of taking turns.
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        stream = await ring.start_encryption([FPR["officer-a"]], out)
        stdin = stream._proc.stdin
        assert stdin is not None
        pipe = stdin.transport.get_extra_info("pipe")
        assert fcntl.fcntl(pipe.fileno(), F_GETPIPE_SZ) == 1024 * 1024
        await stream.finish()
    finally:
        os.close(out)


def _agent_s2k_count(home: Path) -> str:
    done = subprocess.run(["gpg-connect-agent", "--homedir", str(home), "GETINFO s2k_count", "/bye"],
                          capture_output=True, text=True, check=True)
    return done.stdout.splitlines()[0]


def test_a_running_agent_is_made_to_reload_the_settings(tmp_path: Path) -> None:
    home = tmp_path / "a" / "b" / "home"  # parents are made too
    home.mkdir(parents=True, mode=0o700)
    (home / "gpg-agent.conf").write_text(_AGENT_CONF.replace("s2k-count 65536", "s2k-count 2000000"))
    try:
        assert _agent_s2k_count(home) == "D 2000000"  # an agent from an older configuration
        Keyring(home)
        assert _agent_s2k_count(home) == "D 65536"
    finally:
        subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)
    Keyring(tmp_path / "x" / "y" / "z")
    assert (tmp_path / "x" / "y" / "z" / "gpg-agent.conf").read_text() == _AGENT_CONF


def test_the_configured_gpg_binary_is_used(tmp_path: Path) -> None:
    with pytest.raises(OSError):
        Keyring(tmp_path / "ring", gpg_binary=str(tmp_path / "no-such-gpg"))


def test_reply_key_uids_carry_nothing_but_the_random_name(tmp_path: Path) -> None:
    # python-gnupg fills in root@<hostname> and "Generated by gnupg.py" unless told not to.
    ring = Keyring(tmp_path / "sources")
    uid = random_uid()
    fpr = ring.generate_key(passphrase="p" * 64, uid=uid)
    info = ring.key_info(fpr)
    assert info is not None
    assert re.fullmatch(re.escape(uid) + r"( \(None\))?( <None>)?", info.uids[0]), info.uids
    assert os.uname().nodename not in info.uids[0]


def test_an_unprotected_key_is_made_only_without_a_passphrase(tmp_path: Path) -> None:
    # Demo and test officer keys (passphrase None) must decrypt without one, in batch mode.
    ring = Keyring(tmp_path / "demo")
    fpr = ring.generate_key(passphrase=None, uid="demo officer")
    ciphertext = ring.encrypt_bytes(b"demo", [fpr])
    assert ring.decrypt_bytes(ciphertext) == b"demo"


async def test_a_failing_gpg_is_reported_with_the_tail_of_its_errors(tmp_path: Path) -> None:
    # A unit test of EncryptionStream.finish alone: a stand-in gpg that reads the tip, then
    # fails with a long error (and a byte that is not UTF-8), as a gpg out of disk space does.
    fake = tmp_path / "gpg"
    fake.write_text(
        "#!/bin/sh\n"
        'case " $* " in *" --encrypt "*) ;; *) exec gpg "$@";; esac\n'
        "cat >/dev/null\n"
        "printf 'gpg: head of the error ' >&2\n"
        "i=0; while [ $i -lt 40 ]; do printf 'x-%02d-xxxx ' $i >&2; i=$((i+1)); done\n"
        "printf '\\377 end of the error' >&2\n"
        "exit 2\n"
    )
    fake.chmod(0o755)
    ring = Keyring(tmp_path / "ring", gpg_binary=str(fake))
    out = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        stream = await ring.start_encryption([FPR["officer-a"]], out)
        await stream.write(b"tip")
        with pytest.raises(EncryptionFailed) as err:
            await stream.finish()
    finally:
        os.close(out)
    message = str(err.value)
    assert message.startswith("gpg exited 2: ") and message.endswith("\ufffd end of the error")
    assert len(message) == len("gpg exited 2: ") + 300  # the last 300 characters, no more
