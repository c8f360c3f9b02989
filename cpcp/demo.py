"""A complete demo deployment: Shahjahanpur's units, throwaway officer keys, SQLite.

The officer private keys are made in ``<folder>/workstation/gnupg``, which stands for an
officer's workstation: the server's data folder never holds them. Demo only.
"""

from __future__ import annotations

from pathlib import Path

from .pgp import Keyring

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
    init_deployment(load_settings(config))
    return config
