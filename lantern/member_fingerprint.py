"""An order-independent, mergeable fingerprint of a collection of member IDs.

A retry must write exactly the members the previous run had, each once, and no
one machine may hold the list of them. So each side is summarised by a few
numbers computed per bundle and merged in any order: how many IDs, and two sums
mod 2^64 of independent 64-bit hashes of each ID (the two halves of a 128-bit
BLAKE2b digest). Two collections with the same IDs, each the same number of
times, have the same fingerprint; a member lost, added, duplicated or swapped for
another changes the sums (a false match needs the sums' differences to cancel in
both 64-bit words: odds of about 2^-128).
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

import numpy as np

_MASK = (1 << 64) - 1
_NULL = b"\x00null"  # a missing ID, hashed apart from every string


def _digest(member_id: str | None) -> bytes:
    data = _NULL if member_id is None else str(member_id).encode("utf-8")
    return hashlib.blake2b(data, digest_size=16).digest()


@dataclasses.dataclass(frozen=True)
class MemberFingerprint:
    count: int = 0
    sum_a: int = 0  # sum mod 2^64 of the first 64-bit half of each ID's digest
    sum_b: int = 0  # ... of the second half

    def merge(self, other: MemberFingerprint) -> MemberFingerprint:
        return MemberFingerprint(self.count + other.count, (self.sum_a + other.sum_a) & _MASK,
                                 (self.sum_b + other.sum_b) & _MASK)

    @property
    def hex(self) -> str:
        return f"{self.sum_a:016x}{self.sum_b:016x}"


def of_ids(member_ids: Iterable[str | None]) -> MemberFingerprint:
    """The fingerprint of these IDs (hashed in one pass, summed in numpy, which wraps mod 2^64)."""
    digests = b"".join(_digest(member_id) for member_id in member_ids)
    halves = np.frombuffer(digests, dtype="<u8").reshape(-1, 2)
    sums = halves.sum(axis=0, dtype=np.uint64)
    return MemberFingerprint(len(halves), int(sums[0]), int(sums[1]))


def merge_all(prints: Iterable[MemberFingerprint]) -> MemberFingerprint:
    out = MemberFingerprint()
    for fingerprint in prints:
        out = out.merge(fingerprint)
    return out


def difference(expected: MemberFingerprint, actual: MemberFingerprint, expected_as: str, actual_as: str) -> str:
    """One line saying how two fingerprints differ ('' when they do not)."""
    if expected == actual:
        return ""
    if expected.count != actual.count:
        how = f"{expected.count} {expected_as}, {actual.count} {actual_as}"
    else:
        how = (f"{expected.count} each, but not the same IDs (a member lost and another duplicated "
               f"or replaced)")
    return (f"member IDs {actual_as} are not those {expected_as}: {how} "
            f"(fingerprints {expected.hex} / {actual.hex})")
