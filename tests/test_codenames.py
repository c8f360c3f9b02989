from __future__ import annotations

import math

import pytest

from cpcp.codenames import (
    DIGITS_PER_CODENAME,
    WORDS_PER_CODENAME,
    Codename,
    derive_keys,
    digit_codename_bits,
    generate_codename,
    generate_digit_codename,
    normalize_codename,
    to_devanagari_digits,
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


def test_digit_codenames_are_16_digits_in_groups_of_4_with_at_least_53_bits() -> None:
    assert DIGITS_PER_CODENAME == 16 and 53 <= digit_codename_bits() < 53.2
    made = {generate_digit_codename() for _ in range(50)}
    assert len(made) == 50
    for codename in made:
        groups = codename.split(" ")
        assert [len(g) for g in groups] == [4, 4, 4, 4] and all(g.isascii() and g.isdigit() for g in groups)
        assert normalize_codename(codename) == codename


DIGITS = "5315 0042 1234 5678"


@pytest.mark.parametrize(
    "typed",
    [
        DIGITS,
        "5315-0042-1234-5678",
        "5315004212345678",
        "  5315 0042\n1234\t5678 ",
        "5315.0042/1234_5678",
        "5315–0042—1234‑5678",  # en dash, em dash, non-breaking hyphen (phone keyboards)
        "५३१५ ००४२ १२३४ ५६७८",  # Devanagari
        "५३१५-0042 १२३४5678",  # mixed scripts
        "٥٣١٥ ٠٠٤٢ ١٢٣٤ ٥٦٧٨",  # Arabic-Indic
        "５３１５ ００４２ １２３４ ５６７８",  # full-width
    ],
)
def test_digit_typing_is_forgiven(typed: str) -> None:
    assert normalize_codename(typed) == DIGITS


@pytest.mark.parametrize("bad", ["5315 0042 1234 567", "5315 0042 1234 56789", "5315 0042 1234 567½",
                                 "5315 0042 1234 567a", "5315 0042 abacus 5678", "----"])
def test_what_cannot_be_a_digit_codename_is_refused(bad: str) -> None:
    with pytest.raises(UnknownCodename):
        normalize_codename(bad)


def test_devanagari_rendering_reads_back_as_the_same_codename() -> None:
    codename = generate_digit_codename()
    shown = to_devanagari_digits(codename)
    assert not any(c.isascii() and c.isdigit() for c in shown)
    assert normalize_codename(shown) == codename


HYPHENATED = "drop-down felt-tip t-shirt yo-yo abacus shirt down"


@pytest.mark.parametrize(
    "typed",
    [
        HYPHENATED,
        "Drop-Down, felt-tip; T-SHIRT. yo-yo! abacus? shirt: down",
        "drop-down-felt-tip-t-shirt-yo-yo-abacus-shirt-down",  # dashes between the words too
        "drop‐down felt–tip t—shirt yo‑yo abacus/shirt_down",  # other dashes, other punctuation
        "(drop-down) [felt-tip] 't-shirt' \"yo-yo\" abacus...shirt,,down",
    ],
)
def test_hyphenated_words_and_punctuation_between_words_are_forgiven(typed: str) -> None:
    assert normalize_codename(typed) == HYPHENATED


def test_word_codenames_keep_their_canonical_form_and_keys() -> None:
    """Forgiving more input must not change what an existing source's codename hashes to."""
    salt = b"s" * 32
    for _ in range(20):
        codename = generate_codename()
        assert normalize_codename(codename) == codename
        messy = normalize_codename("-".join(w.upper() for w in codename.split()))
        assert derive_keys(messy, salt=salt, kdf=LIGHT) == derive_keys(codename, salt=salt, kdf=LIGHT)
    digits = normalize_codename("५३१५-००४२-१२३४-५६७८")
    assert derive_keys(digits, salt=salt, kdf=LIGHT) == derive_keys(Codename(DIGITS), salt=salt, kdf=LIGHT)
