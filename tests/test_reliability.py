"""Issue #6, one regression test per numbered finding: nothing lost, nothing silently wrong.

Every mutated input is made here from the real files in ../shared/data by the toolkit's own code
(fnet.fuzz helpers or astropy); nothing is copied into the repository.
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits
from click.testing import CliRunner

from conftest import require_shared
from fnet import fuzz
from fnet.cli import EXIT_NO_CATALOG, EXIT_USAGE, default_model_path, run_command
from fnet.runtime.catalog import MAX_MESSAGE, read_catalog
from fnet.runtime.errors import ModelPackageError, SpectrumReadError
from fnet.runtime.journal import JOURNAL_VERSION, journal_paths
from fnet.runtime.model_package import build_metadata, load_model_package
from fnet.runtime.readers import read_spectra
from fnet.runtime.zwarn import ZWarn
from tiny_models import PAPER_GRID, make_tiny_model

ZBINS = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 64}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return make_tiny_model(tmp_path_factory.mktemp("m") / "tiny.onnx", ZBINS)


def run(args: list) -> "CliRunner.Result":
    return CliRunner().invoke(run_command, [str(a) for a in args], catch_exceptions=False)


def spec_file() -> Path:
    return require_shared("sdss", "formats", "spec-4055-55359-0010.fits")


def mutate(src: Path, kind: str) -> bytes:
    """The fuzz corpus's mutant `kind` of a real file."""
    data = src.read_bytes()
    rng = np.random.default_rng(0)
    generators = (fuzz._structural, fuzz._compressed, fuzz._truncations, fuzz._geometry)
    if kind.startswith("meta-"):
        generators = (lambda d, r: fuzz._typed_meta(fuzz._blocks(d)),)
    elif kind.startswith(("ivar-", "flux-")):
        generators = (lambda d, r: fuzz._values(fuzz._blocks(d)),)
    for generate in generators:
        for name, blob, _ in generate(data, rng):
            if name == kind:
                return blob
    raise KeyError(kind)


# 1 -------------------------------------------------------------------------------- wrong-typed metadata


@pytest.mark.parametrize("src, kinds", [
    (("sdss", "formats", "spec-4055-55359-0010.fits"),
     ["meta-PLATE-abcd", "meta-MJD-nan", "meta-MJD-1e+20", "meta-FIBERID-10995116", "meta-PLUG_RA-12:34:56"]),
    (("sdss", "formats", "spPlate-4055-55359-0020.fits"), ["meta-PLATEID-abc"]),
    (("sdss", "formats", "spSpec-51993-0542-631.fit"), ["meta-FIBERID-x"]),
    (("desi", "coadd-1-80693-thru20210204.fits"),
     ["meta-TARGETID-text", "meta-TARGETID-nan", "meta-TARGETID-1e+30", "meta-TARGETID-92233720"]),
])
def test_wrong_typed_metadata_is_blanked_with_a_note_in_every_writer(tmp_path, model, src, kinds):
    path = require_shared(*src)
    inputs = []
    for kind in kinds:
        inputs.append(tmp_path / f"{kind}.fits")
        inputs[-1].write_bytes(mutate(path, kind))
    for suffix in (".fits", ".parquet", ".csv"):
        out = tmp_path / f"cat{suffix}"
        result = run([*inputs, path, "-m", model, "-o", out, "-q"])
        assert result.exit_code == 0, result.output
        cat = read_catalog(out)
        mutated = cat[: len(cat) - len(read_spectra(path))]
        assert np.all(mutated["STATUS"] == "ok")
        assert all("left blank" in str(m) for m in mutated["MESSAGE"]), list(mutated["MESSAGE"])
        key = kinds[0].split("-")[1]
        column = {"PLUG_RA": "RA", "PLATEID": "PLATE"}.get(key, key)
        if column in ("RA",):
            assert np.all(np.isnan(np.asarray(mutated[column], float)))


# 2, 3 ---------------------------------------------------------------------- non-UTF-8 names and lists


