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

from vsr.errors import VsrError

# FFmpeg's largest picture (av_image_check_size2): (w + 128) * (h + 128) < INT_MAX / 8.
FFMPEG_MAX_PIXELS = (2**31 - 1) // 8


def too_large_for_ffmpeg(width: int, height: int) -> bool:
    return (width + 128) * (height + 128) >= FFMPEG_MAX_PIXELS


# How large a picture's metadata may be.  An ICC profile is kilobytes to a few MB; the cap is the
# most a JPEG can carry (255 APP2 segments), so a profile that is read can be written to any output.
# EXIF is made for one 64 KiB APP1 segment; PNG and WebP may carry more, up to 1 MiB is taken.
_ICC_TAG, _EXIF_TAG = b"ICC_PROFILE\0", b"Exif\0\0"
_ICC_PART = 0xFFFF - 2 - len(_ICC_TAG) - 2  # profile bytes in one APP2 segment
MAX_ICC_BYTES = 255 * _ICC_PART
MAX_EXIF_BYTES = 1 << 20
# What a PNG's compressed metadata (iCCP, zTXt) may inflate to, all chunks together.  FFmpeg's
# PNG decoder inflates each of them whole, with no limit, before the first pixel (measured: a 1 GiB
# iCCP took 3.1 GB), so such a file is refused before FFmpeg sees it, not merely stripped.
MAX_INFLATED_BYTES = 32 << 20


class MetadataTooLarge(VsrError):
    """A picture's compressed metadata inflates beyond :data:`MAX_INFLATED_BYTES` (or the profile
    beyond :data:`MAX_ICC_BYTES`): a decompression bomb, not decoded."""


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


@dataclass(frozen=True)
class StillInfo:
    """What a still's header says; ``None`` where the file does not say or is not PNG/JPEG/WebP."""

    kind: str | None = None  # "png", "jpeg", "webp"
    size: tuple[int, int] | None = None  # (width, height) as stored (before EXIF orientation)
    icc: bytes | None = None
    exif: bytes | None = None  # the TIFF structure (from "II*\0" / "MM\0*")
    animated: bool = False
    bits: int = 8  # per channel
    dropped: tuple[str, ...] = ()  # metadata left out, each as a line for the user (too large, cut short)

    @property
    def orientation(self) -> int:
        """EXIF orientation 1-8 (1: as stored)."""
        return exif_orientation(self.exif) if self.exif else 1


