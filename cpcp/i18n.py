"""gettext catalogues through Babel, compiled in memory from the .po files translators edit.

Loading the .po directly means no compiled .mo can go stale, and a catalogue that fails to
parse stops the app at start-up instead of showing English to a Hindi reader.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path

from babel.messages.mofile import write_mo
from babel.messages.pofile import read_po
from babel.support import Translations

from .errors import ConfigError
from .settings import LOCALES


def load_translations(catalog_dir: Path, domain: str = "messages") -> Mapping[str, Translations]:
    """One Translations per supported locale, from ``<dir>/<locale>/LC_MESSAGES/<domain>.po``."""
    out: dict[str, Translations] = {}
    for locale in LOCALES:
        po_path = catalog_dir / locale / "LC_MESSAGES" / f"{domain}.po"
        try:
            with po_path.open("rb") as fh:
                catalog = read_po(fh, locale=locale, domain=domain, abort_invalid=True)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"translation catalogue {po_path}: {exc}") from exc
        buf = io.BytesIO()
        write_mo(buf, catalog, use_fuzzy=False)
        buf.seek(0)
        out[locale] = Translations(fp=buf, domain=domain)
    return out


def pick_locale(requested: str | None, default: str) -> str:
    """The locale a source chose with the language link, else the deployment's default.

    Accept-Language is ignored: Tor Browser always sends en-US.
    """
    return requested if requested in LOCALES else default
