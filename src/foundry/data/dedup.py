"""Exact and near-duplicate removal.

Exact: a 16-byte hash of the case- and whitespace-folded text (`clean.content_hash`).
Near: MinHash signatures of word 3-gram shingles, bucketed by LSH (Broder 1997, "On the resemblance and
containment of documents"; banding as in Leskovec et al., Mining of Massive Datasets, ch. 3), with
datasketch. LSH only proposes candidates; a candidate counts as a duplicate when its estimated Jaccard
similarity is at least the threshold, so the banding's false positives are not dropped.

Why word 3-grams: with k-word shingles one changed word alters k shingles, so a 100-word document
with one word changed keeps Jaccard (98-3)/(98+3) = 0.94 at k=3 but only 0.85 at k=5 (too close to a
0.8 threshold for short documents). Unrelated texts share almost no 3-grams.
"""

from __future__ import annotations

import zlib

from datasketch import MinHash, MinHashLSH

from foundry.data.clean import words

SHINGLE_WORDS = 3
NUM_PERM = 128


def shingles(text: str | list[str], k: int = SHINGLE_WORDS) -> set[bytes]:
    """Word k-grams of a text (or of its already split `clean.words`)."""
    toks = words(text) if isinstance(text, str) else text
    if len(toks) <= k:
        return {" ".join(toks).encode("utf-8")}
    return {" ".join(gram).encode("utf-8") for gram in zip(*(toks[i:] for i in range(k)))}


class ExactDeduplicator:
    """Remembers content hashes; `seen(h)` is True for the second and later copies."""

    def __init__(self):
        self._hashes: set[bytes] = set()

    def seen(self, digest: bytes) -> bool:
        if digest in self._hashes:
            return True
        self._hashes.add(digest)
        return False


class NearDeduplicator:
    """MinHash LSH over kept documents; `is_near_duplicate(key, text)` checks, then remembers, `text`."""

    def __init__(self, threshold: float = 0.8, num_perm: int = NUM_PERM, seed: int = 1):
        self.threshold = threshold
        self._lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
        # CRC-32 as the base shingle hash: a C builtin (3x faster than datasketch's default SHA-1 here) and
        # the same in every run, unlike Python's salted hash(); the MinHash's seeded random affine
        # permutations supply the randomness on top of it.
        self._template = MinHash(num_perm=num_perm, seed=seed, hashfunc=zlib.crc32)  # permutations made once
        self._kept: dict[str, MinHash] = {}

    @property
    def bands(self) -> tuple[int, int]:
        """(bands, rows per band) of the LSH index: a distributed run keys its buckets the same way."""
        return self._lsh.b, self._lsh.r

    @property
    def num_perm(self) -> int:
        """Values per signature."""
        return self._template.num_perm

    def signature(self, text: str | list[str]) -> MinHash:
        t = self._template
        m = MinHash(num_perm=t.num_perm, seed=t.seed, hashfunc=zlib.crc32, permutations=t.permutations,
                    scheme=t.scheme)
        m.update_batch(list(shingles(text)))
        return m

    def is_near_duplicate(self, key: str, text: str | list[str]) -> str | None:
        """The key of an earlier near-duplicate of `text` (or of its `clean.words`), or None (and `text`
        is then remembered)."""
        sig = self.signature(text)
        for other in self._lsh.query(sig):
            if sig.jaccard(self._kept[other]) >= self.threshold:
                return other
        self._lsh.insert(key, sig)
        self._kept[key] = sig
        return None
