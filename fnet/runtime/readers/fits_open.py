"""Open a FITS file safely: check its block structure first, then show astropy exactly that structure.

Why not hand the path to astropy directly:

- a file's HDU structure (headers, declared data sizes, zero padding) is checked before anything is
  decoded, so a cut-off copy, a header whose NAXIS disagrees with its data, or garbage in the padding
  is refused with a message instead of being read as shifted or short data;
- astropy only ever sees the bytes of the HDUs (a window ending after the last HDU): a long tail of
  zeros or junk after the last HDU is never read (astropy would scan all of it looking for another
  header: 118 s and 8 GB for a 4 GiB tail), only noted;
- compressed files (gzip, bzip2, zip) are decompressed as a stream up to the end of the last HDU and
  then drained to the end of the stream, so the CRC is always checked (astropy reads only the first
  HDUs of a .gz and never gets to the checksum, so a corrupted copy would be read silently);
- only regular files are opened: a FIFO named ``*.fits`` would block forever.
"""

from __future__ import annotations

import bz2
import gzip
import io
import os
import re
import stat
import zipfile
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

from ..errors import SpectrumReadError

BLOCK = 2880
_CARD = 80
_BITPIX = {8, 16, 32, 64, -32, -64}
_MAX_NAXIS = 999
# Headers longer than this are not spectra headers (a real spec file has ~500 cards).
_MAX_HEADER_BLOCKS = 4096
_STREAM_CHUNK = 1 << 20
_MAGIC_GZIP, _MAGIC_BZIP2, _MAGIC_ZIP = b"\x1f\x8b", b"BZh", b"PK\x03\x04"


