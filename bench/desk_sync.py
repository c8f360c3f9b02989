"""Desk benchmark: sync and decrypt N small tips at the officer's desk, beside a plain loop of
`gpg --decrypt` over the same ciphertexts.

    .venv/bin/python bench/desk_sync.py [--tips 10000]

Sets up a throwaway deployment (SQLite, the throwaway test keys in keys/test), stores N tips
(each a JSON message encrypted with gpg to the unit's officer and the oversight key; to save
set-up time a few hundred distinct ciphertexts are reused, which costs the decryption the same),
starts the real gateway process on loopback, then times with the desk's own code:
  1. sync: metadata of every case and every ciphertext into the desk cache, over HTTP;
  2. decrypt: every message, as the desk's inbox does (Casebook.summaries, in parallel);
and a plain sequential loop of `gpg --decrypt FILE > /dev/null` over the same cached files.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyotp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpcp.admin import init_deployment
from cpcp.models import Case, Document, DocumentRole, Source, Submission
from cpcp.services import build_core
from cpcp.settings import load_settings
from journalist_app.desk.cache import Cache
from journalist_app.desk.casebook import Casebook
from journalist_app.desk.client import GatewayClient, build_http
from journalist_app.desk.crypto import DeskCrypto
from journalist_app.desk.settings import DeskSettings
from tests.conftest import TEST_KEYS, write_deployment
from tests.test_journey_e2e import free_port

PASSPHRASE = "bench passphrase with enough words in it"
DISTINCT = 300


def officer_home(tmp: Path) -> Path:
    home = tmp / "officer-gnupg"
    home.mkdir(mode=0o700)
    for who in ("officer-a", "oversight"):
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import", str(TEST_KEYS / f"{who}.secret.asc")],
                       check=True, capture_output=True)
    return home


async def seed(config: Path, tips: int) -> str:
    settings = load_settings(config, env={})
    core = build_core(settings)
    try:
        unit = await core.cases.unit_by_slug("ps-sadar-bazar")
        recipients = core.cases.recipients(unit)
        blobs = []
        for i in range(min(DISTINCT, tips)):
            message = {"format": "cpcp-tip/1", "kind": "information", "category": "suspicious_vehicle",
                       "text": f"bench tip {i}: white van near the market, number UP27 AB {i:04d}", "files": []}
            blobs.append(await asyncio.to_thread(core.officer_keys.encrypt_bytes,
                                                 json.dumps(message).encode(), recipients))
        async with core.sessions.begin() as db:
            for i in range(tips):
                source = Source(lookup_id=secrets.token_hex(32), reply_key_fingerprint=secrets.token_hex(20).upper())
                db.add(source)
                await db.flush()
                case = Case(source_id=source.id, unit_id=unit.id)
                db.add(case)
                await db.flush()
                submission = Submission(case_id=case.id)
                db.add(submission)
                await db.flush()
                blob = blobs[i % len(blobs)]
                name = core.store.write_bytes(blob, case_public_id=case.public_id, role="message")
                db.add(Document(submission_id=submission.id, role=DocumentRole.MESSAGE, object_name=name, size=len(blob)))
        return await core.officer_auth.enrol("officer-a", PASSPHRASE)
    finally:
        await core.close()


async def desk_run(desk: DeskSettings, secret: str) -> tuple[float, float, int, list[Path]]:
    client = GatewayClient(http=build_http(desk))
    try:
        token = await client.login("officer-a", PASSPHRASE, pyotp.TOTP(secret).now())
        client = client.with_token(token.token)
        cache = Cache(desk.cache_dir)
        await cache.open()
        started = time.perf_counter()
        report = await cache.sync(client)
        synced = time.perf_counter() - started
        book = Casebook(cache=cache, crypto=DeskCrypto(desk.gnupg_home))
        started = time.perf_counter()
        rows = await book.summaries()
        decrypted = time.perf_counter() - started
        bad = [r for r in rows if getattr(r, "error", None)]
        assert report.cases == len(rows) and not bad, (report, bad[:3])
        files = [cache.document_path(d.id) for c in cache.cases() for s in c.submissions for d in s.documents]
        return synced, decrypted, report.downloaded, files
    finally:
        await client.aclose()


def raw_loop(home: Path, files: list[Path]) -> float:
    started = time.perf_counter()
    for path in files:
        subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--decrypt", str(path)],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tips", type=int, default=10_000)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cpcp-desk-bench-"))
    server = None
    try:
        config = write_deployment(tmp, f"sqlite+aiosqlite:///{tmp / 'data' / 'cpcp.sqlite'}")
        init_deployment(load_settings(config, env={}))
        t = time.perf_counter()
        secret = asyncio.run(seed(config, args.tips))
        print(f"seeded {args.tips} tips in {time.perf_counter() - t:.1f} s")
        port = free_port()
        server = subprocess.Popen([sys.executable, "-m", "journalist_app.gateway.serve", "--config", str(config)],
                                  cwd=ROOT, env={**os.environ, "CPCP_GATEWAY__PORT": str(port)},
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(2.0)
        home = officer_home(tmp)
        desk = DeskSettings(gateway_url=f"http://127.0.0.1:{port}", gnupg_home=home,
                            data_dir=tmp / "desk", export_dir=tmp / "export")
        synced, decrypted, downloaded, files = asyncio.run(desk_run(desk, secret))
        raw = raw_loop(home, files)
        n = args.tips
        print(f"desk sync ({downloaded} ciphertexts over HTTP): {synced:.1f} s = {n / synced:.0f} tips/s")
        print(f"desk decrypt of every message (inbox): {decrypted:.1f} s = {n / decrypted:.0f} tips/s")
        print(f"desk sync + decrypt: {synced + decrypted:.1f} s")
        print(f"plain loop of gpg --decrypt over the same {len(files)} files: {raw:.1f} s = {n / raw:.0f} tips/s")
        print(f"ratio desk decrypt / plain gpg loop: {decrypted / raw:.2f}x time; "
              f"desk sync+decrypt / plain gpg loop: {(synced + decrypted) / raw:.2f}x time")
        return 0
    finally:
        if server is not None:
            server.terminate()
            server.wait(30)
        subprocess.run(["gpgconf", "--homedir", str(tmp / "officer-gnupg"), "--kill", "all"], check=False)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
