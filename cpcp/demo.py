"""A complete demo deployment: Shahjahanpur's units, throwaway officer keys, SQLite.

The officer private keys are made in ``<folder>/workstation/gnupg``, which stands for an
officer's workstation: the server's data folder never holds them. Demo only.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from .pgp import Keyring
from .settings import Settings

DEMO_UNITS = [
    ("ps-sadar-bazar", "police_station", "Sadar Bazar Police Station", "थाना सदर बाजार", "station"),
    ("ps-kotwali", "police_station", "Kotwali Police Station", "थाना कोतवाली", "station"),
    ("ps-ramchandra-mission", "police_station", "Ramchandra Mission Police Station",
     "थाना रामचंद्र मिशन", "station"),
    ("ps-tilhar", "police_station", "Tilhar Police Station", "थाना तिलहर", "station"),
    ("ps-jalalabad", "police_station", "Jalalabad Police Station", "थाना जलालाबाद", "station"),
    ("ps-powayan", "police_station", "Powayan Police Station", "थाना पुवायां", "station"),
    ("cell-cyber", "cell", "Cyber Cell", "साइबर सेल", "cell"),
    ("cell-women-safety", "cell", "Women Safety Cell", "महिला सुरक्षा प्रकोष्ठ", "cell"),
    ("cell-anti-narcotics", "cell", "Anti-Narcotics Cell", "एंटी नारकोटिक्स सेल", "cell"),
    ("control-room", "control_room", "District Control Room", "जनपद नियंत्रण कक्ष", "control"),
]

DEMO_OFFICERS = {
    "station": ("demo-station-officer", "Demo station officer"),
    "cell": ("demo-cell-officer", "Demo cell officer"),
    "control": ("demo-control-officer", "Demo control room officer"),
}


def make_demo(folder: Path) -> Path:
    """Write folder/{cpcp.toml,deployment.toml,keys/,workstation/}; init it; return cpcp.toml.

    Idempotent: an existing demo is reused as it is.
    """
    from .admin import init_deployment
    from .settings import load_settings

    folder = folder.resolve()
    config = folder / "cpcp.toml"
    if config.exists():
        init_deployment(load_settings(config))
        return config
    keys = folder / "keys"
    keys.mkdir(parents=True, exist_ok=True)
    workstation = Keyring(folder / "workstation" / "gnupg")
    fprs: dict[str, str] = {}
    for role, (handle, name) in {**DEMO_OFFICERS, "oversight": ("demo-oversight", "Demo SP office")}.items():
        fpr = workstation.generate_key(passphrase=None, uid=f"{name} (CPCP DEMO ONLY) <{handle}@demo.invalid>")
        (keys / f"{handle}.asc").write_text(workstation.export_public_key(fpr))
        fprs[role] = fpr
    lines = []
    for role, (handle, name) in DEMO_OFFICERS.items():
        lines += ["[[officers]]", f'handle = "{handle}"', f'name = "{name}"',
                  f'fingerprint = "{fprs[role]}"', f'key_file = "{handle}.asc"', ""]
    for slug, kind, en, hi, role in DEMO_UNITS:
        lines += ["[[units]]", f'slug = "{slug}"', f'kind = "{kind}"', f'name_en = "{en}"',
                  f'name_hi = "{hi}"', f'officers = ["{DEMO_OFFICERS[role][0]}"]', ""]
    lines += ["# Retention (cpcp/retention.py; cpcp-admin retention deletes what is due).",
              "# Without a [retention] table every case is kept forever.",
              "# [retention]", "# closed_days = 90", "# spam_days = 7", ""]
    (folder / "deployment.toml").write_text("\n".join(lines), encoding="utf-8")
    config.write_text(
        "# CPCP demo deployment: throwaway keys, not for real tips.\n"
        'data_dir = "data"\n'
        'keys_dir = "keys"\n'
        'deployment_file = "deployment.toml"\n'
        'oversight_key_file = "demo-oversight.asc"\n'
        f'oversight_fingerprint = "{fprs["oversight"]}"\n'
        'default_locale = "hi"\n',
        encoding="utf-8",
    )
    (folder / "desk.toml").write_text(
        "# The demo officer's desk (cpcp-desk --config desk.toml). On a real workstation the\n"
        "# gateway is an .onion reached through Tor: see journalist_app/desk/desk.example.toml.\n"
        'gateway_url = "http://127.0.0.1:8081"\n'
        'gnupg_home = "workstation/gnupg"\n'
        'data_dir = "workstation/desk-data"\n'
        'export_dir = "workstation/exports"\n'
        "port = 8090\n",
        encoding="utf-8",
    )
    settings = load_settings(config)
    init_deployment(settings)
    _enrol_demo_officer(settings, folder / DEMO_LOGIN_FILE)
    return config


DEMO_LOGIN_FILE = "DEMO-OFFICER-LOGIN.txt"


def _enrol_demo_officer(settings: Settings, path: Path) -> None:
    """Give the demo station officer a passphrase and TOTP secret, written to a file for the
    demo only (a real officer is enrolled in person with ``cpcp-admin officer-enrol``)."""
    from .officers import provisioning_uri, suggest_passphrase
    from .services import build_core

    handle = DEMO_OFFICERS["station"][0]
    passphrase = suggest_passphrase()

    async def enrol() -> str:
        core = build_core(settings)
        try:
            return await core.officer_auth.enrol(handle, passphrase, admin=True)
        finally:
            await core.close()

    secret = asyncio.run(enrol())
    path.write_text(
        "DEMO ONLY. Log in to the desk (the address scripts/run prints; by default\n"
        "http://127.0.0.1:8090/, the port in desk.toml) as:\n"
        f"  handle:     {handle}\n  passphrase: {passphrase}\n"
        f"  TOTP secret (add it to an authenticator app): {secret}\n"
        f"  otpauth URI: {provisioning_uri(secret, handle)}\n"
        "  a code without a phone: .venv/bin/python -c "
        f"\"import pyotp; print(pyotp.TOTP('{secret}').now())\"\n",
        encoding="utf-8",
    )
    os.chmod(path, 0o600)
