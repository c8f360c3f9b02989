"""``cpcp-admin``: initialise a deployment, load its units and keys, check it, make a demo."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from pathlib import Path

from .deployment import apply_deployment, load_deployment
from .errors import CPCPError
from .migrate import upgrade
from .server_secrets import create_server_secrets
from .services import build_core, check_keys
from .settings import Settings, load_settings


def init_deployment(settings: Settings) -> None:
    """Create the data folder (0700), server secrets (0600), keyrings, store and schema."""
    settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(settings.data_dir, 0o700)
    if not settings.secrets_file.exists():
        create_server_secrets(settings.secrets_file)
    for sub in (settings.store_dir, settings.gnupg_home, settings.log_dir):
        sub.mkdir(mode=0o700, parents=True, exist_ok=True)
    upgrade(settings.database_url)
    if settings.deployment_file is not None:
        asyncio.run(deploy(settings))


async def deploy(settings: Settings) -> None:
    if settings.deployment_file is None:
        raise CPCPError("deployment_file is not set")
    deployment = load_deployment(settings.deployment_file)
    core = build_core(settings)
    try:
        await apply_deployment(
            deployment, keys_dir=settings.keys_dir, oversight_key_file=settings.oversight_key_file,
            oversight_fingerprint=settings.oversight_fingerprint, keyring=core.officer_keys,
            sessions=core.sessions,
        )
        await check_keys(core)
    finally:
        await core.close()


async def _check(settings: Settings) -> None:
    core = build_core(settings)
    try:
        await check_keys(core)
    finally:
        await core.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="cpcp-admin", description=__doc__)
    parser.add_argument("--config", type=Path, help="cpcp.toml (default: $CPCP_CONFIG)")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("init", help="create data folder, secrets, database; load the deployment")
    sub.add_parser("deploy", help="(re)load units, officers and pinned keys from the deployment file")
    sub.add_parser("check", help="check that every unit's keys are usable")
    demo = sub.add_parser("demo", help="make a complete demo deployment with throwaway keys")
    demo.add_argument("folder", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from .demo import make_demo

            config = make_demo(args.folder)
            print(f"demo deployment ready: {config}")
            return 0
        settings = load_settings(args.config)
        if args.command == "init":
            init_deployment(settings)
            print(f"initialised {settings.data_dir}")
        elif args.command == "deploy":
            asyncio.run(deploy(settings))
            print("deployment loaded; all keys usable")
        elif args.command == "check":
            asyncio.run(_check(settings))
            print("ok: every active unit's keys and the oversight key are usable")
    except CPCPError as exc:
        print(f"cpcp-admin: {exc}", file=sys.stderr)
        return 2
    return 0



if __name__ == "__main__":
    sys.exit(main())
