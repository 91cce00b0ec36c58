"""A minimal PNG writer (zlib + struct): the mock image runtime's output, no imaging library needed."""

from __future__ import annotations

import hashlib
import struct
import zlib


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (
        struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    )


def encode_png(width: int, height: int, rgb_rows: list[bytes]) -> bytes:
    """An 8-bit RGB PNG from `height` rows of `width * 3` bytes each."""
    raw = b"".join(b"\x00" + row for row in rgb_rows)  # filter type 0 per row
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", zlib.compress(raw, 6))
        + _chunk(b"IEND", b"")
    )


def gradient_png(prompt: str, seed: int, width: int, height: int) -> bytes:
    """A deterministic picture for a prompt and seed: a two-colour gradient picked from their hash."""
    digest = hashlib.sha256(f"{seed}:{prompt}".encode()).digest()
    start, end = digest[0:3], digest[3:6]
    rows = []
    for y in range(height):
        t = y / max(1, height - 1)
        pixel = bytes(int(a + (b - a) * t) for a, b in zip(start, end, strict=True))
        rows.append(pixel * width)
    return encode_png(width, height, rows)