def read_still(path: str | os.PathLike) -> StillInfo:
    """The header facts of a PNG, JPEG or WebP file (by its signature, not its name).

    Raises :class:`MetadataTooLarge` for a PNG whose compressed metadata inflates beyond
    :data:`MAX_INFLATED_BYTES` (FFmpeg would inflate it all); an ICC profile or EXIF that is merely
    too large to carry is left out and said in ``dropped``."""
    with open(path, "rb") as f:
        head = f.read(12)
        if not (head.startswith((b"\x89PNG\r\n\x1a\n", b"\xff\xd8")) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")):
            return StillInfo()  # not a picture vsr reads metadata from (a video, say): nothing more is read
        if head.startswith(b"\x89PNG\r\n\x1a\n"):  # every chunk to IEND: FFmpeg reads text chunks after IDAT too
            try:
                return _read_png(f)
            except (struct.error, IndexError, ValueError):
                return StillInfo()  # a damaged header: the decoder will say what is wrong
        data = head + f.read((16 << 20) - len(head))  # metadata lives in the first segments; 16 MiB is ample
    try:
        if data.startswith(b"\xff\xd8"):
            return _read_jpeg(data)
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _read_webp(data)
    except (struct.error, IndexError, zlib.error, ValueError):
        pass  # a damaged header: the decoder will say what is wrong
    return StillInfo()


def is_animated(path: str | os.PathLike) -> bool:
    """Whether a picture file is animated (by its signature and first chunks, never its name): an APNG
    (an ``acTL`` chunk before the first ``IDAT``, where the APNG format puts it and FFmpeg's ``apng``
    demuxer looks for it) or an animated WebP (the animation flag of ``VP8X``).  Reads chunk headers
    only; False for any other file, or one that cannot be read."""
    try:
        with open(path, "rb") as f:
            head = f.read(30)
            if head[:4] == b"RIFF" and head[8:16] == b"WEBPVP8X" and len(head) >= 21:
                return bool(head[20] & 0x02)
            if not head.startswith(b"\x89PNG\r\n\x1a\n"):
                return False
            f.seek(8)
            for _ in range(10000):  # chunk headers before the first IDAT; the count bounds a crafted file
                chunk = f.read(8)
                if len(chunk) < 8:
                    return False
                length, kind = struct.unpack(">I4s", chunk)
                if kind == b"acTL":
                    return True
                if kind in (b"IDAT", b"IEND"):
                    return False
                f.seek(length + 4, 1)
    except OSError:
        return False
    return False


# -- PNG ---------------------------------------------------------------------------------------
def _png_chunks(data: bytes):
    pos = 8
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        yield kind, data[pos + 8:pos + 8 + length], pos, pos + 12 + length
        pos += 12 + length
        if kind == b"IEND":
            return


class _Inflater:
    """Inflates a PNG's compressed chunks straight from the file, in pieces, never more than the
    budget of :data:`MAX_INFLATED_BYTES` for all of them together."""

    PIECE = 1 << 20
    REFUSED = "not decoded (FFmpeg would inflate all of it first)"

    def __init__(self, f) -> None:
        self.f = f
        self.left = MAX_INFLATED_BYTES

    def __call__(self, length: int, what: str, keep_up_to: int = 0) -> bytes | None:
        """Inflate the next ``length`` bytes of the file (a zlib stream); the result when it is at
        most ``keep_up_to`` bytes, else None; None too for a damaged stream."""
        d = zlib.decompressobj()
        kept: list[bytes] = []
        total = 0
        try:
            while length > 0 and not d.eof:
                piece = self.f.read(min(length, self.PIECE))
                if not piece:
                    break
                length -= len(piece)
                while True:  # (output held back by max_length comes out with the next call)
                    out = d.decompress(piece, self.PIECE)
                    piece = d.unconsumed_tail
                    total += len(out)
                    if keep_up_to and total > keep_up_to:
                        raise MetadataTooLarge(f"its {what} inflates to more than {_mib(keep_up_to)}, where real "
                                               f"profiles are kilobytes to a few MB; {self.REFUSED}")
                    if total > self.left:
                        raise MetadataTooLarge(f"its compressed metadata inflates to more than "
                                               f"{_mib(MAX_INFLATED_BYTES)} in all (the last: a {what}); {self.REFUSED}")
                    if total <= keep_up_to:
                        kept.append(out)
                    if d.eof or (not piece and len(out) < self.PIECE):
                        break
        except zlib.error:
            kept = []
        self.f.seek(length, 1)
        self.left -= total
        return b"".join(kept) if kept and d.eof else None


def _read_png(f) -> StillInfo:
    """The chunks of the PNG open in ``f``, read one by one to IEND: only those vsr uses,
    others skipped."""
    size, icc, exif, animated, bits, dropped = None, None, None, False, 8, []
    inflate = _Inflater(f)
    f.seek(8)
    while True:
        head = f.read(8)
        if len(head) < 8:
            break
        length, kind = struct.unpack(">I4s", head)
        end = f.tell() + length + 4  # after the CRC
        # A damaged chunk is skipped, never the rest: a bomb may come after it.
        if kind == b"IHDR" and length >= 13:
            w, h, bits = struct.unpack(">IIB", f.read(9))
            size = (w, h)
        elif kind == b"iCCP":
            header = f.read(min(length, 81))  # a name of 1-79 bytes, NUL, the method byte (FFmpeg's limit: 80)
            if b"\0" in header:
                start = header.index(b"\0") + 2
                f.seek(start - len(header), 1)
                profile = inflate(length - start, "ICC colour profile (iCCP chunk)", keep_up_to=MAX_ICC_BYTES)
                if icc is None:
                    icc = profile
        elif kind == b"zTXt":  # FFmpeg inflates its text into the frame's metadata (iTXt it leaves alone)
            start = _past_nul(f, length)  # the keyword ends at the first NUL, wherever it is (as FFmpeg finds it)
            if start is not None and start < length:
                f.seek(1, 1)  # the compression method
                inflate(length - start - 1, "zTXt text chunk")
        elif kind == b"eXIf":
            if length <= MAX_EXIF_BYTES:
                exif = f.read(length)
            else:
                dropped.append(_too_large("EXIF", length, MAX_EXIF_BYTES))
        elif kind == b"acTL":
            animated = True
        elif kind == b"IEND":
            break
        f.seek(end)
    return StillInfo("png", size, icc, exif, animated, bits, tuple(dropped))


def _past_nul(f, length: int) -> int | None:
    """Bytes read from ``f`` up to and including the first NUL in the next ``length``; None if none."""
    done = 0
    while done < length:
        piece = f.read(min(length - done, 1 << 16))
        if not piece:
            return None
        if b"\0" in piece:
            at = done + piece.index(b"\0") + 1
            f.seek(at - done - len(piece), 1)
            return at
        done += len(piece)
    return None


def _too_large(what: str, length: int, limit: int) -> str:
    return f"{what} of {length:,} bytes is not copied (vsr takes at most {limit:,})" + \
        ("; its orientation is not applied" if what == "EXIF" else "")


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
    icc, dropped = None, ()
    if icc_parts:  # at most 256 segments of 64 KiB: bounded, but may still be more than a JPEG can carry
        length = sum(len(p) for p in icc_parts.values())
        if length <= MAX_ICC_BYTES:
            icc = b"".join(icc_parts[k] for k in sorted(icc_parts))
        else:
            dropped = (_too_large("ICC colour profile", length, MAX_ICC_BYTES),)
    return StillInfo("jpeg", size, icc, exif, False, bits, dropped)


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
    if icc is not None and len(icc) <= MAX_ICC_BYTES:  # (read_still takes no larger one)
        parts = [icc[i:i + _ICC_PART] for i in range(0, len(icc), _ICC_PART)] or [b""]
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
def _webp_chunks(data: bytes, lengths: bool = False):
    """(kind, body) of each chunk; with ``lengths``, (kind, body, the length the chunk declares),
    which is more than ``len(body)`` where the chunk goes on past what was read."""
    pos = 12
    while pos + 8 <= len(data):
        kind, length = struct.unpack("<4sI", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        yield (kind, body, length) if lengths else (kind, body)
        pos += 8 + length + (length & 1)


def _read_webp(data: bytes) -> StillInfo:
    size, icc, exif, animated, dropped = None, None, None, False, []
    for kind, body, length in _webp_chunks(data, lengths=True):
        if kind in (b"ICCP", b"EXIF"):
            what, limit = ("ICC colour profile", MAX_ICC_BYTES) if kind == b"ICCP" else ("EXIF", MAX_EXIF_BYTES)
            if length > limit:
                dropped.append(_too_large(what, length, limit))
                continue
            if len(body) < length:
                dropped.append(f"{what} is cut short; not copied")
                continue
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
    return StillInfo("webp", size, icc, exif, animated, 8, tuple(dropped))


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
