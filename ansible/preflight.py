"""What server.yml needs from the admin's machine, checked before the play changes anything.

Run by tasks/preflight.yml on the controller (stdlib and the gpg command line only: the
admin's machine has no CPCP virtualenv). Prints one JSON object: ``officers`` (how many the
deployment file lists) and ``problems``, a list of sentences each naming what is missing or
wrong. The key files are read with ``gpg --import-options show-only`` in a throwaway GnuPG
home: nothing is imported anywhere.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import tempfile
import tomllib
from pathlib import Path


def fingerprints(gpg: str, path: Path) -> set[str]:
    with tempfile.TemporaryDirectory() as home:
        done = subprocess.run([gpg, "--homedir", home, "--batch", "--with-colons",
                               "--import-options", "show-only", "--import", str(path)],
                              capture_output=True, text=True, timeout=60, check=False)
    return {line.split(":")[9] for line in done.stdout.splitlines() if line.startswith("fpr:")}


def check_key(gpg: str | None, keys: Path, who: str, key_file: str, fpr: str,
              problems: list[str]) -> None:
    path = keys / key_file
    if not path.is_file():
        problems.append(f"{who}: key file {path} is missing")
    elif gpg is None:
        problems.append(f"{who}: gpg is not installed here, so {path} cannot be checked")
    elif fpr.replace(" ", "").upper() not in fingerprints(gpg, path):
        problems.append(f"{who}: {path} does not hold the key {fpr}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--files", type=Path, required=True, help="ansible/files")
    parser.add_argument("--oversight", nargs=2, metavar=("KEY_FILE", "FPR"), required=True)
    parser.add_argument("--backup", nargs=2, metavar=("KEY_FILE", "FPR"))
    args = parser.parse_args()
    gpg = shutil.which("gpg")
    keys = args.files / "keys"
    problems: list[str] = []
    check_key(gpg, keys, "oversight key", *args.oversight, problems)
    if args.backup:
        check_key(gpg, keys, "backup key", *args.backup, problems)
    officers: list[dict[str, object]] = []
    deployment = args.files / "deployment.toml"
    try:
        raw = tomllib.loads(deployment.read_text(encoding="utf-8"))
        officers = [o for o in raw.get("officers", []) if isinstance(o, dict)]
    except FileNotFoundError:
        problems.append(f"deployment file {deployment} is missing")
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        problems.append(f"deployment file {deployment} cannot be read: {exc}")
    else:
        if not officers:
            problems.append(f"deployment file {deployment} lists no officer")
    for i, officer in enumerate(officers):
        who = f"officer {officer.get('handle', f'#{i + 1}')}"
        key_file, fpr = officer.get("key_file"), officer.get("fingerprint")
        if not isinstance(key_file, str) or not isinstance(fpr, str):
            problems.append(f"{who}: the deployment file gives no key_file or fingerprint")
        else:
            check_key(gpg, keys, who, key_file, fpr, problems)
    print(json.dumps({"officers": len(officers), "problems": problems}))


if __name__ == "__main__":
    main()
