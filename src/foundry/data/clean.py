"""Text cleaning and the normal forms that deduplication, decontamination and the split agree on."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# C0 and C1 control characters except tab (\x09) and newline (\x0a); \r is handled first as a line end.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACE = re.compile(r"\s+")
_WORD = re.compile(r"\w+")


def clean_text(text: str) -> str:
    """NFC, Unix line ends, control characters removed (newline and tab kept), outer whitespace trimmed.

    NFC first so that 'é' typed as e + combining accent and as one code point become the same text
    (and therefore the same tokens, and exact duplicates of each other).
    """
    text = unicodedata.normalize("NFC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _CONTROL.sub("", text).strip()


def normalise_for_hash(text: str) -> str:
    """Case and whitespace folded: two documents differing only there are exact duplicates."""
    return _SPACE.sub(" ", text.casefold()).strip()


def content_hash(text: str) -> bytes:
    """16-byte digest of the normalised text: the exact-dedup key, the document id and the split key."""
    return hashlib.blake2b(normalise_for_hash(text).encode("utf-8"), digest_size=16).digest()


def words(text: str) -> list[str]:
    """Lower-cased word tokens (letters, digits, underscore in any script); punctuation ignored."""
    return _WORD.findall(text.casefold())
