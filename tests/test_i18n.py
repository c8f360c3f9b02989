"""Both catalogues are complete for every message the pages and views use."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from babel.messages.extract import extract_from_dir
from babel.messages.pofile import read_po

from cpcp.i18n import load_translations

ROOT = Path(__file__).resolve().parent.parent
APP = ROOT / "source_app"
PLACEHOLDER = re.compile(r"%\(\w+\)s")


def used_messages() -> set[str]:
    method_map = [("**.py", "python"), ("templates/**.html", "jinja2")]
    found = set()
    for _file, _line, message, _comments, _context in extract_from_dir(
        str(APP), method_map=method_map, keywords={"_": None, "gettext": None, "ngettext": (1, 2)}
    ):
        found.add(message if isinstance(message, str) else message[0])
    return found


@pytest.mark.parametrize("locale", ["hi", "en"])
def test_catalogue_translates_every_used_message(locale: str) -> None:
    with (APP / "translations" / locale / "LC_MESSAGES" / "messages.po").open("rb") as fh:
        catalog = read_po(fh, locale=locale)
    used = used_messages()
    assert len(used) > 80
    missing = sorted(m for m in used if m not in catalog or not catalog[m].string)
    assert missing == [], f"{locale}: untranslated: {missing[:5]}"
    fuzzy = [m.id for m in catalog if m.id and m.fuzzy]
    assert fuzzy == []
    for message in catalog:
        if message.id and isinstance(message.id, str):
            assert sorted(PLACEHOLDER.findall(message.id)) == sorted(PLACEHOLDER.findall(str(message.string))), message.id


def test_hindi_is_really_hindi() -> None:
    catalogs = load_translations(APP / "translations")
    text = catalogs["hi"].ugettext("Citizen Police Cooperation Portal")
    assert text == "नागरिक पुलिस सहयोग पोर्टल"
    translated = [catalogs["hi"].ugettext(m) for m in used_messages()]
    devanagari = [t for t in translated if re.search("[\u0900-\u097f]", t)]
    assert len(devanagari) >= 0.95 * len(translated)


def test_a_missing_catalogue_stops_start_up(tmp_path: Path) -> None:
    from cpcp.errors import ConfigError

    (tmp_path / "en" / "LC_MESSAGES").mkdir(parents=True)
    (tmp_path / "en" / "LC_MESSAGES" / "messages.po").write_text('msgid "a"\nmsgstr "b"\n')
    with pytest.raises(ConfigError, match="hi"):
        load_translations(tmp_path)
