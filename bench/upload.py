"""Upload benchmark: one SIZE MiB file through the real source app vs. raw gpg on the same file.

The reference (gpg --encrypt of the same file to a file + fsync, same recipients and flags as
the app) is measured interleaved with the uploads (A,B,A,B...), so load from other processes
hits both alike. Then, unless --mem-gib 0, one upload of a sparse MEM GiB file measures the
server's RSS growth (sampled VmRSS peak minus before).

Usage: .venv/bin/python bench/upload.py [--size-mib 256] [--runs 5] [--mem-gib 2]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import httpx

MIB = 1024 * 1024
ROOT = Path(__file__).resolve().parent.parent


class FormParser(HTMLParser):
    """The first csrf_token value and the first non-empty option of select#unit."""

    def __init__(self) -> None:
        super().__init__()
        self.csrf: str | None = None
        self.unit: str | None = None
        self._in_unit = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "input" and a.get("name") == "csrf_token" and self.csrf is None:
            self.csrf = a.get("value")
        elif tag == "select":
            self._in_unit = a.get("id") == "unit"
        elif tag == "option" and self._in_unit and a.get("value") and self.unit is None:
            self.unit = a.get("value")


def parse(html: str) -> FormParser:
    (p := FormParser()).feed(html)
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_payload(path: Path, size_mib: int) -> str:
    h = hashlib.sha256()
    with path.open("wb") as f:
        for _ in range(size_mib):
            chunk = os.urandom(MIB)
            h.update(chunk)
            f.write(chunk)
    return h.hexdigest()


def multipart(fields: list[tuple[str, str]], file: Path, boundary: str) -> tuple[bytes, bytes, int]:
    """The head (text parts + file part header) and tail of the body, and the total length."""
    b = boundary.encode()
    head = b"".join(
        b"--" + b + b'\r\nContent-Disposition: form-data; name="' + k.encode() + b'"\r\n\r\n'
        + v.encode() + b"\r\n" for k, v in fields
    ) + (b"--" + b + b'\r\nContent-Disposition: form-data; name="files"; filename="bench.bin"\r\n'
         b"Content-Type: application/octet-stream\r\n\r\n")
    tail = b"\r\n--" + b + b"--\r\n"
    return head, tail, len(head) + file.stat().st_size + len(tail)


def body_stream(head: bytes, file: Path, tail: bytes, started: list[float]) -> Iterator[bytes]:
    started.append(time.perf_counter())
    yield head
    with file.open("rb") as f:
        while chunk := f.read(MIB):
            yield chunk
    yield tail


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


class Sampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.pid, self.peak, self.stop = pid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, rss_kib(self.pid))
            self.stop.wait(0.05)


def upload_once(base: str, payload: Path, pid: int) -> tuple[str, float, int, int]:
    """One new source, one tip with the payload: (unit, seconds, RSS before, RSS peak in KiB)."""
    with httpx.Client(base_url=base, timeout=None, follow_redirects=False) as c:
        csrf = parse(c.get("/generate").raise_for_status().text).csrf
        r = c.post("/create", data={"csrf_token": csrf or ""})
        assert r.status_code == 303 and r.headers["location"].endswith("/submit"), r
        form = parse(c.get("/submit").raise_for_status().text)
        assert form.csrf and form.unit, "no csrf_token or unit on /submit"
        fields = [("csrf_token", form.csrf), ("unit", form.unit), ("kind", "information"),
                  ("category", "other"), ("text", "bench")]
        boundary = "----cpcpbench" + secrets.token_hex(8)
        head, tail, length = multipart(fields, payload, boundary)
        headers = {"Content-Type": f"multipart/form-data; boundary={boundary}",
                   "Content-Length": str(length)}
        before = rss_kib(pid)
        sampler = Sampler(pid)
        sampler.start()
        started: list[float] = []
        r = c.post("/submit", content=body_stream(head, payload, tail, started), headers=headers)
        elapsed = time.perf_counter() - started[0]
        sampler.stop.set()
        sampler.join()
        assert r.status_code == 303 and r.headers["location"].endswith("/case"), (r, r.text[:500])
        return form.unit, elapsed, before, max(sampler.peak, before)


def timed(cmd: list[str], stdin: int | None = None) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdin=stdin, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def recipients(demo: Path, unit_slug: str) -> list[str]:
    cfg = tomllib.loads((demo / "cpcp.toml").read_text())
    dep = tomllib.loads((demo / "deployment.toml").read_text())
    officers = {o["handle"]: o["fingerprint"] for o in dep["officers"]}
    unit = next(u for u in dep["units"] if u["slug"] == unit_slug)
    return sorted({cfg["oversight_fingerprint"], *(officers[h] for h in unit["officers"])})