def test_non_utf8_file_names_and_list_files(tmp_path, model):
    raw = os.path.join(os.fsencode(tmp_path), b"spec-\xff\xfe-\xe9.fits")
    with open(raw, "wb") as fh:
        fh.write(spec_file().read_bytes())
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"# made by a latin-1 shell\n" + raw + b"\n" + os.fsencode(spec_file()) + b"\n")
    for suffix in (".csv", ".parquet", ".fits"):
        out = tmp_path / f"c{suffix}"
        result = run([f"@{listing}", "-m", model, "-o", out, "-q"])
        assert result.exit_code == 0, result.output
        cat = read_catalog(out)
        assert len(cat) == 2 and "\\xff\\xfe" in str(cat["SOURCE"][0])
        assert cat["Z"][0] == cat["Z"][1]  # the same bytes under an odd name give the same redshift


# 4 ---------------------------------------------------------------------------- unwritable outputs


def test_unwritable_outputs_are_refused_before_any_work(tmp_path, model):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    cases = {
        "/proc/fnet-catalog.fits": "cannot write",
        str(blocker / "sub" / "cat.fits"): "is a file",
        str(tmp_path): "is a folder",
    }
    for output, message in cases.items():
        started = time.perf_counter()
        result = run([require_shared("sdss", "dr16"), "-m", model, "-o", output])
        assert result.exit_code == EXIT_USAGE and message in result.output, (output, result.output)
        assert "rows from" not in result.output and time.perf_counter() - started < 20


# 5, 13 --------------------------------------------------------------------- hostile or wrong metadata


def _package_with(tmp_path: Path, key: str, value: str) -> Path:
    meta = build_metadata(model_name="m", model_version="1", architecture="a", grid=PAPER_GRID,
                          normalisation={"scheme": "ivar_unit_norm", "clip": 10.0}, head=ZBINS, z_range=(0, 7))
    meta[key] = value
    path = make_tiny_model(tmp_path / "base.onnx", ZBINS)
    import onnx

    from fnet.runtime.onnx_wire import stamp_integrity

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    for k, v in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    out = tmp_path / "hostile.onnx"
    out.write_bytes(stamp_integrity(proto.SerializeToString()))
    return out


@pytest.mark.parametrize("key, value, message", [
    ("fnet.training", "[" * 100000 + "]" * 100000, "nested too deeply"),
    ("fnet.grid", json.dumps({"loglam_start": 3.5522, "loglam_step": 1e-4, "npix": 4000}), "graph input takes 4618"),
    ("fnet.grid", '{"loglam_start": 3.5522, "loglam_step": NaN, "npix": 4618}', "loglam_step"),
    ("fnet.grid", '{"loglam_start": Infinity, "loglam_step": 1e-4, "npix": 4618}', "loglam_start"),
    ("fnet.head", json.dumps({**ZBINS, "nbins": 128}), "the graph gives 64"),
    ("fnet.quality", json.dumps({"min_coverage": "0.5"}), "min_coverage"),
    ("fnet.z_range", "[7.0, 0.0]", "z_range"),
    ("fnet.z_range", "[NaN, 7.0]", "z_range"),
])
def test_wrong_model_metadata_is_refused_at_load_with_exit_2(tmp_path, key, value, message):
    bad = _package_with(tmp_path, key, value)
    with pytest.raises(ModelPackageError, match=message):
        load_model_package(bad)
    result = run([spec_file(), "-m", bad, "-o", tmp_path / "c.fits"])
    assert result.exit_code == EXIT_USAGE and key in result.output and "Traceback" not in result.output


def test_engine_sidecar_that_is_not_an_object_is_refused(tmp_path):
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 64)
    Path(str(engine) + ".json").write_text('"just a string"')
    result = run([spec_file(), "-m", engine, "-o", tmp_path / "c.fits"])
    assert result.exit_code == EXIT_USAGE and "must hold a JSON object" in result.output


def test_byte_flipped_model_copies_are_refused(tmp_path, model):
    data = bytearray(default_model_path().read_bytes())
    rng = np.random.default_rng(1)
    for k in range(13):
        flipped = bytearray(data)
        flipped[int(rng.integers(0, len(data)))] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / f"flip{k}.onnx"
        path.write_bytes(bytes(flipped))
        with pytest.raises(ModelPackageError):
            load_model_package(path)


