"""Codenames: a source's only identity, either diceware words or groups of digits.

Word codenames are 7 words of the EFF large list shipped by the ``diceware`` package, validated
when loaded (7776 distinct words: 90.5 bits). Many citizens read Hindi and not English words, so
a source may take 16 random digits instead, shown as 4 groups of 4 (53.15 bits: weaker, so the
argon2 cost below is what keeps a stolen database from being searched; see README). Typing is
forgiven: case, spaces, dashes and other punctuation, and any Unicode decimal digit (Devanagari
०-९ included) counts as its ASCII digit. Both kinds normalise to one canonical ``Codename``,
the only form ``derive_keys`` takes. Only derived values leave this module: a lookup id (stored)
and a reply-key passphrase (never stored), both from one slow keyed hash.
"""

from __future__ import annotations

import hashlib
import hmac
import importlib.resources
import math
import secrets
import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import NewType

from argon2.low_level import Type, hash_secret_raw

from .errors import ConfigError, UnknownCodename
from .settings import KdfSettings

#: The canonical form of either kind, as ``derive_keys`` hashes it.
Codename = NewType("Codename", str)
#: Seven list words joined by single spaces, e.g. "drop-down abacus ...".
WordCodename = NewType("WordCodename", Codename)
#: Sixteen ASCII digits in four groups of four joined by single spaces, e.g. "5315 0042 ...".
DigitCodename = NewType("DigitCodename", Codename)
LookupId = NewType("LookupId", str)
ReplyPassphrase = NewType("ReplyPassphrase", str)

WORDS_PER_CODENAME = 7
MIN_BITS = 90
DIGITS_PER_CODENAME = 16
DIGIT_GROUP = 4
MIN_DIGIT_BITS = 53
# Dashes people or keyboards type between or inside words; NFKC leaves these as they are.
_DASHES = dict.fromkeys(map(ord, "\u2010\u2011\u2012\u2013\u2014\u2015\u2212\ufe58\ufe63\uff0d"), "-")


@lru_cache(maxsize=1)
def wordlist() -> tuple[str, ...]:
    """The EFF large word list, checked: 7776 distinct lower-case ASCII words."""
    text = (
        importlib.resources.files("diceware")
        .joinpath("wordlists/wordlist_en_eff.txt")
        .read_text(encoding="utf-8")
    )
    words = tuple(line.split("\t")[-1].strip() for line in text.splitlines() if line.strip())
    if len(words) != 7776 or len(set(words)) != len(words):
        raise ConfigError("the diceware word list is not the expected 7776 distinct words")
    if not all(w.isascii() and w.replace("-", "").isalpha() and w == w.lower() for w in words):
        raise ConfigError("the diceware word list holds unexpected characters")
    if WORDS_PER_CODENAME * math.log2(len(words)) < MIN_BITS:
        raise ConfigError("codenames would be weaker than 90 bits")
    # Dashes may also separate words when typed; reading them back is unambiguous only if no
    # hyphenated word (drop-down, t-shirt...) starts with a word of the list.
    known = set(words)
    if any(w.count("-") > 1 or w.split("-")[0] in known for w in words if "-" in w):
        raise ConfigError("the diceware word list has hyphenated words that would read ambiguously")
    return words


def generate_codename() -> WordCodename:
    """A fresh codename of 7 words drawn with ``secrets``."""
    words = wordlist()
    return WordCodename(Codename(" ".join(secrets.choice(words) for _ in range(WORDS_PER_CODENAME))))


def digit_codename_bits() -> float:
    return DIGITS_PER_CODENAME * math.log2(10)


def generate_digit_codename() -> DigitCodename:
    """A fresh codename of 16 digits drawn with ``secrets``, in groups of 4 (53.15 bits)."""
    if digit_codename_bits() < MIN_DIGIT_BITS:
        raise ConfigError(f"digit codenames would be weaker than {MIN_DIGIT_BITS} bits")
    return _grouped("".join(secrets.choice("0123456789") for _ in range(DIGITS_PER_CODENAME)))


def _grouped(digits: str) -> DigitCodename:
    groups = (digits[i : i + DIGIT_GROUP] for i in range(0, len(digits), DIGIT_GROUP))
    return DigitCodename(Codename(" ".join(groups)))


def normalize_codename(typed: str) -> Codename:
    """Forgive what people do when typing: case, extra or odd spaces, dashes and punctuation,
    compatibility forms, and digits of any script (Devanagari ०-९ and others).

    Input with letters is read as words, input without as digits. Raises UnknownCodename when
    it cannot be a codename at all, so no hash is spent on it.
    """
    text = unicodedata.normalize("NFKC", typed).casefold().translate(_DASHES)
    if any(ch.isalpha() for ch in text):
        return _normalize_words(text)
    return _normalize_digits(text)


def _normalize_words(text: str) -> WordCodename:
    # Any Unicode space, tab, newline or punctuation used as a separator counts as one space.
    cleaned = "".join(ch if ch.isalnum() or ch == "-" else " " for ch in text)
    known = set(wordlist())
    words: list[str] = []
    for part in cleaned.split():
        # Dashes separate words too, except inside a listed hyphenated word ("drop-down"):
        # wordlist() checked that rejoining those pieces is never ambiguous.
        pieces = [p for p in part.split("-") if p]
        i = 0
        while i < len(pieces):
            joined = f"{pieces[i]}-{pieces[i + 1]}" if i + 1 < len(pieces) else ""
            if pieces[i] not in known and joined in known:
                words.append(joined)
                i += 2
            else:
                words.append(pieces[i])
                i += 1
    if len(words) != WORDS_PER_CODENAME or not all(w in known for w in words):
        raise UnknownCodename("not a codename")
    return WordCodename(Codename(" ".join(words)))


def _normalize_digits(text: str) -> DigitCodename:
    digits: list[str] = []
    for ch in text:
        if ch.isdecimal():
            digits.append(str(unicodedata.decimal(ch)))  # ५ -> 5, ٣ -> 3, ...
        elif ch.isalnum():  # a numeral that is no decimal digit (½, Ⅻ): not a codename
            raise UnknownCodename("not a codename")
    if len(digits) != DIGITS_PER_CODENAME:
        raise UnknownCodename("not a codename")
    return _grouped("".join(digits))


def to_devanagari_digits(codename: str) -> str:
    """The same codename written with Devanagari digits, for Hindi readers to copy."""
    return codename.translate(str.maketrans("0123456789", "०१२३४५६७८९"))


@dataclass(frozen=True)
class CodenameKeys:
    lookup_id: LookupId
    reply_passphrase: ReplyPassphrase


def derive_keys(codename: Codename, *, salt: bytes, kdf: KdfSettings) -> CodenameKeys:
    """One argon2id over the canonical codename (either kind) with the server salt, then two
    HMAC labels.

    Slow on purpose (about 0.1-0.3 s): this is what a thief of the database must pay per guess.
    Blocking: call it from a thread.
    """
    master = hash_secret_raw(
        codename.encode("utf-8"),
        salt,
        time_cost=kdf.time_cost,
        memory_cost=kdf.memory_kib,
        parallelism=kdf.parallelism,
        hash_len=32,
        type=Type.ID,
    )
    lookup = hmac.new(master, b"cpcp/lookup-id/v1", hashlib.sha256).hexdigest()
    reply = hmac.new(master, b"cpcp/reply-key/v1", hashlib.sha256).hexdigest()
    return CodenameKeys(LookupId(lookup), ReplyPassphrase(reply))
