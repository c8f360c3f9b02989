"""The encrypted store's contract, one behaviour at a time: private modes, names, all-or-nothing
commits, refusals, and exactly what a start-up sweep removes.

The store is the only place ciphertext touches disk; a mode left open, a temp file that
survives, or a sweep that removes a live upload or a referenced object each loses or leaks a
tip, and none of them shows in a round-trip test.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import time
from pathlib import Path

import pytest

from cpcp.errors import StoreError
from cpcp.store import Store, _alive

CASE = "0f1e2d3c-4b5a-4968-8776-655443322110"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_store_folders_are_private(tmp_path: Path) -> None:
    root = tmp_path / "a" / "store"
    root.parent.mkdir()
    root.mkdir(mode=0o755)
    store = Store(tmp_path / "a" / ".." / "a" / "store")
    assert store.root == root  # resolved: the escape check compares against it
    assert store.tmp == root / ".tmp"
    assert _mode(root) == 0o700 and _mode(store.tmp) == 0o700
    Store(tmp_path / "new" / "store")  # parents are made
    assert _mode(tmp_path / "new" / "store" / ".tmp") == 0o700


def test_a_new_object_is_a_private_temp_file_of_this_process(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    first, second = store.new_object(), store.new_object()
    assert first.path.parent == store.tmp / str(os.getpid())
    assert _mode(first.path.parent) == 0o700 and _mode(first.path) == 0o600
    assert re.fullmatch(r"[0-9a-f]{32}\.part", first.path.name)
    assert first.path != second.path
    os.write(first.fd, b"abc")
    assert first.size() == 3 and second.size() == 0
    for pending in (first, second):
        store.discard(pending)
        assert pending.fd == -1 and not pending.path.exists()
    store.discard(first)  # twice is harmless: the descriptor is not closed again


def test_commit_moves_the_object_into_its_private_case_folder(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    pending = store.new_object()
    os.write(pending.fd, b"ciphertext")
    name = store.commit(pending, case_public_id=CASE, role="file")
    assert re.fullmatch(CASE + r"/[0-9a-f]{32}-file\.gpg", name)
    assert pending.fd == -1 and not pending.path.exists()
    assert (store.root / name).read_bytes() == b"ciphertext"
    assert _mode(store.root / CASE) == 0o700
    assert list(store.object_names()) == [name]
    assert store.read(name) == b"ciphertext" and store.size(name) == 10
    store.delete(name)
    assert not (store.root / name).exists()
    store.delete(name)  # already gone: nothing to do


def test_a_deleted_cases_folder_goes_only_when_empty(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    name = store.write_bytes(b"ciphertext", case_public_id=CASE, role="file")
    store.remove_empty_case_folder(CASE)  # an object is left: the folder stays, for the sweep
    assert (store.root / name).read_bytes() == b"ciphertext"
    store.delete(name)
    store.remove_empty_case_folder(CASE)
    assert not (store.root / CASE).exists() and (store.root / ".tmp").is_dir()
    store.remove_empty_case_folder(CASE)  # already gone: nothing to do
    with pytest.raises(StoreError, match="^bad case id$"):
        store.remove_empty_case_folder(".tmp")


@pytest.mark.parametrize(
    ("case", "role"),
    [
        ("../../etc", "file"),
        (CASE.upper(), "file"),
        (CASE + "0", "file"),
        (CASE, "../x"),
        (CASE, "file1"),
        (CASE, ""),
    ],
)
def test_commit_refuses_a_bad_case_id_or_role_and_keeps_the_temp_file(
    tmp_path: Path, case: str, role: str
) -> None:
    store = Store(tmp_path / "store")
    pending = store.new_object()
    with pytest.raises(StoreError, match="^bad case id or role$"):
        store.commit(pending, case_public_id=case, role=role)
    assert pending.fd >= 0 and pending.path.exists()  # the caller's discard removes it
    store.discard(pending)
    assert list(store.object_names()) == []


def test_write_bytes_stores_a_small_ciphertext(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    name = store.write_bytes(b"reply", case_public_id=CASE, role="message")
    assert name.endswith("-message.gpg") and store.read(name) == b"reply"
    assert list((store.tmp / str(os.getpid())).iterdir()) == []


def test_write_bytes_that_fails_leaves_no_temp_file(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    with pytest.raises(TypeError):
        store.write_bytes("not bytes", case_public_id=CASE, role="message")  # type: ignore[arg-type]
    assert list((store.tmp / str(os.getpid())).iterdir()) == []
    with pytest.raises(StoreError):
        store.write_bytes(b"x", case_public_id="bad", role="message")


@pytest.mark.parametrize(
    "bad",
    [
        "",
        f"{CASE}/00112233445566778899aabbccddeeff-file.gpg.part",
        f"{CASE}/00112233445566778899aabbccddeeff-file.txt",
        f"{CASE}/00112233445566778899aabbccddeef-file.gpg",
        f"{CASE}/00112233445566778899AABBCCDDEEFF-file.gpg",
        f"{CASE}/00112233445566778899aabbccddeeff-File.gpg",
        f"{CASE}/00112233445566778899aabbccddeeff-.gpg",
        f"x{CASE}/00112233445566778899aabbccddeeff-file.gpg",
        f"{CASE}/00112233445566778899aabbccddeeff-file.gpg/x",
        f"{CASE}//00112233445566778899aabbccddeeff-file.gpg",
    ],
)
def test_only_object_names_are_accepted(tmp_path: Path, bad: str) -> None:
    store = Store(tmp_path / "store")
    with pytest.raises(StoreError, match="^not an object name$"):
        store.path(bad)


def test_a_case_folder_that_leads_out_of_the_store_is_refused(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "00112233445566778899aabbccddeeff-file.gpg").write_bytes(b"not ours")
    (store.root / CASE).symlink_to(outside)
    with pytest.raises(StoreError, match="^object path escapes the store$"):
        store.read(f"{CASE}/00112233445566778899aabbccddeeff-file.gpg")


def test_object_names_skip_the_temp_folder_and_stray_files(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    name = store.write_bytes(b"x", case_public_id=CASE, role="file")
    (store.root / ".hidden").mkdir()
    (store.root / ".hidden" / "y.gpg").write_bytes(b"y")
    (store.root / "stray.txt").write_bytes(b"z")
    store.new_object()
    assert list(store.object_names()) == [name]


def test_alive_tells_running_from_gone_processes() -> None:
    child = subprocess.Popen(["sleep", "60"])
    try:
        assert _alive(child.pid) is True
        assert child.poll() is None  # asking sends no signal that could end it
    finally:
        child.kill()
        child.wait()
    assert _alive(child.pid) is False
    assert _alive(2**22 + 12345) is False  # above Linux's pid_max


def test_sweep_counts_and_removes_exactly_the_leftovers(tmp_path: Path) -> None:
    store = Store(tmp_path / "store")
    keep = store.write_bytes(b"k", case_public_id=CASE, role="file")
    orphan = store.write_bytes(b"o", case_public_id=CASE, role="file")
    young = store.write_bytes(b"y", case_public_id=CASE, role="file")
    old = time.time() - 7200
    os.utime(store.root / keep, (old, old))
    just_old = time.time() - 3600.5  # the default age limit is one hour
    os.utime(store.root / orphan, (just_old, just_old))
    almost = time.time() - 3590
    os.utime(store.root / young, (almost, almost))
    live = store.new_object()
    dead = store.tmp / "4194303"  # pid_max on Linux is at most 4194304: never running
    (dead / "sub").mkdir(parents=True)
    (dead / "a.part").write_bytes(b"a")
    (dead / "sub" / "b.part").write_bytes(b"b")
    named = store.tmp / "not-a-pid"
    named.mkdir()
    (named / "c.part").write_bytes(b"c")
    # More dead processes' folders, so some come after the live one in directory order.
    for pid in range(4194200, 4194220):
        (store.tmp / str(pid)).mkdir()
        (store.tmp / str(pid) / "d.part").write_bytes(b"d")
    stray = store.tmp / "stray.part"
    stray.write_bytes(b"s")
    # 2 + 20 files of dead processes, 1 in a folder that is no process, 1 stray file, 1 orphan.
    assert store.sweep({keep}) == 25
    assert list(store.tmp.iterdir()) == [live.path.parent]
    assert not dead.exists() and not named.exists() and not stray.exists()
    assert not (store.root / orphan).exists()
    assert (store.root / keep).exists() and (store.root / young).exists() and live.path.exists()
    assert store.sweep({keep}) == 0
    assert store.sweep({keep}, older_than=-1) == 1  # now the young one is judged too
    assert (store.root / keep).exists() and not (store.root / young).exists()
    store.discard(live)
