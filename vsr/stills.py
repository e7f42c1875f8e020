"""What a still picture (PNG, JPEG, WebP) carries beyond its pixels, read from and written into the
file's own structure: the ICC colour profile, EXIF (and its orientation), the size in the header,
and whether it is animated.

FFmpeg decodes the pixels but neither hands these on to the encoder nor writes them (PyAV does not
expose the side data that would carry them), so vsr copies them itself: the chunks of a PNG
(``iCCP``, ``eXIf``), the APP segments of a JPEG (APP2 ``ICC_PROFILE``, APP1 ``Exif``) and the RIFF
chunks of a WebP (``ICCP``, ``EXIF``, flagged in ``VP8X``).  Nothing here decodes pixels.
"""

from __future__ import annotations

import os
import struct
import zlib
from dataclasses import dataclass

import numpy as np

# FFmpeg's largest picture (av_image_check_size2): (w + 128) * (h + 128) < INT_MAX / 8.
FFMPEG_MAX_PIXELS = (2**31 - 1) // 8


def too_large_for_ffmpeg(width: int, height: int) -> bool:
    return (width + 128) * (height + 128) >= FFMPEG_MAX_PIXELS


@dataclass(frozen=True)
class StillInfo:
    """What a still's header says; ``None`` where the file does not say or is not PNG/JPEG/WebP."""

    kind: str | None = None  # "png", "jpeg", "webp"
    size: tuple[int, int] | None = None  # (width, height) as stored (before EXIF orientation)
    icc: bytes | None = None
    exif: bytes | None = None  # the TIFF structure (from "II*\0" / "MM\0*")
    animated: bool = False
    bits: int = 8  # per channel

    @property
    def orientation(self) -> int:
        """EXIF orientation 1-8 (1: as stored)."""
        return exif_orientation(self.exif) if self.exif else 1


def read_still(path: str | os.PathLike) -> StillInfo:
    """The header facts of a PNG, JPEG or WebP file (by its signature, not its name)."""
    with open(path, "rb") as f:
        head = f.read(12)
        if not (head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
            return StillInfo()  # not a picture vsr reads metadata from (a video, say): nothing more is read
        data = head + f.read((16 << 20) - len(head))  # metadata lives in the first segments; 16 MiB is ample
    try:
        if data.startswith(b"\x89PNG\r\n\x1a\n"):
            return _read_png(data)
        if data.startswith(b"\xff\xd8"):
            return _read_jpeg(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _read_webp(data)
    except (struct.error, IndexError, zlib.error, ValueError):
        pass  # a damaged header: the decoder will say what is wrong
    return StillInfo()


# -- PNG ---------------------------------------------------------------------------------------
def _png_chunks(data: bytes):
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + 8 + length], pos, pos + 12 + length
        pos += 12 + length
        if kind == b"IEND":
            return


def _read_png(data: bytes) -> StillInfo:
    size, icc, exif, animated, bits = None, None, None, False, 8
    for kind, body, _start, _end in _png_chunks(data):
        if kind == b"IHDR":
            w, h, bits = struct.unpack(">IIB", body[:9])
            size = (w, h)
        elif kind == b"iCCP":
            name_end = body.index(b"\0")
            icc = zlib.decompress(body[name_end + 2:])
        elif kind == b"eXIf":
            exif = body
        elif kind == b"acTL":
            animated = True
        elif kind == b"IDAT":
            break
    return StillInfo("png", size, icc, exif, animated, bits)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)


def _write_png(data: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    out = [data[:8]]
    for kind, body, start, end in _png_chunks(data):
        if icc is not None and kind in (b"sRGB", b"iCCP"):
            continue  # the profile says it all; sRGB and iCCP must not both be present
        if exif is not None and kind == b"eXIf":
            continue
        out.append(data[start:end])
        if kind == b"IHDR":
            if icc is not None:
                out.append(_png_chunk(b"iCCP", b"icc\0\0" + zlib.compress(icc, 9)))
            if exif is not None:
                out.append(_png_chunk(b"eXIf", exif))
    return b"".join(out)


# -- JPEG --------------------------------------------------------------------------------------
_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}
_ICC_TAG, _EXIF_TAG = b"ICC_PROFILE\0", b"Exif\0\0"


