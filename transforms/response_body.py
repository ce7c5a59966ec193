"""A response body read with a cap on its size, before and after decompression.

An endpoint decides how much it sends; the client decides how much it keeps.
aiohttp reads a body whole and inflates a compressed one whole, so a 30 MB
answer costs 30 MB and a gzip bomb of 1 MB costs the gigabyte it expands to.
Here the body arrives chunk by chunk: the raw bytes count against
``calls.max_response_bytes`` as they come (a ``Content-Length`` above it is
refused before a byte is read), and a gzip or deflate body is inflated as a
stream with ``max_length`` bounding what one chunk may expand to, so the
decoded size is checked before it is in memory, never after.
"""
from __future__ import annotations

import zlib

import aiohttp

# What the client says it can decode (sent as Accept-Encoding) -> zlib's window bits for it.
DECODERS = {"gzip": 16 + zlib.MAX_WBITS, "x-gzip": 16 + zlib.MAX_WBITS, "deflate": zlib.MAX_WBITS}
ACCEPT_ENCODING = "gzip, deflate"
CHUNK = 64 * 1024


class TooLarge(ValueError):
    """The answer is larger than the cap: a failed attempt, not worth retrying (the same request,
    the same answer)."""


class BadEncoding(ValueError):
    """The answer's Content-Encoding is not one the client asked for, or its bytes do not decode."""


def _too_large(cap: int, what: str) -> TooLarge:
    return TooLarge(f"response too large: {what} more than {cap} bytes (calls.max_response_bytes)")


async def read_capped(response: aiohttp.ClientResponse, cap: int) -> bytes:
    """The body of ``response``, decoded, at most ``cap`` bytes before and after decoding.

    Needs a response read with ``auto_decompress=False``: the decoding is done here.
    """
    declared = response.content_length
    if declared is not None and declared > cap:
        raise _too_large(cap, f"Content-Length {declared},")
    encoding = response.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        decoder = None
    elif encoding in DECODERS:
        # deflate as sent by most servers is zlib-wrapped: 32 + MAX_WBITS reads a zlib or gzip header
        decoder = zlib.decompressobj(DECODERS[encoding] if encoding != "deflate" else 32 + zlib.MAX_WBITS)
    else:
        raise BadEncoding(f"bad response: Content-Encoding {encoding[:40]!r} not asked for")
    raw = 0
    parts: list[bytes] = []
    size = 0
    while True:
        chunk = await response.content.read(CHUNK)
        if not chunk:
            break
        raw += len(chunk)
        if raw > cap:
            raise _too_large(cap, "body")
        if decoder is None:
            parts.append(chunk)
            size += len(chunk)
            continue
        size = _inflate(decoder, chunk, parts, size, cap)
    if decoder is not None:
        try:
            tail = decoder.flush()
        except zlib.error as exc:
            raise BadEncoding(f"bad response: {encoding} body does not decode: {exc}") from None
        size += len(tail)
        if size > cap:
            raise _too_large(cap, f"decoded {encoding} body")
        parts.append(tail)
    return b"".join(parts)


def _inflate(decoder, chunk: bytes, parts: list[bytes], size: int, cap: int) -> int:
    """Feed one compressed chunk, never letting it expand past the cap in memory."""
    data = chunk
    while data:
        try:
            out = decoder.decompress(data, cap + 1 - size)
        except zlib.error as exc:
            raise BadEncoding(f"bad response: compressed body does not decode: {exc}") from None
        size += len(out)
        if size > cap:
            raise _too_large(cap, "decoded body")
        parts.append(out)
        data = decoder.unconsumed_tail
        if not out and data:  # no progress with input left: cannot happen with room left, but never spin
            break
    return size
