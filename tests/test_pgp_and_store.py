from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from cpcp.deployment import import_pinned_key
from cpcp.errors import KeyProblem, StoreError
from cpcp.pgp import Keyring
from cpcp.store import Store

from .conftest import FPR, TEST_KEYS, gpg_decrypt


@pytest.fixture
def ring(tmp_path: Path) -> Keyring:
    keyring = Keyring(tmp_path / "ring")
    for who in ("officer-a", "oversight"):
        keyring.import_public_keys((TEST_KEYS / f"{who}.pub.asc").read_text())
    return keyring


async def test_streamed_encryption_decrypts_with_stock_gpg(ring: Keyring, tmp_path: Path, officer_gnupg: Path) -> None:
    store = Store(tmp_path / "store")
    pending = store.new_object()
    stream = await ring.start_encryption([FPR["officer-a"], FPR["oversight"]], pending.fd)
    payload = os.urandom(3 * 1024 * 1024 + 17)
    for i in range(0, len(payload), 65536):
        await stream.write(payload[i : i + 65536])
    await stream.finish()
    name = store.commit(pending, case_public_id="12345678-1234-1234-1234-123456789abc", role="file")
    ciphertext = store.read(name)
    assert payload[:4096] not in ciphertext
    assert gpg_decrypt(officer_gnupg, ciphertext) == payload
    assert oct(store.path(name).stat().st_mode & 0o777) == "0o600"


async def test_aborted_encryption_leaves_nothing(ring: Keyring, tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    pending = store.new_object()
    stream = await ring.start_encryption([FPR["officer-a"]], pending.fd)
    await stream.write(b"half a tip")
    await stream.abort()
    store.discard(pending)
    assert [p for p in (tmp_path / "store").rglob("*") if p.is_file()] == []


def test_pinned_key_must_match_exist_and_be_valid(ring: Keyring, tmp_path: Path) -> None:
    ring.require_encryption_key(FPR["officer-a"], who="a")
    with pytest.raises(KeyProblem, match="no public key"):
        ring.require_encryption_key(FPR["officer-b"], who="b")
    with pytest.raises(KeyProblem, match="not the pinned"):
        import_pinned_key(ring, TEST_KEYS / "officer-b.pub.asc", FPR["officer-a"], who="b")


def test_expired_key_is_refused(ring: Keyring, tmp_path: Path) -> None:
    home = tmp_path / "old"
    home.mkdir(mode=0o700)
    past = ["gpg", "--homedir", str(home), "--batch", "--passphrase", "", "--faked-system-time", "20200101T000000"]
    subprocess.run([*past, "--quick-gen-key", "expired <x@test.invalid>", "ed25519", "sign", "1d"], check=True, capture_output=True)
    listing = subprocess.run(["gpg", "--homedir", str(home), "--with-colons", "--list-keys"], capture_output=True, text=True, check=True).stdout
    fpr = next(line.split(":")[9] for line in listing.splitlines() if line.startswith("fpr"))
    subprocess.run([*past, "--quick-add-key", fpr, "cv25519", "encr", "1d"], check=True, capture_output=True)
    key_file = tmp_path / "expired.asc"
    key_file.write_bytes(subprocess.run(["gpg", "--homedir", str(home), "--armor", "--export", fpr], capture_output=True, check=True).stdout)
    with pytest.raises(KeyProblem, match="expired"):
        import_pinned_key(ring, key_file, fpr, who="old officer")


def test_private_keys_are_never_imported_on_the_server(ring: Keyring) -> None:
    with pytest.raises(KeyProblem, match="private key"):
        ring.import_public_keys((TEST_KEYS / "officer-b.secret.asc").read_text())
    assert ring.secret_fingerprints() == set()


def test_store_refuses_paths_outside_it(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    for bad in ("../secrets.json", "/etc/passwd", "x/../../y.gpg", "12345678-1234-1234-1234-123456789abc/../../a.gpg"):
        with pytest.raises(StoreError):
            store.path(bad)


def test_sweep_removes_leftovers_but_keeps_referenced_objects(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    keep = store.write_bytes(b"c1", case_public_id="12345678-1234-1234-1234-123456789abc", role="file")
    orphan = store.write_bytes(b"c2", case_public_id="12345678-1234-1234-1234-123456789abc", role="file")
    live = store.new_object()  # this process is alive: its upload must survive a sweep
    crashed = store.tmp / "999999999"  # no such process: what a killed server left
    crashed.mkdir()
    (crashed / "x.part").write_bytes(b"ciphertext")
    assert store.sweep({keep}, older_than=3600) == 1  # the orphan is too young to judge
    assert not crashed.exists() and live.path.exists() and store.path(orphan).exists()
    assert store.sweep({keep}, older_than=-1) == 1
    assert store.path(keep).exists() and not store.path(orphan).exists() and live.path.exists()
    store.discard(live)


def test_reply_key_passphrase_is_needed_every_time_and_never_cached(tmp_path: Path) -> None:
    """A source's reply key: generated locked, readable with the passphrase, and the agent
    keeps nothing: right after generation or a successful decryption, no passphrase or a
    wrong one fails. Several keys in a row, as a busy source app makes them."""
    from cpcp.errors import DecryptionFailed

    ring = Keyring(tmp_path / "sources")
    for i in range(3):
        passphrase = os.urandom(32).hex()
        fpr = ring.generate_key(passphrase=passphrase, uid=f"source {i}")
        ciphertext = subprocess.run(
            ["gpg", "--homedir", str(tmp_path / "sources"), "--batch", "--trust-model", "always",
             "--encrypt", "-r", fpr], input=b"reply %d" % i, capture_output=True, check=True).stdout
        for wrong in (None, "not-the-passphrase"):
            with pytest.raises(DecryptionFailed):
                ring.decrypt_bytes(ciphertext, passphrase=wrong)
        assert ring.decrypt_bytes(ciphertext, passphrase=passphrase) == b"reply %d" % i
        with pytest.raises(DecryptionFailed):
            ring.decrypt_bytes(ciphertext, passphrase=None)


async def test_a_gpg_gone_before_its_pipe_is_set_up_is_encryption_failed() -> None:
    """gpg may exit at once (an unknown recipient) before the stream enlarges its stdin pipe;
    asyncio has then closed the pipe. That is EncryptionFailed when written to, never a
    ValueError out of the constructor (seen once in a full run; here made certain)."""
    import asyncio

    from cpcp.errors import EncryptionFailed
    from cpcp.pgp import EncryptionStream

    proc = await asyncio.create_subprocess_exec(
        "true", stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    await proc.wait()
    for _ in range(100):  # until asyncio has seen the reader go and closed the pipe
        if proc.stdin is not None and proc.stdin.transport.is_closing():
            break
        await asyncio.sleep(0.01)
    assert proc.stdin is not None and proc.stdin.transport.is_closing()
    stream = EncryptionStream(proc)
    with pytest.raises(EncryptionFailed):
        await stream.write(b"x" * 65536)
        await stream.finish()