@dataclass
class HduInfo:
    """Where one HDU lies in the file and what its header declares."""

    index: int
    name: str
    xtension: str  # "" for the primary HDU
    header_loc: int
    data_loc: int
    data_size: int  # bytes declared by BITPIX/NAXISn/PCOUNT/GCOUNT, without padding
    shape: tuple[int, ...]  # NAXISn in FITS order

    @property
    def end(self) -> int:
        """Byte after the padded data."""
        return self.data_loc + -(-self.data_size // BLOCK) * BLOCK


@dataclass
class FitsLayout:
    """The HDUs of a file, where the FITS structure ends, and anything odd about the bytes around it."""

    hdus: list[HduInfo]
    end: int
    notes: list[str] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        """EXTNAME of every HDU, upper case ('' when unnamed)."""
        return [h.name for h in self.hdus]


def check_regular_file(path: Path) -> int:
    """Size of a regular file; SpectrumReadError for anything else (missing, folder, FIFO, device, socket)."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        kind = "a broken symbolic link" if os.path.islink(path) else "file does not exist"
        raise SpectrumReadError(str(path), kind) from None
    except OSError as exc:
        raise SpectrumReadError(str(path), f"cannot read file: {exc.strerror or exc}") from None
    if stat.S_ISDIR(info.st_mode):
        raise SpectrumReadError(str(path), "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode) else "a device" if
                stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode) else
                "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise SpectrumReadError(str(path), f"is {kind}, not a regular file: refused (reading it could block forever)")
    return info.st_size


def _value(card: bytes) -> str:
    """The value field of a card as text, without its comment; strings keep their quotes stripped."""
    text = card[10:].decode("ascii", "replace").strip()
    if text.startswith("'"):
        end = text.find("'", 1)
        while end != -1 and text[end : end + 2] == "''":
            end = text.find("'", end + 2)
        return text[1:end if end != -1 else None].replace("''", "'").strip()
    return text.split("/", 1)[0].strip()


def _int(cards: dict[str, str], key: str, where: str, default: int | None = None) -> int:
    """An integer header value, or SpectrumReadError naming the card."""
    if key not in cards:
        if default is not None:
            return default
        raise ValueError(f"{where}: required header card {key} is missing")
    try:
        return int(cards[key])
    except ValueError:
        raise ValueError(f"{where}: header card {key} = {cards[key]!r} is not an integer") from None


_END_CARD = b"END" + b" " * 77
_STRUCTURAL = re.compile(rb"(SIMPLE|XTENSION|BITPIX|NAXIS\d{0,3}|PCOUNT|GCOUNT|EXTNAME|GROUPS) *= ")


def _find_end(block: bytes) -> int:
    """Offset of the END card in a header block (card-aligned), or -1."""
    at = block.find(b"END")
    while at != -1:
        if at % _CARD == 0 and block[at : at + _CARD].rstrip(b" ") == b"END":
            return at
        at = block.find(b"END", at + 1)
    return -1


def _parse_header(read_at: Callable[[int, int], bytes], pos: int, index: int) -> tuple[dict[str, str], int] | None:
    """Structural cards of the header at `pos` and the offset after it; None when no header starts there."""
    first = read_at(pos, BLOCK)
    keyword = b"SIMPLE  =" if index == 0 else b"XTENSION="
    if not first.startswith(keyword):
        return None
    blocks, block, loc = [], first, pos
    for _ in range(_MAX_HEADER_BLOCKS):
        if len(block) < BLOCK:
            raise EOFError(f"HDU {index}: header cut off at byte {loc + len(block)} (truncated file)")
        blocks.append(block)
        if _find_end(block) != -1:
            header = b"".join(blocks)
            cards: dict[str, str] = {}
            # A regex over the whole header finds the few structural cards at C speed (a spec file's
            # metadata header has ~500 cards); only matches at card starts count.
            for match in _STRUCTURAL.finditer(header):
                start = match.start()
                if start % _CARD == 0 and header[start + 8 : start + 10] == b"= ":
                    key = header[start : start + 8].decode("ascii").strip()
                    cards.setdefault(key, _value(header[start : start + _CARD]))
            return cards, loc + BLOCK
        loc += BLOCK
        block = read_at(loc, BLOCK)
    raise ValueError(f"HDU {index}: header has no END card within {_MAX_HEADER_BLOCKS} blocks")


def scan_layout(read_at: Callable[[int, int], bytes], size: int | None) -> FitsLayout:
    """Walk the HDUs from byte 0: headers, declared data sizes, padding; stop at the end of the last HDU.

    `size` is the file size when known (plain files); for streams it is None and the end of the data
    is found by reading. Raises EOFError for a cut-off file, ValueError for a corrupt structure.
    """
    hdus: list[HduInfo] = []
    notes: list[str] = []
    pos = 0
    while True:
        if size is not None and pos >= size:
            break
        parsed = _parse_header(read_at, pos, len(hdus))
        if parsed is None:
            if not hdus:
                raise ValueError("not a FITS file (does not start with a SIMPLE card)")
            if size is not None:
                notes.append(f"{size - pos} bytes after the last HDU ignored (not FITS)")
            break
        cards, data_loc = parsed
        index = len(hdus)
        where = f"HDU {index}"
        bitpix = _int(cards, "BITPIX", where)
        naxis = _int(cards, "NAXIS", where)
        if bitpix not in _BITPIX:
            raise ValueError(f"{where}: BITPIX = {bitpix} is not a FITS value")
        if not 0 <= naxis <= _MAX_NAXIS:
            raise ValueError(f"{where}: NAXIS = {naxis} is not a FITS value")
        shape = tuple(_int(cards, f"NAXIS{i}", where) for i in range(1, naxis + 1))
        if any(n < 0 for n in shape):
            raise ValueError(f"{where}: negative axis length in NAXISn = {shape}")
        pcount = _int(cards, "PCOUNT", where, 0)
        gcount = _int(cards, "GCOUNT", where, 1)
        if pcount < 0 or gcount < 0:
            raise ValueError(f"{where}: PCOUNT = {pcount}, GCOUNT = {gcount} must not be negative")
        dims = shape[1:] if index == 0 and shape[:1] == (0,) and cards.get("GROUPS") == "T" else shape
        count = 1
        for n in dims:
            count *= n
        data_size = abs(bitpix) // 8 * gcount * (pcount + count) if naxis else 0
        info = HduInfo(index, cards.get("EXTNAME", "").upper(), cards.get("XTENSION", ""), pos, data_loc,
                       data_size, shape)
        padding = info.end - data_loc - data_size
        if size is not None and data_loc + data_size > size:
            raise EOFError(f"{where}: header declares {data_size} data bytes, the file holds "
                           f"{max(size - data_loc, 0)} (truncated file)")
        if data_size:
            # Read the last data byte and the padding: a stream must have them, and FITS pads with zeros
            # (ASCII tables with blanks). Anything else means the header's NAXISn disagree with the data.
            last = read_at(data_loc + data_size - 1, 1 + padding)
            if len(last) < 1:
                raise EOFError(f"{where}: data cut off before its declared {data_size} bytes (truncated file)")
            if len(last) < 1 + padding:
                # FITS pads every HDU to whole 2880-byte blocks; a file that stops inside the padding was cut
                # off, and whatever followed (more HDUs) is lost.
                raise EOFError(f"{where}: the file stops inside the padding after the data, so it was cut off "
                               "(its size is not a whole number of 2880-byte blocks)")
            pad = last[1:].rstrip(b" " if info.xtension == "TABLE" else b"\0")
            if pad.strip(b"\0 "):
                raise ValueError(f"{where}: non-zero bytes after the {data_size} data bytes its header declares "
                                 "(NAXISn disagree with the data: corrupt header?)")
        hdus.append(info)
        pos = info.end
    return FitsLayout(hdus, pos, notes)


class _Window(io.RawIOBase):
    """A read-only, seekable view of the first `end` bytes of a binary file object."""

    def __init__(self, raw, end: int, name: str):
        self._raw, self._end, self._pos, self.name = raw, end, 0, name
        self.mode = "rb"

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = 0) -> int:
        base = {0: 0, 1: self._pos, 2: self._end}[whence]
        self._pos = max(base + offset, 0)
        return self._pos

    def readinto(self, buffer) -> int:
        n = max(min(len(buffer), self._end - self._pos), 0)
        if n == 0:
            return 0
        self._raw.seek(self._pos)
        data = self._raw.read(n)
        buffer[: len(data)] = data
        self._pos += len(data)
        return len(data)


class _Stream:
    """A decompressing stream read on demand into memory, with random access to what was read so far."""

    def __init__(self, stream):
        self._stream = stream
        self.buffer = bytearray()
        self.eof = False

    def read_at(self, offset: int, n: int) -> bytes:
        while not self.eof and len(self.buffer) < offset + n:
            chunk = self._stream.read(max(_STREAM_CHUNK, offset + n - len(self.buffer)))
            if not chunk:
                self.eof = True
            self.buffer += chunk
        return bytes(self.buffer[offset : offset + n])

    def drain(self) -> int:
        """Read the rest of the stream without keeping it (this is what checks the CRC); bytes drained."""
        total = 0
        while not self.eof:
            chunk = self._stream.read(_STREAM_CHUNK)
            if not chunk:
                self.eof = True
            total += len(chunk)
        return total


def _open_stream(handle, head: bytes, path: Path):
    """A decompressing file object for a gzip, bzip2 or zip file."""
    if head.startswith(_MAGIC_GZIP):
        return gzip.GzipFile(fileobj=handle, mode="rb"), "gzip"
    if head.startswith(_MAGIC_BZIP2):
        return bz2.BZ2File(handle, mode="rb"), "bzip2"
    archive = zipfile.ZipFile(handle)
    members = [m for m in archive.infolist() if not m.is_dir()]
    if len(members) != 1:
        raise SpectrumReadError(str(path), f"zip archive holds {len(members)} files; fnet-run reads a zip of one FITS file")
    return archive.open(members[0]), "zip"


COMPRESSED_MAGIC = (_MAGIC_GZIP, _MAGIC_BZIP2, _MAGIC_ZIP)

_LAYOUT_ATTRIBUTE = "_fnet_layout"  # set on an open HDUList: adapters ask for names without parsing headers


def register_layout(hdul, layout: FitsLayout) -> None:
    """Remember the checked layout of an open HDUList (read_spectra does this)."""
    setattr(hdul, _LAYOUT_ATTRIBUTE, layout)


def hdu_names(hdul) -> list[str]:
    """Upper-case EXTNAME of every HDU ('' when unnamed): from the checked layout, else by asking astropy."""
    layout = getattr(hdul, _LAYOUT_ATTRIBUTE, None)
    if layout is not None:
        return layout.names
    return [hdu.name.upper() if i else "" for i, hdu in enumerate(hdul)]


@contextmanager
def open_fits_bytes(path: Path) -> Iterator[tuple[io.BufferedIOBase, FitsLayout, bool]]:
    """Yield a binary file object holding exactly the file's HDUs, its checked layout, and whether it was compressed.

    Raises SpectrumReadError (naming the file) for anything that is not a sound FITS file.
    """
    size = check_regular_file(path)
    if size == 0:
        raise SpectrumReadError(str(path), "empty file (0 bytes)")
    try:
        handle = open(path, "rb")
    except OSError as exc:
        raise SpectrumReadError(str(path), f"cannot read file: {exc.strerror or exc}") from None
    with handle:
        head = handle.read(8)
        if head.startswith(COMPRESSED_MAGIC):
            fileobj, layout = _decompressed(handle, head, path)
            yield fileobj, layout, True
            return
        if not head.startswith(b"SIMPLE"):
            raise SpectrumReadError(str(path), "not a FITS file (does not start with a SIMPLE card)")

        def read_at(offset: int, n: int) -> bytes:
            handle.seek(offset)
            return handle.read(n)

        try:
            layout = scan_layout(read_at, size)
        except EOFError as exc:
            raise SpectrumReadError(str(path), f"truncated FITS file: {exc}") from None
        except ValueError as exc:
            raise SpectrumReadError(str(path), f"corrupt FITS file: {exc}") from None
        if layout.end >= size:  # the usual case: nothing after the last HDU, astropy may read the file itself
            handle.seek(0)
            yield handle, layout, False
        else:
            yield io.BufferedReader(_Window(handle, layout.end, str(path)), buffer_size=1 << 16), layout, False


def _decompressed(handle, head: bytes, path: Path) -> tuple[io.BytesIO, FitsLayout]:
    """Decompress up to the end of the last HDU, check the rest of the stream (CRC), return the HDU bytes."""
    handle.seek(0)
    kind = "compressed"
    try:
        raw, kind = _open_stream(handle, head, path)
        stream = _Stream(raw)
        try:
            layout = scan_layout(stream.read_at, None)
        except (ValueError, EOFError):
            stream.drain()  # a damaged stream is the root cause: its checksum error, if any, is the message
            raise
        drained = stream.drain()
    except SpectrumReadError:
        raise
    except EOFError as exc:
        raise SpectrumReadError(str(path), f"truncated {kind} file: {exc}") from None
    except (gzip.BadGzipFile, zlib.error, OSError, zipfile.BadZipFile) as exc:
        raise SpectrumReadError(str(path), f"corrupt {kind} file (checksum or stream error: {exc})") from None
    except ValueError as exc:
        raise SpectrumReadError(str(path), f"corrupt FITS file inside the {kind} file: {exc}") from None
    extra = len(stream.buffer) - layout.end + drained
    if extra > 0:
        layout.notes.append(f"{extra} decompressed bytes after the last HDU ignored (not FITS)")
    return io.BytesIO(bytes(stream.buffer[: layout.end])), layout
