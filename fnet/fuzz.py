"""Mutated copies of real spectra files, and the checks fnet-run's catalog contract must pass on them.

``make_corpus(sources, out_dir, n_per_source, seed)`` writes, for each real source file, the file itself
plus deterministic mutants: truncations, bit and byte flips, reordered / renamed / removed HDUs,
wrong-typed metadata, NaN/inf/huge values, compressed and corrupted copies, odd names (glob
characters, non-UTF-8 bytes, upper-case suffixes), symbolic links, FIFOs, trailing tails, broken
geometry. Nothing is copied into the repository: the corpus is made from ../shared/data (or any
spectra) when a test or benchmark runs. ``check_contract(corpus, catalog_rows)`` returns every
broken promise of docs/catalog.md:

- every input has a row, in input order; a failed row names its file and says what is wrong;
- no ``ok`` row has a non-finite Z (or, for P(z) models, a non-finite Z_ERR);
- a mutant that only changes the container (gzip, a link, a new name, a zero tail, HDUs reordered with
  their names kept) gives exactly the source's Z, or fails; it is never silently different;
- a mutant that must fail (a cut-off file, a corrupted gzip, a FIFO) fails;
- messages stay short.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
from astropy.io import fits

from .runtime.catalog import MAX_MESSAGE, printable

SAME, FAIL, ANY = "same", "fail", "any"  # what a mutant's rows must be, compared with its source's


@dataclass
class Mutant:
    """One input of the corpus: its path, how it was made, and what its rows must be."""

    path: str
    source: str  # the real file it was made from ("" for inputs made from nothing)
    kind: str
    expect: str  # SAME, FAIL or ANY


# -- byte-level mutations -----------------------------------------------------------------------------


def _truncations(data: bytes, rng: np.random.Generator) -> Iterable[tuple[str, bytes, str]]:
    for frac in (0.1, 0.5, 0.97):
        cut = max(1, int(len(data) * frac) - int(rng.integers(0, 100)))
        yield f"truncated-{frac:g}", data[:cut], FAIL  # FITS files are whole 2880-byte blocks
    yield "header-only", data[:2880], FAIL


def _flips(data: bytes, rng: np.random.Generator, n_bits: int = 3, n_bytes: int = 3) -> Iterable[tuple[str, bytes, str]]:
    for k in range(n_bits):
        b = bytearray(data)
        for _ in range(1 + k):
            i = int(rng.integers(0, len(b)))
            b[i] ^= 1 << int(rng.integers(0, 8))
        yield f"bitflip-{k}", bytes(b), ANY
    for k in range(n_bytes):
        b = bytearray(data)
        i = int(rng.integers(0, min(len(b), 2880 * 4)))  # headers: where structure lives
        b[i] = int(rng.integers(0, 256))
        yield f"headerbyte-{k}", bytes(b), ANY


def _compressed(data: bytes, rng: np.random.Generator) -> Iterable[tuple[str, bytes, str]]:
    packed = gzip.compress(data, compresslevel=1, mtime=0)
    yield "gzip", packed, SAME
    b = bytearray(packed)
    i = int(rng.integers(20, len(b) - 8))
    b[i] ^= 1 << int(rng.integers(0, 8))
    yield "gzip-corrupt", bytes(b), FAIL
    yield "gzip-truncated", packed[: len(packed) * 2 // 3], FAIL
    yield "zero-tail", data + bytes(2880 * 40 + 123), SAME
    yield "gzip-zero-tail", gzip.compress(data + bytes(1 << 22), compresslevel=1, mtime=0), SAME


# -- structural mutations: HDUs as byte blocks, astropy only for the one HDU being edited -------------

_PRIMARY = fits.PrimaryHDU()
_PRIMARY.header["EXTEND"] = True
_EMPTY_PRIMARY = _PRIMARY.header.tostring().encode("ascii")


def _blocks(data: bytes) -> list[bytes]:
    """The file's HDUs as byte blocks (header + padded data), from the toolkit's own layout scan."""
    from .runtime.readers.fits_open import scan_layout

    layout = scan_layout(lambda offset, n: data[offset:offset + n], len(data))
    return [data[h.header_loc:h.end] for h in layout.hdus]


def _edited_block(blocks: list[bytes], k: int, edit: Callable[[fits.HDUList], None]) -> bytes:
    """HDU k decoded alone by astropy (behind an empty primary), edited in place by `edit`, as bytes again."""
    alone = blocks[0] if k == 0 else _EMPTY_PRIMARY + blocks[k]
    hdul = fits.open(io.BytesIO(alone), memmap=False)
    hdul.readall()
    edit(hdul)
    buf = io.BytesIO()
    hdul.writeto(buf, output_verify="silentfix")
    new = buf.getvalue()
    return new if k == 0 else new[len(_EMPTY_PRIMARY):]


def _edit_hdu(blocks: list[bytes], k: int, edit: Callable[[fits.HDUList], None]) -> bytes:
    """The whole file with HDU k edited by `edit`."""
    return b"".join(blocks[:k] + [_edited_block(blocks, k, edit)] + blocks[k + 1:])


def _rename(block: bytes, name: str) -> bytes:
    """An HDU block with its EXTNAME card replaced (or added before END)."""
    card = f"EXTNAME = '{name:<8}'".ljust(80).encode()
    header_end = block.find(b"END" + b" " * 77)
    for at in range(0, header_end, 80):
        if block.startswith(b"EXTNAME ", at):
            return block[:at] + card + block[at + 80:]
    if header_end % 2880 <= 2880 - 160:  # room for one more card in the last header block
        return block[:header_end] + card + block[header_end:header_end + 80] + block[header_end + 160:]
    return block


def _structural(data: bytes, rng: np.random.Generator) -> Iterable[tuple[str, bytes, str]]:
    try:
        blocks = _blocks(data)
    except (ValueError, EOFError):
        return
    n = len(blocks)
    if n > 2:
        order = [0] + [int(i) for i in rng.permutation(np.arange(1, n))]
        yield "hdus-reordered", b"".join(blocks[i] for i in order), SAME
        drop = int(rng.integers(1, n))
        yield "hdu-removed", b"".join(b for i, b in enumerate(blocks) if i != drop), ANY
    if n > 1:
        i = int(rng.integers(1, n))
        yield "hdu-renamed", b"".join(blocks[:i] + [_rename(blocks[i], f"FUZZED{i}")] + blocks[i + 1:]), ANY
        yield "hdu-1-duplicated", b"".join(blocks[:2] + blocks[1:]), ANY
    extra = fits.ImageHDU(name="X")
    extra_block = extra.header.tostring().encode("ascii")
    yield "3000-extra-hdus", data + extra_block * 3000, ANY
    yield from _typed_meta(blocks)
    yield from _values(blocks)


def _retype(hdul: fits.HDUList, column: str, value) -> bool:
    """Replace `column` of the table in hdul[1] (or the primary header card) by one of another type/value."""
    hdu = hdul[-1]
    if isinstance(hdu, fits.BinTableHDU):
        names = {c.lower(): c for c in hdu.columns.names}
        if column.lower() not in names:
            return False
        name, nrows = names[column.lower()], len(hdu.data)
        if isinstance(value, str):
            new = fits.Column(name, f"{max(len(value), 1)}A", array=[value] * nrows)
        elif isinstance(value, int) and value >= 2**63:
            new = fits.Column(name, "K", bzero=2**63, array=np.full(nrows, value, np.uint64))
        else:
            new = fits.Column(name, "D", array=np.full(nrows, value, np.float64))
        hdul[-1] = fits.BinTableHDU.from_columns([new if c.name == name else c for c in hdu.columns],
                                                 header=hdu.header, name=hdu.name)
        return True
    if column.upper() in hdu.header:
        hdu.header[column.upper()] = value
        return True
    return False


def _typed_meta(blocks: list[bytes]) -> Iterable[tuple[str, bytes, str]]:
    cases = [("PLATE", "abcd"), ("MJD", float("nan")), ("MJD", 1e20), ("FIBERID", 2**40), ("PLUG_RA", "12:34:56"),
             ("PLATEID", "abc"), ("FIBERID", "x"), ("TARGETID", "text"), ("TARGETID", float("nan")),
             ("TARGETID", 1e30), ("TARGETID", 2**63 + 5)]
    for column, value in cases:
        for k in [*range(1, len(blocks)), 0]:  # a table column first (it wins over a header card), then the header
            block = blocks[k]
            header = block[: block.find(b"END" + b" " * 77)]
            if column.encode() not in header and column.lower().encode() not in header:
                continue  # cheap test on the raw header before astropy decodes anything
            done = []
            try:
                mutated = _edit_hdu(blocks, k, lambda h: done.append(_retype(h, column, value)))
            except Exception:
                continue
            if any(done):
                yield f"meta-{column}-{str(value)[:8]}", mutated, ANY
                break


def _scaled(array: np.ndarray, kind: str, role: str) -> np.ndarray:
    a = np.asarray(array, np.float64)
    if kind == "ivar-1e300" and role == "ivar":
        return np.full_like(a, 1e300)
    if kind == "flux-constant-1e30" and role == "flux":
        return np.full_like(a, 1e30)
    if kind == "flux-nan" and role == "flux":
        return np.full_like(a, np.nan)
    if kind == "flux-inf-half" and role == "flux":
        return np.where(np.arange(a.shape[-1]) % 2, np.inf, a)
    return a


def _values(blocks: list[bytes]) -> Iterable[tuple[str, bytes, str]]:
    """Flux / ivar replaced by NaN, inf, huge or constant values, in whichever layout the file has."""
    for kind in ("ivar-1e300", "flux-constant-1e30", "flux-nan", "flux-inf-half"):
        edited = list(blocks)
        table_done = False  # only the first flux table: the coadd of a spec file (its exposures do not matter)
        for k, block in enumerate(blocks):
            header = block[: block.find(b"END" + b" " * 77)].upper()
            is_table = b"'FLUX" in header and b"'IVAR" in header
            is_arm = b"_FLUX" in header or b"_IVAR" in header
            is_image = k == 0 and b"NAXIS2" in header

            def edit(hdul: fits.HDUList) -> None:
                hdu = hdul[-1]
                if isinstance(hdu, fits.BinTableHDU):
                    cols = []
                    for c in hdu.columns:
                        role = c.name.lower()
                        if role in ("flux", "ivar"):
                            arr = _scaled(hdu.data[c.name], kind, role)
                            cols.append(fits.Column(c.name, "D" if arr.ndim == 1 else f"{arr.shape[1]}D", array=arr))
                        else:
                            cols.append(c)
                    hdul[-1] = fits.BinTableHDU.from_columns(cols, header=hdu.header, name=hdu.name)
                elif hdu.name.upper().endswith(("_FLUX", "_IVAR")) and hdu.data is not None:
                    role = "flux" if hdu.name.upper().endswith("_FLUX") else "ivar"
                    hdul[-1] = fits.ImageHDU(_scaled(hdu.data, kind, role), header=hdu.header, name=hdu.name)
                elif hdu.header.get("NAXIS") == 2 and hdu.data is not None:
                    image = np.asarray(hdu.data, np.float64).copy()
                    rows = {"flux": 0, "ivar": 1} if "EXTEN0" in hdu.header else {"flux": 0}
                    for role, r in rows.items():
                        image[r] = _scaled(image[r:r + 1], kind, role)[0]
                    hdul[-1] = fits.PrimaryHDU(image, hdu.header)

            if is_table and table_done:
                continue
            table_done |= is_table
            if is_table or is_arm or is_image:
                try:
                    edited[k] = _edited_block(edited, k, edit)
                except Exception:
                    continue
        if edited != blocks:
            yield kind, b"".join(edited), ANY


def _geometry(data: bytes, rng: np.random.Generator) -> Iterable[tuple[str, bytes, str]]:
    """NAXIS1 of the first image or table header off by one either way."""
    at = data.find(b"NAXIS1  =")
    if at < 0 or at % 80:
        return
    value = int(data[at + 10 : at + 30])
    for delta in (-1, 1):
        card = b"NAXIS1  = " + f"{value + delta:>20}".encode() + data[at + 30 : at + 80]
        yield f"naxis1{delta:+d}", data[:at] + card + data[at + 80 :], ANY


# -- inputs made from nothing -------------------------------------------------------------------------


def _synthetic(out: Path) -> list[Mutant]:
    """Files that are not spectra at all, and names and file types that must not break a run."""
    made = []

    def write(name: str | bytes, data: bytes, kind: str, expect: str) -> None:
        path = os.path.join(os.fsencode(out), name) if isinstance(name, bytes) else str(out / name)
        with open(path, "wb") as fh:
            fh.write(data)
        made.append(Mutant(os.fsdecode(path), "", kind, expect))

    write("empty.fits", b"", "empty", FAIL)
    write("text.fits", b"PLATE MJD FIBERID\n3655 55240 2\n", "text", FAIL)
    write("zeros.fits", bytes(2880 * 3), "zeros", FAIL)
    write("primary-only.fits", _EMPTY_PRIMARY, "primary-only", FAIL)
    fifo = out / "pipe.fits"
    if hasattr(os, "mkfifo"):
        os.mkfifo(fifo)
        made.append(Mutant(str(fifo), "", "fifo", FAIL))
    broken = out / "broken-link.fits"
    os.symlink(out / "does-not-exist.fits", broken)
    made.append(Mutant(str(broken), "", "broken-symlink", FAIL))
    return made


# -- the corpus ---------------------------------------------------------------------------------------

_NAMERS = {  # name variants of the unchanged source, each must give the source's rows
    "glob-chars": lambda stem: f"{stem}[1].fits",
    "upper-suffix": lambda stem: f"{stem}.FITS",
    "space-name": lambda stem: f"{stem} copy.fits",
}


def make_corpus(sources: Iterable[str | Path], out_dir: str | Path, seed: int = 0, *, structural: bool = True,
                bytes_level: bool = True, names: bool = True) -> list[Mutant]:
    """Write the corpus under out_dir and return its inputs in order (also written to out_dir/corpus.json)."""
    out = Path(out_dir)
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    mutants: list[Mutant] = []
    for n, source in enumerate(sources):
        source = Path(source)
        data = source.read_bytes()
        rng = np.random.default_rng([seed, n])
        stem = f"s{n:03d}"
        original = out / f"{stem}-orig.fits"
        original.write_bytes(data)
        mutants.append(Mutant(str(original), str(original), "original", SAME))
        generators = []
        if bytes_level:
            generators += [_truncations, _flips, _compressed, _geometry]
        if structural:
            generators += [_structural]
        for generate in generators:
            for kind, blob, expect in generate(data, rng):
                suffix = ".fits.gz" if blob[:2] == b"\x1f\x8b" else ".fits"
                path = out / f"{stem}-{kind}{suffix}"
                path.write_bytes(blob)
                mutants.append(Mutant(str(path), str(original), kind, expect))
        if names:
            for kind, namer in _NAMERS.items():
                path = out / namer(stem)
                path.write_bytes(data)
                mutants.append(Mutant(str(path), str(original), kind, SAME))
            raw = os.path.join(os.fsencode(out), stem.encode() + b"-\xff\xfe-latin1-\xe9.fits")
            with open(raw, "wb") as fh:
                fh.write(data)
            mutants.append(Mutant(os.fsdecode(raw), str(original), "non-utf8-name", SAME))
            link = out / f"{stem}-link.fits"
            os.symlink(original, link)
            mutants.append(Mutant(str(link), str(original), "symlink", SAME))
    mutants += _synthetic(out)
    (out / "corpus.json").write_text(json.dumps([asdict(m) for m in mutants], indent=1))
    return mutants


def write_list(mutants: list[Mutant], path: str | Path) -> Path:
    """An @list file naming every input in order, with the raw bytes of non-UTF-8 names."""
    path = Path(path)
    path.write_bytes(b"".join(os.fsencode(m.path) + b"\n" for m in mutants))
    return path


def check_contract(mutants: list[Mutant], rows: list[dict], pdf_head: bool = True) -> list[str]:
    """Every broken promise of the catalog contract, as readable lines (empty when all hold)."""
    problems: list[str] = []
    by_source: dict[str, list[dict]] = {}
    order: list[str] = []
    for row in rows:
        if not order or order[-1] != row["SOURCE"]:
            order.append(row["SOURCE"])
        by_source.setdefault(row["SOURCE"], []).append(row)
    expected = [printable(m.path) for m in mutants]
    if order != expected:
        missing = [p for p in expected if p not in by_source]
        problems.append(f"rows are not one group per input in input order ({len(order)} groups for "
                        f"{len(expected)} inputs; missing {missing[:3]})")
    for row in rows:
        z, z_err = float(row["Z"]), float(row["Z_ERR"])
        if row["STATUS"] == "ok" and (not np.isfinite(z) or (pdf_head and not np.isfinite(z_err))):
            problems.append(f"{row['SOURCE']}: STATUS ok with Z = {z}, Z_ERR = {z_err}")
        if row["STATUS"] != "ok" and not row["MESSAGE"].strip():
            problems.append(f"{row['SOURCE']}: failed row without a message")
        if len(row["MESSAGE"]) > MAX_MESSAGE:
            problems.append(f"{row['SOURCE']}: message of {len(row['MESSAGE'])} characters")
    for m in mutants:
        got = by_source.get(printable(m.path), [])
        if not got:
            continue
        failed = all(r["STATUS"] != "ok" for r in got)
        if m.expect == FAIL and not failed:
            problems.append(f"{m.path} ({m.kind}): must fail, gave {len(got)} ok row(s)")
        if m.expect == SAME and not failed:
            ref = by_source.get(printable(m.source), [])
            mine = [(r["ROW"], r["STATUS"], float(r["Z"])) for r in got]
            theirs = [(r["ROW"], r["STATUS"], float(r["Z"])) for r in ref]
            if mine != theirs and not _nan_equal(mine, theirs):
                problems.append(f"{m.path} ({m.kind}): rows differ from its source {m.source}: "
                                f"{mine[:2]} vs {theirs[:2]}")
    return problems


def _nan_equal(a: list, b: list) -> bool:
    return len(a) == len(b) and all(x[:2] == y[:2] and (x[2] == y[2] or (np.isnan(x[2]) and np.isnan(y[2])))
                                    for x, y in zip(a, b))


def default_sources(shared_data: str | Path, per_folder: int = 3) -> list[Path]:
    """A spread of real files over every format in ../shared/data (first files of each folder, sorted)."""
    root = Path(shared_data)
    picks = []
    for pattern in ("sdss/dr16/spec-*.fits", "sdss/dr14-pk1d/spec-*.fits", "sdss/formats/*.fit*",
                    "sdss/mixed/*.fits", "desi/coadd-*.fits", "desi/test_coadd.fits", "lamost/dr1/*.fits"):
        picks += sorted(root.glob(pattern))[: per_folder if "formats" not in pattern else 10]
    return picks
