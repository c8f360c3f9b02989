from __future__ import annotations

import math

import pytest

from cpcp.codenames import (
    WORDS_PER_CODENAME,
    derive_keys,
    generate_codename,
    normalize_codename,
    wordlist,
)
from cpcp.errors import UnknownCodename
from cpcp.settings import KdfSettings

LIGHT = KdfSettings(time_cost=1, memory_kib=8192)


def test_wordlist_is_the_checked_eff_list_and_codenames_have_90_bits() -> None:
    words = wordlist()
    assert len(set(words)) == 7776
    assert WORDS_PER_CODENAME >= 7
    assert WORDS_PER_CODENAME * math.log2(len(words)) >= 90


def test_generated_codenames_are_seven_known_words_and_differ() -> None:
    made = {generate_codename() for _ in range(50)}
    assert len(made) == 50
    for codename in made:
        parts = codename.split(" ")
        assert len(parts) == 7 and all(p in wordlist() for p in parts)


@pytest.mark.parametrize(
    "typed",
    [
        "  {0}  ",
        "{0}".upper(),
        "{0}",
    ],
)
def test_typing_is_forgiven(typed: str) -> None:
    codename = generate_codename()
    assert normalize_codename(typed.format(codename)) == codename


def test_odd_spaces_case_and_compatibility_forms_are_forgiven() -> None:
    codename = generate_codename()
    words = codename.split()
    messy = "\u00a0".join(w.title() for w in words[:3]) + "\t\n " + "\u3000".join(words[3:])
    assert normalize_codename(messy) == codename
    # Full-width letters (some phone keyboards) normalise by NFKC.
    fullwidth = "".join(chr(ord(c) + 0xFEE0) if "a" <= c <= "z" else c for c in codename)
    assert normalize_codename(fullwidth) == codename


@pytest.mark.parametrize("bad", ["", "abacus", "abacus " * 6, "abacus " * 8, "notaword " * 7, "x" * 300])
def test_what_cannot_be_a_codename_is_refused_before_hashing(bad: str) -> None:
    with pytest.raises(UnknownCodename):
        normalize_codename(bad)


def test_derived_keys_depend_on_codename_and_server_salt() -> None:
    codename = generate_codename()
    salt = b"s" * 32
    a = derive_keys(codename, salt=salt, kdf=LIGHT)
    assert a == derive_keys(codename, salt=salt, kdf=LIGHT)
    assert a.lookup_id != a.reply_passphrase
    assert a.lookup_id != derive_keys(codename, salt=b"t" * 32, kdf=LIGHT).lookup_id
    assert a.lookup_id != derive_keys(generate_codename(), salt=salt, kdf=LIGHT).lookup_id
    assert codename not in a.lookup_id and len(a.lookup_id) == 64