def test_dev_zero_is_not_a_model_file(tmp_path):
    result = run([spec_file(), "-m", "/dev/zero", "-o", tmp_path / "c.fits"])
    assert result.exit_code == EXIT_USAGE and "not a regular file" in result.output


# 6 ------------------------------------------------------------------------------------------ FIFOs


def test_fifos_given_or_found_in_a_folder_fail_without_hanging(tmp_path, model):
    folder = tmp_path / "night"
    folder.mkdir()
    (folder / "spec-good.fits").write_bytes(spec_file().read_bytes())
    os.mkfifo(folder / "pipe.fits")
    out = tmp_path / "c.csv"
    code = ("import sys; from fnet.cli import run_command; sys.argv = ['fnet-run'] + sys.argv[1:]; run_command()")
    proc = subprocess.run([sys.executable, "-c", code, str(folder), str(folder / "pipe.fits"), "-m", str(model),
                           "-o", str(out), "-q"], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    cat = read_catalog(out)
    assert list(cat["STATUS"]) == ["failed", "ok", "failed"]  # folder order: pipe.fits, spec-good.fits
    assert all("FIFO" in str(m) for m in cat["MESSAGE"][[0, 2]])


# 7 -------------------------------------------------------------------------------- long zero tails


def test_a_long_tail_after_the_last_hdu_is_never_read(tmp_path):
    src = require_shared("desi", "coadd-main-dark-9144.fits")
    sparse = tmp_path / "tail.fits"
    with open(sparse, "wb") as fh:
        fh.write(src.read_bytes())
        fh.truncate(src.stat().st_size + (1 << 30))  # 1 GiB of zeros, sparse on disk
    packed = tmp_path / "tail.fits.gz"
    with gzip.open(packed, "wb", compresslevel=1) as fh:
        fh.write(src.read_bytes())
        fh.write(bytes(1 << 26))
    reference = read_spectra(src)
    for path in (sparse, packed):
        tracemalloc.start()
        spectra = read_spectra(path)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert peak < 200e6, peak  # the tail (1 GiB, 64 MiB) never lands in memory
        assert [s.flux.tolist() for s in spectra] == [s.flux.tolist() for s in reference]
        assert any("after the last HDU ignored" in n for n in spectra[0].notes)


# 8, 12 (constant flux) --------------------------------------------------------------- absurd values


def test_absurd_values_never_give_an_ok_row_with_a_non_finite_z(tmp_path, model):
    inputs = []
    for kind in ("ivar-1e300", "flux-constant-1e30", "flux-nan", "flux-inf-half"):
        inputs.append(tmp_path / f"{kind}.fits")
        inputs[-1].write_bytes(mutate(spec_file(), kind))
    out = tmp_path / "c.fits"
    run([*inputs, "-m", model, "-o", out, "-q"])
    cat = read_catalog(out)
    by_kind = dict(zip([p.stem for p in inputs], cat))
    huge = by_kind["ivar-1e300"]
    assert huge["STATUS"] == "ok" and np.isfinite(huge["Z"]) and np.isfinite(huge["Z_ERR"])
    assert huge["ZWARN"] & ZWarn.IMPLAUSIBLE_DATA
    assert by_kind["flux-constant-1e30"]["STATUS"] == "failed" and "same value" in by_kind["flux-constant-1e30"]["MESSAGE"]
    assert by_kind["flux-nan"]["STATUS"] == "failed"
    for row in cat:
        assert row["STATUS"] != "ok" or (np.isfinite(row["Z"]) and np.isfinite(row["Z_ERR"]))


# 9 ------------------------------------------------------------------------- one bad spectrum, one row


def test_a_spectrum_preprocessing_cannot_handle_fails_alone(tmp_path, model, monkeypatch):
    import fnet.runtime.pipeline as pipeline

    real = pipeline.prepare_spectra

    def picky(spectra, grid, normalisation):
        if any(s.meta.get("FIBERID") == 26 for s in spectra):
            raise IndexError("index 0 is out of bounds")
        return real(spectra, grid, normalisation)

    monkeypatch.setattr(pipeline, "prepare_spectra", picky)
    files = sorted(require_shared("sdss", "dr16").glob("spec-3655-*.fits"))[:12]
    out = tmp_path / "c.fits"
    run([*files, "-m", model, "-o", out, "-b", "64", "-q"])
    cat = read_catalog(out)
    bad = np.asarray(cat["FIBERID"] == 26)
    assert bad.sum() == 1 and cat["STATUS"][bad][0] == "failed" and "preprocessing failed" in cat["MESSAGE"][bad][0]
    assert np.all(cat["STATUS"][~bad] == "ok")


# 10, 11 --------------------------------------------------------------------- outputs and literal names


def test_the_output_never_overwrites_an_input(tmp_path, model):
    spec = tmp_path / "s.fits"
    spec.write_bytes(spec_file().read_bytes())
    before = spec.read_bytes()
    assert run([spec, "-m", model, "-o", spec]).exit_code == EXIT_USAGE
    other = tmp_path / "spec-X.fits"
    other.write_bytes(before)
    result = run([tmp_path, "-m", model, "-o", other])
    assert result.exit_code == EXIT_USAGE and "not an fnet catalog" in result.output
    assert spec.read_bytes() == before and other.read_bytes() == before
    out = tmp_path / "cat.fits"
    assert run([tmp_path, "-m", model, "-o", out, "-q"]).exit_code == 0
    assert run([tmp_path, "-m", model, "-o", out, "-q"]).exit_code == 0  # its own catalog is replaced
    assert len(read_catalog(out)) == 2


def test_file_names_with_glob_characters_are_literal(tmp_path, model):
    (tmp_path / "bracket[1].fits").write_bytes(spec_file().read_bytes())
    (tmp_path / "bracket1.fits").write_bytes(require_shared("sdss", "dr16", "spec-3655-55240-0002.fits").read_bytes())
    out = tmp_path / "c.csv"
    assert run([tmp_path / "bracket[1].fits", "-m", model, "-o", out, "-q"]).exit_code == 0
    cat = read_catalog(out)
    assert list(cat["SOURCE"]) == [str(tmp_path / "bracket[1].fits")]
    assert run([tmp_path / "bracket[0-9].fits", "-m", model, "-o", out, "-q"]).exit_code == 0  # no such file: a glob
    assert list(read_catalog(out)["SOURCE"]) == [str(tmp_path / "bracket1.fits")]


# 12 -------------------------------------------------------------------- refusing to guess the layout


def test_reordered_hdus_still_read_the_named_coadd():
    src = require_shared("sdss", "formats", "spec-7338-56660-0733.fits")  # COADD, SPALL, SPZLINE, 14 exposures
    blocks = fuzz._blocks(src.read_bytes())
    swapped = b"".join([blocks[0], blocks[5], blocks[4], blocks[3], blocks[2], blocks[1], *blocks[6:]])
    [a], [b] = read_spectra(src), _read_bytes(swapped)
    assert np.array_equal(a.flux, b.flux) and len(b.flux) == 4597


def _read_bytes(data: bytes, name: str = "mutant.fits"):
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / name
        path.write_bytes(data)
        return read_spectra(path)


def test_per_exposure_tables_are_never_taken_for_the_coadd():
    src = require_shared("sdss", "formats", "spec-7338-56660-0733.fits")
    blocks = fuzz._blocks(src.read_bytes())
    without_coadd = b"".join([blocks[0], *blocks[4:]])  # only exposures left (named B2-..., R2-...)
    with pytest.raises(SpectrumReadError, match="unsupported layout"):
        _read_bytes(without_coadd)
    twice = b"".join([blocks[0], blocks[1], blocks[1], *blocks[2:]])
    with pytest.raises(SpectrumReadError, match="ambiguous"):
        _read_bytes(twice)


def test_a_table_of_vector_rows_gives_one_row_per_spectrum(tmp_path):
    [s] = read_spectra(spec_file())
    n = len(s.flux)
    cols = [fits.Column("flux", f"{n}E", array=np.stack([s.flux, 2 * s.flux, 3 * s.flux])),
            fits.Column("loglam", f"{n}E", array=np.stack([s.loglam] * 3)),
            fits.Column("ivar", f"{n}E", array=np.stack([s.ivar] * 3))]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(tmp_path / "v.fits")
    spectra = read_spectra(tmp_path / "v.fits")
    assert [x.row for x in spectra] == [0, 1, 2]
    assert np.allclose(spectra[2].flux, 3 * s.flux.astype(np.float32)) and "vector rows" in spectra[1].notes[0]


def test_corrupted_gzip_copies_are_refused_by_their_checksum(tmp_path):
    packed = bytearray(gzip.compress(spec_file().read_bytes()))
    rng = np.random.default_rng(3)
    for k in range(20):
        bad = bytearray(packed)
        bad[int(rng.integers(20, len(bad) - 8))] ^= 1 << int(rng.integers(0, 8))
        with pytest.raises(SpectrumReadError, match="corrupt gzip|truncated gzip"):
            _read_bytes(bytes(bad), "x.fits.gz")


def test_header_sizes_that_disagree_with_the_data_are_refused(tmp_path):
    plate = require_shared("sdss", "formats", "spPlate-4055-55359-0020.fits")
    with pytest.raises(SpectrumReadError, match="NAXISn disagree"):
        _read_bytes(mutate(plate, "naxis1-1"))
    # a full spPlate has an ivar image of the same shape: a wrong NAXIS1 in one of them is caught
    with fits.open(plate) as hdul:
        flux = hdul[0].data
        header = hdul[0].header
    ivar = fits.ImageHDU(np.ones((flux.shape[0], flux.shape[1] + 1), np.float32))
    fits.HDUList([fits.PrimaryHDU(flux, header), ivar]).writeto(tmp_path / "p.fits")
    with pytest.raises(SpectrumReadError, match="geometry disagrees"):
        read_spectra(tmp_path / "p.fits")


# 14 ------------------------------------------------------------------------------------ long messages


def test_a_3000_hdu_file_does_not_widen_every_message(tmp_path, model):
    many = tmp_path / "many.fits"
    many.write_bytes(mutate(require_shared("sdss", "formats", "spec-0266-51602-0013.fits"), "3000-extra-hdus"))
    bad = tmp_path / "cat-like.fits"
    hdus = [fits.PrimaryHDU()] + [fits.BinTableHDU.from_columns([fits.Column(f"C{k}", "J", array=[1])], name=f"T{k}")
                                  for k in range(400)]
    fits.HDUList(hdus).writeto(bad)
    out = tmp_path / "c.fits"
    run([many, bad, spec_file(), "-m", model, "-o", out, "-q"])
    cat = read_catalog(out)
    assert max(len(str(m)) for m in cat["MESSAGE"]) <= MAX_MESSAGE
    assert "more characters" in str(cat["MESSAGE"][1])
    assert out.stat().st_size < 200_000


# 15 --------------------------------------------------------------------------------------- exit codes


def test_a_crash_exits_3_and_keeps_the_progress(tmp_path, model, monkeypatch):
    import fnet.runtime.pipeline as pipeline

    def broken(self, spectra):
        raise RuntimeError("simulated bug")

    monkeypatch.setattr(pipeline.Predictor, "rows", broken)
    out = tmp_path / "c.fits"
    result = CliRunner().invoke(run_command, [str(spec_file()), "-m", str(model), "-o", str(out)])
    assert result.exit_code == EXIT_NO_CATALOG and "internal error" in result.output
    assert not out.exists()


def test_a_catalog_that_cannot_be_written_exits_3_then_resume_writes_it(tmp_path, model, monkeypatch):
    import errno

    import fnet.runtime.catalog as catalog

    real = catalog.write_catalog

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(catalog, "write_catalog", full_disk)
    out = tmp_path / "c.fits"
    files = sorted(require_shared("sdss", "dr16").glob("spec-9367-*.fits"))
    result = run([*files, "-m", model, "-o", out, "-q"])
    assert result.exit_code == EXIT_NO_CATALOG and "No space left" in result.output and "--resume" in result.output
    assert journal_paths(out)[0].exists() and not out.exists()
    monkeypatch.setattr(catalog, "write_catalog", real)
    result = run([*files, "-m", model, "-o", out, "--resume"])
    assert result.exit_code == 0 and "10 of 10 inputs already done" in result.output
    assert len(read_catalog(out)) == 10 and not journal_paths(out)[0].exists()


# 16 -------------------------------------------------------------------------------------- determinism


def test_z_is_bit_identical_for_every_batch_size(tmp_path):
    files = sorted(require_shared("sdss", "dr16").glob("spec-*.fits"))
    zs = []
    for batch in (1, 7, 64):
        out = tmp_path / f"b{batch}.fits"
        run([*files, "-o", out, "-b", batch, "-q"])  # the embedded model, default threads
        zs.append(np.asarray(read_catalog(out)["Z"]))
    assert np.array_equal(zs[0], zs[1]) and np.array_equal(zs[0], zs[2])


# 17 ---------------------------------------------------------------------------------- the small ones


def test_folder_search_is_case_insensitive_and_skips_earlier_catalogs(tmp_path, model):
    (tmp_path / "UPPER.FITS").write_bytes(spec_file().read_bytes())
    (tmp_path / "lower.fits.GZ").write_bytes(gzip.compress(spec_file().read_bytes()))
    first = tmp_path / "first.fits"
    assert run([tmp_path, "-m", model, "-o", first, "-q"]).exit_code == 0
    second = tmp_path / "second.fits"
    result = run([tmp_path, "-m", model, "-o", second, "-q"])
    assert result.exit_code == 0, result.output
    cat = read_catalog(second)
    assert [Path(s).name for s in cat["SOURCE"]] == ["UPPER.FITS", "lower.fits.GZ"]  # first.fits skipped
    assert cat.meta["NSKIP"] == 1
    explicit = run([first, "-m", model, "-o", tmp_path / "third.csv", "-q"])  # named by the user: a failed row
    assert explicit.exit_code == 1


def test_two_pixels_spanning_the_grid_do_not_count_as_coverage(tmp_path, model):
    lam = np.array([3.56, 4.0])
    cols = [fits.Column("flux", "E", array=[1.0, 2.0]), fits.Column("loglam", "E", array=lam),
            fits.Column("ivar", "E", array=[1.0, 1.0])]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(tmp_path / "two.fits")
    out = tmp_path / "c.csv"
    run([tmp_path / "two.fits", "-m", model, "-o", out, "-q"])
    row = read_catalog(out)[0]
    assert row["STATUS"] == "failed" and "usable pixels" in row["MESSAGE"] and row["COVERAGE"] < 0.05


@pytest.mark.parametrize("transform, words", [
    (lambda ll: 10.0**ll, "Angstrom, not log10"),
    (lambda ll: np.log(10.0**ll), "natural log"),
    (lambda ll: 10.0**ll / 10, "nanometres"),
])
def test_wavelengths_in_other_units_are_named(tmp_path, transform, words):
    [s] = read_spectra(spec_file())
    cols = [fits.Column("flux", "E", array=s.flux), fits.Column("loglam", "D", array=transform(s.loglam)),
            fits.Column("ivar", "E", array=s.ivar)]
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="COADD")]).writeto(tmp_path / "u.fits")
    with pytest.raises(SpectrumReadError, match=words):
        read_spectra(tmp_path / "u.fits")


