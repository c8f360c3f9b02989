"""Backup benchmark: ``cpcp-admin backup`` and ``restore`` beside plain tar and gpg.

    .venv/bin/python bench/backup.py [--tips 200] [--files 64] [--file-mib 4] [--rounds 3]

Sets up a throwaway deployment (SQLite, the throwaway test keys; the oversight key stands in
for the backup key), stores TIPS tips through the core, FILES of them with one file of FILE_MIB
MiB of random bytes, then times, interleaved, ROUNDS times each:
  1. backup: cpcp.backup.make_backup, against the strongest fair reference, a raw
     ``tar -cf - DATA | gpg --encrypt --compress-algo none`` of the whole data folder (no
     snapshot, no manifest, no selection);
  2. restore: cpcp.restore.restore of the decrypted archive into a fresh, initialised deployment,
     against ``tar -xf -`` of the same archive into an empty folder;
and once the decryption an admin runs first (``gpg --decrypt``). Prints medians.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from cpcp.admin import init_deployment
from cpcp.backup import make_backup
from cpcp.codenames import generate_codename
from cpcp.restore import restore
from cpcp.services import build_core
from cpcp.settings import Settings, load_settings
from tests.conftest import FPR, TEST_KEYS, stop_gpg_agents, write_deployment

BACKUP_KEY = f'\n[backup]\nfingerprint = "{FPR["oversight"]}"\nkey_file = "oversight.asc"\n'


def deployment(root: Path) -> Settings:
    config = write_deployment(root, f"sqlite+aiosqlite:///{root / 'data' / 'cpcp.sqlite'}", extra=BACKUP_KEY)
    settings = load_settings(config, env={"CPCP_MAX_UPLOAD_BYTES": str(500 * 2**20)})
    init_deployment(settings)
    return settings


async def seed(settings: Settings, tips: int, files: int, file_mib: int) -> None:
    core = build_core(settings)
    try:
        unit = await core.cases.unit_by_slug("ps-sadar-bazar")
        for i in range(tips):
            login = await core.sources.create(generate_codename())
            async with core.intake.draft(unit) as draft:
                await draft.add_message({"text": f"bench tip {i}"})
                if i < files:
                    await draft.open_file("video.mp4", "video/mp4")
                    for _ in range(file_mib):
                        await draft.write_file(os.urandom(1024 * 1024))
                    await draft.close_file()
                await draft.commit(source_id=login.source_id, unit=unit)
    finally:
        await core.close()


def raw_backup(settings: Settings, home: Path, out: Path) -> None:
    subprocess.run(
        f"tar -cf - -C {settings.data_dir} . | gpg --homedir {home} --batch --quiet --trust-model always "
        f"--compress-algo none --encrypt -r {FPR['oversight']} --output {out}",
        shell=True, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tips", type=int, default=200)
    parser.add_argument("--files", type=int, default=64)
    parser.add_argument("--file-mib", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="cpcp-bb-", dir="/var/tmp"))
    try:
        settings = deployment(tmp / "live")
        t0 = time.monotonic()
        asyncio.run(seed(settings, args.tips, args.files, args.file_mib))
        print(f"seeded {args.tips} tips, {args.files} x {args.file_mib} MiB files in {time.monotonic() - t0:.1f}s")
        home = tmp / "admin-gnupg"
        home.mkdir(mode=0o700)
        for who in ("oversight",):
            subprocess.run(["gpg", "--homedir", str(home), "--batch", "--import", str(TEST_KEYS / f"{who}.secret.asc")],
                           check=True, capture_output=True)
        ours: list[float] = []
        ref: list[float] = []
        for r in range(args.rounds):
            out = tmp / f"ours-{r}.gpg"
            t = time.monotonic()
            report = asyncio.run(make_backup(settings, out))
            ours.append(time.monotonic() - t)
            t = time.monotonic()
            raw_backup(settings, home, tmp / f"raw-{r}.gpg")
            ref.append(time.monotonic() - t)
        size = report.size / 2**20
        raw_size = (tmp / "raw-0.gpg").stat().st_size / 2**20
        print(f"backup:  cpcp-admin backup {statistics.median(ours):.2f}s ({size:.0f} MiB, "
              f"{report.objects} objects, {report.rows} rows); raw tar|gpg {statistics.median(ref):.2f}s "
              f"({raw_size:.0f} MiB)  [median of {args.rounds}]")
        t = time.monotonic()
        archive = subprocess.run(["gpg", "--homedir", str(home), "--batch", "--quiet", "--decrypt",
                                  str(tmp / "ours-0.gpg")], check=True, capture_output=True).stdout
        print(f"decrypt: gpg --decrypt {time.monotonic() - t:.2f}s")
        ours, ref = [], []
        for r in range(args.rounds):
            target = deployment(tmp / f"new-{r}")
            t = time.monotonic()
            asyncio.run(restore(target, io.BytesIO(archive)))
            ours.append(time.monotonic() - t)
            folder = tmp / f"untar-{r}"
            folder.mkdir()
            t = time.monotonic()
            subprocess.run(["tar", "-xf", "-", "-C", str(folder)], input=archive, check=True)
            ref.append(time.monotonic() - t)
            shutil.rmtree(tmp / f"new-{r}" / "data" / "store", ignore_errors=True)
            shutil.rmtree(folder, ignore_errors=True)
        print(f"restore: cpcp-admin restore {statistics.median(ours):.2f}s; tar -x {statistics.median(ref):.2f}s"
              f"  [median of {args.rounds}]")
    finally:
        stop_gpg_agents(tmp)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
