"""Correctly rounded quotients of big integers by small ones, for many rows at once.

``lantern.features`` keeps sums exact (integers scaled by 2**1074) and gets a mean as
CPython's ``int / int``: the true quotient rounded once, half to even. Doing that
member by member in Python is the bulk of a features-only run's time after the
shuffle; here the same division runs over numpy columns, so a shard's members get
their means in a few vectorised passes, digit for digit the ones ``int / int`` gives.

An integer is held as 32-bit limbs (least significant first) in ``uint64`` columns,
so a long division step ``(remainder << 32 | limb) // n`` stays below 2**63 for any
divisor below 2**31. Rows the kernel does not answer (a divisor of 2**31 or more, a
quotient below the normal range or past it) come back flagged, for the exact Python
path to take.
"""
from __future__ import annotations

import numpy as np

LIMB_BITS = 32
_MASK = np.uint64((1 << LIMB_BITS) - 1)
_MAX_DIVISOR = 1 << 31
_FRACTION_LIMBS = 3  # quotient limbs below the point: at least 96 - 31 = 65 significant bits, 54 needed
_U64 = np.uint64


def _bit_length(values: np.ndarray) -> np.ndarray:
    """Bit length of each uint64 below 2**32 (exact: float64 holds such integers, frexp gives the length)."""
    return np.frexp(values.astype(np.float64))[1].astype(np.int64)


def _magnitudes(limbs: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """Two's complement limbs -> magnitudes where ``negative`` (``~x + 1``, the carry rippling up)."""
    if negative.any():
        neg = limbs[negative]
        carry = np.ones(len(neg), dtype=np.uint64)
        for k in range(neg.shape[1]):
            value = (~neg[:, k] & _MASK) + carry
            neg[:, k] = value & _MASK
            carry = value >> _U64(LIMB_BITS)
        limbs[negative] = neg
    return limbs


def from_signed_bytes(data: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Big-endian two's complement integers, one per row of ``data`` (uint8, shape (m, w)), as
    (magnitude limbs of shape (m, k), negative mask)."""
    m, w = data.shape
    negative = data[:, 0] >= 128 if w else np.zeros(m, dtype=bool)
    pad = (-w) % 4
    if pad:
        fill = np.where(negative, 255, 0).astype(np.uint8)[:, None]
        data = np.concatenate([np.repeat(fill, pad, axis=1), data], axis=1)
    limbs = np.ascontiguousarray(data).view(">u4")[:, ::-1].astype(np.uint64)  # least significant first
    return _magnitudes(limbs, negative), negative


def from_signed_limbs(parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Integers given as ``sum(parts[:, k] << 32 * k)`` with signed int64 parts of any size below
    2**62 in magnitude, as (magnitude limbs, negative mask): carried, then negated where below zero."""
    parts = parts.copy()
    m, k = parts.shape
    for j in range(k - 1):
        carry = parts[:, j] >> LIMB_BITS  # floor division: the low limb ends in [0, 2**32)
        parts[:, j] -= carry << LIMB_BITS
        parts[:, j + 1] += carry
    negative = parts[:, -1] < 0 if k else np.zeros(m, dtype=bool)
    # The top part may hold more than 32 bits: split it into two limbs, then negate where needed.
    top = parts[:, -1]
    wide = np.concatenate([parts[:, :-1], (top & 0xFFFFFFFF)[:, None], (top >> 32)[:, None]], axis=1)
    limbs = (wide.astype(np.uint64) & _MASK)
    return _magnitudes(limbs, negative), negative


def quotients(limbs: np.ndarray, negative: np.ndarray, scale: np.ndarray | int,
              divisors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(-1 if negative else 1) * magnitude * 2**scale / divisor`` for each row, correctly rounded
    (half to even), as ``int / int`` rounds it. Returns (values, answered): rows with ``answered``
    False (divisor outside [1, 2**31), result subnormal or past the float range) hold NaN.

    A zero numerator gives 0.0 (never -0.0), as integer division does.
    """
    limbs = np.asarray(limbs, dtype=np.uint64)
    m, k = limbs.shape
    n = np.asarray(divisors, dtype=np.int64)
    answered = (n >= 1) & (n < _MAX_DIVISOR)
    d = np.where(answered, n, 1).astype(np.uint64)
    # Long division, most significant limb first, then three limbs of fraction.
    width = k + _FRACTION_LIMBS
    q = np.zeros((m, width + 2), dtype=np.uint64)  # two zero limbs below, so a window never leaves the array
    rem = np.zeros(m, dtype=np.uint64)
    for j in range(width - 1, -1, -1):
        limb = limbs[:, j - _FRACTION_LIMBS] if j >= _FRACTION_LIMBS else 0
        current = (rem << _U64(LIMB_BITS)) | limb
        q[:, j + 2] = current // d
        rem = current % d
    nonzero = q != 0
    zero = ~nonzero.any(axis=1)
    top = width + 1 - np.argmax(nonzero[:, ::-1], axis=1)  # index of the most significant non-zero limb
    rows = np.arange(m)
    t0 = q[rows, top]
    t1 = q[rows, np.maximum(top - 1, 0)]
    t2 = q[rows, np.maximum(top - 2, 0)]
    bits = _bit_length(t0)  # 1..32 where the quotient is not zero
    bits = np.where(zero, 1, bits).astype(np.uint64)
    # The quotient's top 64 bits, left-aligned; below them, the sticky rest.
    head = (t0 << (_U64(64) - bits)) | (t1 << (_U64(32) - bits)) | (t2 >> bits)
    low_mask = (_U64(1) << bits) - _U64(1)
    below = (t2 & low_mask) != 0
    # Limbs under top - 2 (those past the window) and the final remainder.
    positions = np.arange(width + 2)[None, :]
    below |= (nonzero & (positions < (top - 2)[:, None])).any(axis=1)
    below |= rem != 0
    mantissa = head >> _U64(11)
    round_bit = (head >> _U64(10)) & _U64(1)
    sticky = ((head & _U64(0x3FF)) != 0) | below
    up = (round_bit == 1) & (sticky | ((mantissa & _U64(1)) == 1))
    mantissa = mantissa + up.astype(np.uint64)
    carried = mantissa == (_U64(1) << _U64(53))
    mantissa = np.where(carried, mantissa >> _U64(1), mantissa)
    # value = mantissa * 2**(bit length of quotient - 53) * 2**(scale - 32 * (fraction limbs + 2 pad limbs))
    length = LIMB_BITS * top.astype(np.int64) + bits.astype(np.int64)
    exponent = length - 53 + carried + np.asarray(scale, dtype=np.int64) - LIMB_BITS * (_FRACTION_LIMBS + 2)
    answered &= zero | ((exponent >= -1074) & (exponent <= 971))
    values = np.ldexp(mantissa.astype(np.float64), np.where(answered, exponent, 0).astype(np.int32))
    values = np.where(negative, -values, values)
    values = np.where(zero, 0.0, values)
    values[~answered] = np.nan
    return values, answered