def raw_gpg(home: Path, rcpts: list[str], payload: Path, compress: bool = False,
            piped_to: Path | None = None, stored_to: Path | None = None) -> float:
    """gpg FILE -> /dev/null; gpg FILE -> a file, fsynced (what storing ciphertext durably
    costs any server); or, as the app does it, `cat FILE |` gpg -> a file, fsynced."""
    cmd = ["gpg", "--homedir", str(home), "--batch", "--quiet", "--yes", "--trust-model", "always"]
    cmd += [] if compress else ["--compress-algo", "none"]
    cmd += ["--encrypt", *[x for r in rcpts for x in ("-r", r)]]
    if stored_to is not None:
        t = time.perf_counter()
        timed([*cmd, "--output", str(stored_to), str(payload)])
        with stored_to.open("rb") as f:
            os.fsync(f.fileno())
        return time.perf_counter() - t
    if piped_to is None:
        return timed([*cmd, "--output", "/dev/null", str(payload)])
    t = time.perf_counter()
    with subprocess.Popen(["cat", str(payload)], stdout=subprocess.PIPE) as cat:
        assert cat.stdout is not None
        timed([*cmd, "--output", str(piped_to)], stdin=cat.stdout.fileno())
    with piped_to.open("rb") as f:
        os.fsync(f.fileno())
    return time.perf_counter() - t


def verify(demo: Path, digest: str) -> bool:
    objs = [p for p in (demo / "data" / "store").rglob("*.gpg") if ".tmp" not in p.parts]
    biggest = max(objs, key=lambda p: p.stat().st_size)
    h = hashlib.sha256()
    cmd = ["gpg", "--homedir", str(demo / "workstation" / "gnupg"), "--batch", "--decrypt", str(biggest)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL) as p:
        assert p.stdout is not None
        while chunk := p.stdout.read(MIB):
            h.update(chunk)
    return p.returncode == 0 and h.hexdigest() == digest


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--size-mib", type=int, default=256)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--mem-gib", type=int, default=2, help="RSS test upload size; 0: skip")
    args = ap.parse_args()
    size = args.size_mib
    tmp = Path(tempfile.mkdtemp(prefix="cpcp-bench-"))
    demo, payload = tmp / "demo", tmp / "payload.bin"
    server: subprocess.Popen[bytes] | None = None
    try:
        subprocess.run([sys.executable, "-m", "cpcp.admin", "demo", str(demo)], check=True,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
        digest = make_payload(payload, size)
        port = free_port()
        limit = max(size, args.mem_gib * 1024) + 64
        env = {**os.environ, "CPCP_SOURCE__PORT": str(port),
               "CPCP_MAX_UPLOAD_BYTES": str(limit * MIB)}
        log = (tmp / "server.log").open("wb")
        server = subprocess.Popen(
            [sys.executable, "-m", "source_app.serve", "--config", str(demo / "cpcp.toml")],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        for _ in range(300):  # up to ~30 s
            assert server.poll() is None, (tmp / "server.log").read_text()
            try:
                httpx.get(base + "/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.1)
        else:
            raise SystemExit((tmp / "server.log").read_text() + "\nthe server did not answer")
        cat = timed(["cat", str(payload)])
        home = tmp / "gnupg-copy"
        uploads: list[float] = []
        refs: list[float] = []
        for i in range(args.runs):  # A (upload), B (reference), A, B ...
            unit, secs, _, _ = upload_once(base, payload, server.pid)
            uploads.append(secs)
            if i == 0:
                shutil.copytree(demo / "data" / "gnupg" / "officers", home,
                                ignore=shutil.ignore_patterns("S.*", "*.lock", ".#*"))
                rcpts = recipients(demo, unit)
            refs.append(raw_gpg(home, rcpts, payload, stored_to=tmp / "stored.gpg"))
            (tmp / "stored.gpg").unlink(missing_ok=True)
            print(f"run {i + 1}: upload {size / secs:6.0f} MiB/s   gpg>file+fsync {size / refs[-1]:6.0f} MiB/s"
                  f"   ratio {refs[-1] / secs:.2f}x", flush=True)
        ok = verify(demo, digest)
        mem: tuple[int, int, int] | None = None
        if args.mem_gib:
            payload.unlink()
            big = tmp / "big.bin"
            with big.open("wb") as f:  # sparse: no disk used, gpg still encrypts every byte
                f.truncate(args.mem_gib * 1024 * MIB)
            _, _, before, peak = upload_once(base, big, server.pid)
            big.unlink()
            mem = (before, peak, rss_kib(server.pid, "VmHWM"))
        server.send_signal(signal.SIGTERM)
        server.wait(30)

        ratios = [r / u for r, u in zip(refs, uploads, strict=True)]
        print(f"\ncat {size} MiB > /dev/null: {cat:.3f} s  (page cache check)")
        print(f"upload MiB/s: {', '.join(f'{size / u:.0f}' for u in uploads)}")
        print(f"gpg>file+fsync MiB/s: {', '.join(f'{size / r:.0f}' for r in refs)}")
        print(f"ratio upload/reference: median {statistics.median(ratios):.2f}x, best {max(ratios):.2f}x"
              f" (target >= 0.90x)")
        if mem is not None:
            before, peak, hwm = mem
            print(f"{args.mem_gib} GiB upload: server VmRSS before {before / 1024:.1f} MiB, sampled peak"
                  f" {peak / 1024:.1f} MiB, growth {(peak - before) / 1024:.1f} MiB (target < 16);"
                  f" VmHWM {hwm / 1024:.1f} MiB")
        print(f"stored ciphertext decrypts to the original (SHA-256): {'OK' if ok else 'FAIL'}")
        return 0 if ok else 1
    finally:
        if server is not None and server.poll() is None:
            server.send_signal(signal.SIGTERM)
            server.wait(30)
        for home in [tmp / "gnupg-copy", demo / "workstation" / "gnupg",
                     *(demo / "data" / "gnupg").glob("*")]:
            subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"],
                           capture_output=True, check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
