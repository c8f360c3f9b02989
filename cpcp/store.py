"""The encrypted store: ciphertext objects on disk, written all or nothing.

An object is first a temp file in ``.tmp/`` (ciphertext only: gpg writes into it), then renamed
into its case folder after fsync. A crash leaves at most a temp file or an object no row points
to; ``sweep`` removes both at start-up, so no half-stored tip survives.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from .errors import StoreError

_CASE_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
_NAME_RE = re.compile(r"^(?P<case>[0-9a-f-]{36})/(?P<obj>[0-9a-f]{32})-(?P<role>[a-z]+)\.gpg$")


@dataclass
class PendingObject:
    """A temp file being written; ``fd`` is open for writing."""

    fd: int
    path: Path

    def size(self) -> int:
        return os.fstat(self.fd).st_size


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_mode(path: Path, mode: int) -> None:
    """``path`` has ``mode``: set it if it has not (only its owner can; a folder the other app
    made with the right mode is left as it is)."""
    if path.stat().st_mode & 0o7777 != mode:
        try:
            os.chmod(path, mode)
        except PermissionError as exc:
            raise StoreError(f"{path} has mode {path.stat().st_mode & 0o7777:o}, not {mode:o}, "
                             "and is not ours to change") from exc


class Store:
    """``shared``: two users of one group write here (the source app its tips, the gateway
    replies and disclosures; the retention run deletes both): the store's own folders 2770
    (setgid, made so by ``cpcp-admin init``), case folders 0770 and objects 0640 (the other app
    reads, never changes them). Otherwise 0700/0600, one user. Case folders go without the
    setgid bit: the apps' sandbox forbids setting it (RestrictSUIDSGID=), and both apps' own
    group is the store's anyway."""

    def __init__(self, root: Path, *, shared: bool = False) -> None:
        self.root = root.resolve()
        self.tmp = self.root / ".tmp"
        self._dir_mode = 0o2770 if shared else 0o700
        self._case_dir_mode = 0o770 if shared else 0o700
        self._file_mode = 0o640 if shared else 0o600
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        ensure_mode(self.root, self._dir_mode)
        self.tmp.mkdir(mode=0o700, exist_ok=True)
        ensure_mode(self.tmp, self._dir_mode)

    def _own_tmp(self) -> Path:
        # One temp folder per process: at start-up, folders of dead processes are leftovers of
        # a crash and can go at once, while a live process's uploads are left alone. 0700: a
        # half-written object is nobody else's business.
        path = self.tmp / str(os.getpid())
        path.mkdir(mode=0o700, exist_ok=True)
        return path

    def new_object(self) -> PendingObject:
        path = self._own_tmp() / f"{secrets.token_hex(16)}.part"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        return PendingObject(fd=fd, path=path)

    def discard(self, pending: PendingObject) -> None:
        self._close(pending)
        pending.path.unlink(missing_ok=True)

    @staticmethod
    def _close(pending: PendingObject) -> None:
        # Mark closed so a later discard cannot close a reused descriptor number.
        if pending.fd >= 0:
            fd, pending.fd = pending.fd, -1
            os.close(fd)

    def commit(self, pending: PendingObject, *, case_public_id: str, role: str) -> str:
        """Make the temp file durable and move it into place; return its object name."""
        if not _CASE_RE.match(case_public_id) or not role.isalpha():
            raise StoreError("bad case id or role")
        os.fchmod(pending.fd, self._file_mode)
        os.fsync(pending.fd)
        self._close(pending)
        case_dir = self.root / case_public_id
        try:
            case_dir.mkdir(mode=0o700)
            os.chmod(case_dir, self._case_dir_mode)  # mkdir's mode passes through the umask
        except FileExistsError:
            pass
        name = f"{case_public_id}/{secrets.token_hex(16)}-{role}.gpg"
        os.rename(pending.path, self.root / name)
        _fsync_dir(case_dir)
        _fsync_dir(self.root)
        return name

    def path(self, object_name: str) -> Path:
        """The file of an object; refuses any name that is not ours or escapes the store."""
        if not _NAME_RE.match(object_name):
            raise StoreError("not an object name")
        path = (self.root / object_name).resolve()
        if path.parent.parent != self.root:
            raise StoreError("object path escapes the store")
        return path

    def read(self, object_name: str) -> bytes:
        return self.path(object_name).read_bytes()

    def size(self, object_name: str) -> int:
        return self.path(object_name).stat().st_size

    def delete(self, object_name: str) -> None:
        self.path(object_name).unlink(missing_ok=True)

    def remove_empty_case_folder(self, case_public_id: str) -> None:
        """A deleted case's folder, once its objects are gone: its name is the case's id."""
        if not _CASE_RE.match(case_public_id):
            raise StoreError("bad case id")
        try:
            (self.root / case_public_id).rmdir()
        except OSError:
            return  # gone already, or not empty: an object no row refers to, for the sweep
        _fsync_dir(self.root)

    def write_bytes(self, data: bytes, *, case_public_id: str, role: str) -> str:
        """Store a small ciphertext already in memory (e.g. a reply)."""
        pending = self.new_object()
        try:
            os.write(pending.fd, data)
        except BaseException:
            self.discard(pending)
            raise
        return self.commit(pending, case_public_id=case_public_id, role=role)

    def object_names(self) -> Iterable[str]:
        for case_dir in self.root.iterdir():
            if case_dir.name.startswith(".") or not case_dir.is_dir():
                continue
            for obj in case_dir.iterdir():
                yield f"{case_dir.name}/{obj.name}"

    def sweep(self, referenced: set[str], *, older_than: float = 3600.0) -> int:
        """Remove what crashed uploads left and objects no row refers to; return the count.

        Temp folders of processes that no longer run go at once. Unreferenced objects go only
        when older than ``older_than`` seconds: another process (the gateway, a second worker)
        may be between moving an object into place and committing its row.
        """
        cutoff = time.time() - older_than
        removed = 0
        for folder in list(self.tmp.iterdir()):
            if folder.name.isdigit() and _alive(int(folder.name)):
                continue
            removed += sum(1 for p in folder.rglob("*") if p.is_file()) if folder.is_dir() else 1
            if folder.is_dir():
                shutil.rmtree(folder, ignore_errors=True)
            else:
                folder.unlink(missing_ok=True)
        for name in list(self.object_names()):
            path = self.root / name
            if name not in referenced and path.stat().st_mtime < cutoff:
                path.unlink(missing_ok=True)
                removed += 1
        return removed