def test_an_image_where_a_table_should_be_gives_a_plain_message(tmp_path):
    fits.HDUList([fits.PrimaryHDU(), fits.ImageHDU(np.zeros((3, 3)), name="COADD")]).writeto(tmp_path / "img.fits")
    with pytest.raises(SpectrumReadError) as err:
        read_spectra(tmp_path / "img.fits")
    assert "unsupported layout" in err.value.problem and "object has no attribute" not in err.value.problem


# resume after SIGKILL -------------------------------------------------------------------------------


def test_resume_after_sigkill_gives_exactly_the_clean_catalog(tmp_path, model):
    files = sorted(require_shared("sdss", "dr16").glob("spec-*.fits"))
    listing = tmp_path / "inputs.txt"
    listing.write_text("\n".join(str(f) for f in files * 4) + "\n")  # 320 inputs
    clean, killed = tmp_path / "clean.fits", tmp_path / "killed.fits"
    assert run([f"@{listing}", "-m", model, "-o", clean, "-b", "8", "-q"]).exit_code == 0
    code = "import sys; from fnet.cli import run_command; sys.argv = ['fnet-run'] + sys.argv[1:]; run_command()"
    args = [sys.executable, "-c", code, f"@{listing}", "-m", str(model), "-o", str(killed), "-b", "8", "-q",
            "--read-workers", "1"]
    journal = journal_paths(killed)[0]
    proc = subprocess.Popen(args, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and (not journal.exists() or journal.read_text().count("\n") < 40):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = journal.read_text().count("\n") - 1
    assert 0 < done < 320 and not killed.exists()
    result = run([f"@{listing}", "-m", model, "-o", killed, "-b", "64", "--resume", "-q"])
    assert result.exit_code == 0
    a, b = read_catalog(clean), read_catalog(killed)
    assert len(a) == len(b) == 320 and list(a["SOURCE"]) == list(b["SOURCE"])
    assert np.array_equal(np.asarray(a["Z"]), np.asarray(b["Z"]))
    assert b.meta["NRESUMED"] >= done
    assert not journal.exists()


def test_resume_refuses_a_journal_of_another_run(tmp_path, model):
    out = tmp_path / "c.fits"
    journal = journal_paths(out)[0]
    journal.write_text(json.dumps({"fnet_run_journal": {"journal": JOURNAL_VERSION, "inputs_sha256": "0" * 64}}) + "\n")
    result = run([spec_file(), "-m", model, "-o", out, "--resume"])
    assert result.exit_code == EXIT_USAGE and "different run" in result.output


# the fuzz contract, a fast deterministic subset ------------------------------------------------------


def test_fuzz_corpus_subset_keeps_the_catalog_contract(tmp_path, model):
    from fnet.runtime.backends import open_backend
    from fnet.runtime.pipeline import run_catalog

    root = require_shared()
    sources = [root / "sdss/dr16/spec-3655-55240-0002.fits", root / "sdss/formats/spPlate-4055-55359-0020.fits",
               root / "sdss/formats/spSpec-51993-0542-631.fit", root / "desi/coadd-main-dark-9144.fits",
               root / "lamost/dr1/spec-55862-B6212_sp06-003.fits", root / "sdss/mixed/sdss2.fits"]
    mutants = fuzz.make_corpus(sources, tmp_path / "corpus", seed=7)
    assert len(mutants) > 150
    listing = fuzz.write_list(mutants, tmp_path / "corpus.txt")
    package = load_model_package(model)
    catalog, summary = run_catalog([f"@{listing}"], package, open_backend(package, "cpu"), batch_size=16)
    assert fuzz.check_contract(mutants, catalog.rows) == []
    kinds = {m.kind for m in mutants}
    assert {"gzip-corrupt", "hdus-reordered", "non-utf8-name", "fifo", "ivar-1e300"} <= kinds
    assert 0 < summary.n_failed < len(catalog)


def test_a_temporary_file_left_by_a_killed_write_is_cleaned_up(tmp_path, model):
    out = tmp_path / "cat.fits"
    stale = tmp_path / ".cat.fits.x1y2z3.part"
    stale.write_bytes(b"")  # what a SIGKILL during the final write leaves behind
    assert run([spec_file(), "-m", model, "-o", out, "-q"]).exit_code == 0
    assert not stale.exists() and out.exists()


def test_a_file_two_formats_claim_is_refused_as_ambiguous(tmp_path):
    spec = fuzz._blocks(spec_file().read_bytes())
    desi = fuzz._blocks(require_shared("desi", "coadd-main-dark-9144.fits").read_bytes())
    with pytest.raises(SpectrumReadError, match="ambiguous layout"):
        _read_bytes(b"".join([spec[0], spec[1], *desi[1:]]))
