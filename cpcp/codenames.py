"""Codenames: diceware passphrases that are a source's only identity.

The word list is the EFF large list shipped by the ``diceware`` package; it is validated when
loaded (7776 distinct words, so 7 words give 90.5 bits). Only derived values leave this module:
a lookup id (stored) and a reply-key passphrase (never stored), both from one slow keyed hash.
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

Codename = NewType("Codename", str)
LookupId = NewType("LookupId", str)
ReplyPassphrase = NewType("ReplyPassphrase", str)

WORDS_PER_CODENAME = 7
MIN_BITS = 90


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
    return words


def generate_codename() -> Codename:
    """A fresh codename of 7 words drawn with ``secrets``."""
    words = wordlist()
    return Codename(" ".join(secrets.choice(words) for _ in range(WORDS_PER_CODENAME)))


def normalize_codename(typed: str) -> Codename:
    """Forgive what people do when typing: case, extra or odd spaces, compatibility forms.

    Raises UnknownCodename when the input cannot be a codename at all, so no hash is spent on it.
    """
    text = unicodedata.normalize("NFKC", typed).casefold()
    # Any Unicode space, tab, newline or punctuation used as a separator counts as one space.
    cleaned = "".join(ch if ch.isalnum() or ch == "-" else " " for ch in text)
    parts = cleaned.split()
    known = set(wordlist())
    if len(parts) != WORDS_PER_CODENAME or not all(p in known for p in parts):
        raise UnknownCodename("not a codename")
    return Codename(" ".join(parts))


@dataclass(frozen=True)
class CodenameKeys:
    lookup_id: LookupId
    reply_passphrase: ReplyPassphrase


def derive_keys(codename: Codename, *, salt: bytes, kdf: KdfSettings) -> CodenameKeys:
    """One argon2id over the codename with the server salt, then two HMAC labels.

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