def _jpeg_segments(data: bytes):
    """(marker, body, start, end) of each segment before the scan."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA or marker == 0xD9:  # start of scan / end of image
            return
        length = struct.unpack(">H", data[pos + 2:pos + 4])[0]
        yield marker, data[pos + 4:pos + 2 + length], pos, pos + 2 + length
        pos += 2 + length


def _read_jpeg(data: bytes) -> StillInfo:
    size, exif, bits = None, None, 8
    icc_parts: dict[int, bytes] = {}
    for marker, body, _s, _e in _jpeg_segments(data):
        if marker in _SOF:
            bits, h, w = struct.unpack(">BHH", body[:5])
            size = (w, h)
        elif marker == 0xE1 and body.startswith(_EXIF_TAG) and exif is None:
            exif = body[len(_EXIF_TAG):]
        elif marker == 0xE2 and body.startswith(_ICC_TAG):
            icc_parts[body[len(_ICC_TAG)]] = body[len(_ICC_TAG) + 2:]
    icc = b"".join(icc_parts[k] for k in sorted(icc_parts)) if icc_parts else None
    return StillInfo("jpeg", size, icc, exif, False, bits)


def _write_jpeg(data: bytes, icc: bytes | None, exif: bytes | None) -> bytes:
    segments = list(_jpeg_segments(data))
    keep_from = 2
    head = [data[:2]]
    for marker, body, start, end in segments:  # JFIF's APP0 stays first
        if marker == 0xE0:
            head.append(data[start:end])
            keep_from = end
        break
    added = []
    if exif is not None:
        body = _EXIF_TAG + exif
        if len(body) + 2 <= 0xFFFF:
            added.append(b"\xff\xe1" + struct.pack(">H", len(body) + 2) + body)
    if icc is not None:
        chunk = 0xFFFF - 2 - len(_ICC_TAG) - 2
        parts = [icc[i:i + chunk] for i in range(0, len(icc), chunk)] or [b""]
        for n, part in enumerate(parts, 1):
            body = _ICC_TAG + bytes([n, len(parts)]) + part
            added.append(b"\xff\xe2" + struct.pack(">H", len(body) + 2) + body)
    rest = bytearray()
    pos = keep_from
    for marker, body, start, end in segments:
        if start < keep_from:
            continue
        if (exif is not None and marker == 0xE1 and body.startswith(_EXIF_TAG)) or \
                (icc is not None and marker == 0xE2 and body.startswith(_ICC_TAG)):
            rest += data[pos:start]
            pos = end
    rest += data[pos:]
    return b"".join(head + added) + bytes(rest)


# -- WebP --------------------------------------------------------------------------------------
def _webp_chunks(data: bytes):
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + 8 + length]
        pos += 8 + length + (length & 1)


def _read_webp(data: bytes) -> StillInfo:
    size, icc, exif, animated = None, None, None, False
    for kind, body in _webp_chunks(data):
        if kind == b"VP8X":
            flags = body[0]
            animated = bool(flags & 0x02)
            w = int.from_bytes(body[4:7], "little") + 1
            h = int.from_bytes(body[7:10], "little") + 1
            size = (w, h)
        elif kind == b"VP8 " and size is None:
            w, h = struct.unpack("<HH", body[6:10])
            size = (w & 0x3FFF, h & 0x3FFF)
        elif kind == b"VP8L" and size is None:
            bits = int.from_bytes(body[1:5], "little")
            size = ((bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1)
        elif kind == b"ICCP":
            icc = body
        elif kind == b"EXIF":
            exif = body[len(_EXIF_TAG):] if body.startswith(_EXIF_TAG) else body
        elif kind in (b"ANIM", b"ANMF"):
            animated = True
    return StillInfo("webp", size, icc, exif, animated, 8)


def _riff_chunk(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("<I", len(body)) + body + (b"\0" if len(body) & 1 else b"")


def _write_webp(data: bytes, icc: bytes | None, exif: bytes | None, size: tuple[int, int]) -> bytes:
    chunks = [(k, b) for k, b in _webp_chunks(data) if not (k == b"ICCP" and icc is not None)
              and not (k == b"EXIF" and exif is not None)]
    flags = 0
    vp8x = next((b for k, b in chunks if k == b"VP8X"), None)
    if vp8x is not None:
        flags = vp8x[0]
    else:
        flags |= 0x10 if any(k == b"ALPH" for k, _ in chunks) else 0
        if any(k == b"VP8L" and len(b) > 4 and (int.from_bytes(b[1:5], "little") >> 28) & 1 for k, b in chunks):
            flags |= 0x10  # VP8L's alpha_is_used bit
    flags |= (0x20 if icc is not None else 0) | (0x08 if exif is not None else 0)
    w, h = size
    header = bytes([flags, 0, 0, 0]) + (w - 1).to_bytes(3, "little") + (h - 1).to_bytes(3, "little")
    body = [_riff_chunk(b"VP8X", header)]
    if icc is not None:
        body.append(_riff_chunk(b"ICCP", icc))
    body += [_riff_chunk(k, b) for k, b in chunks if k != b"VP8X"]
    if exif is not None:
        body.append(_riff_chunk(b"EXIF", exif))
    payload = b"WEBP" + b"".join(body)
    return b"RIFF" + struct.pack("<I", len(payload)) + payload


def write_metadata(path: str | os.PathLike, icc: bytes | None, exif: bytes | None, size: tuple[int, int]) -> None:
    """Put ``icc`` and ``exif`` into the PNG, JPEG or WebP file at ``path`` (of picture ``size``,
    width by height), replacing any it has.  Rewrites the file in place (it is vsr's own output,
    not yet renamed into place)."""
    if icc is None and exif is None:
        return
    with open(path, "rb") as f:
        data = f.read()
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        data = _write_png(data, icc, exif)
    elif data.startswith(b"\xff\xd8"):
        data = _write_jpeg(data, icc, exif)
    elif data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        data = _write_webp(data, icc, exif, size)
    else:
        return
    with open(path, "wb") as f:
        f.write(data)


# -- EXIF orientation --------------------------------------------------------------------------
def _orientation_field(exif: bytes) -> tuple[int, str] | None:
    """(offset of the orientation value, byte order) in an EXIF TIFF structure, if it has one."""
    if len(exif) < 8 or exif[:2] not in (b"II", b"MM"):
        return None
    order = "<" if exif[:2] == b"II" else ">"
    ifd = struct.unpack(order + "I", exif[4:8])[0]
    count = struct.unpack(order + "H", exif[ifd:ifd + 2])[0]
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", exif[entry:entry + 4])
        if tag == 0x0112 and kind == 3:
            return entry + 8, order
    return None


def exif_orientation(exif: bytes) -> int:
    try:
        field = _orientation_field(exif)
    except (struct.error, IndexError):
        return 1
    if field is None:
        return 1
    offset, order = field
    value = struct.unpack(order + "H", exif[offset:offset + 2])[0]
    return value if 1 <= value <= 8 else 1


def exif_upright(exif: bytes) -> bytes:
    """The same EXIF with orientation 1 (the pixels have been turned upright)."""
    try:
        field = _orientation_field(exif)
    except (struct.error, IndexError):
        return exif
    if field is None:
        return exif
    offset, order = field
    return exif[:offset] + struct.pack(order + "H", 1) + exif[offset + 2:]


def orient(picture: np.ndarray, orientation: int) -> np.ndarray:
    """Turn an HxW(xC) picture stored with EXIF ``orientation`` upright (as viewers show it)."""
    if orientation in (5, 6, 7, 8):
        swap = (1, 0) + tuple(range(2, picture.ndim))
    if orientation == 2:
        picture = picture[:, ::-1]
    elif orientation == 3:
        picture = picture[::-1, ::-1]
    elif orientation == 4:
        picture = picture[::-1]
    elif orientation == 5:
        picture = picture.transpose(swap)
    elif orientation == 6:
        picture = picture[::-1].transpose(swap)
    elif orientation == 7:
        picture = picture[::-1, ::-1].transpose(swap)
    elif orientation == 8:
        picture = picture[:, ::-1].transpose(swap)
    return np.ascontiguousarray(picture)


def upright_size(width: int, height: int, orientation: int) -> tuple[int, int]:
    return (height, width) if orientation in (5, 6, 7, 8) else (width, height)
