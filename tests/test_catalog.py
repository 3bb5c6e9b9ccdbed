"""The catalog (fnet.runtime.catalog): one schema, typed rows, streaming writers that agree with each other."""

from __future__ import annotations

import numpy as np
import pytest
from astropy.io import fits

from fnet.runtime.catalog import (MAX_MESSAGE, Catalog, PdfSource, catalog_columns, check_output_path,
                                  is_fnet_catalog, make_row, read_catalog, write_catalog)


def _rows(n: int):
    rng = np.random.default_rng(0)
    for i in range(n):
        yield make_row(dict(SOURCE=f"/data/spec-{i:05d}.fits", ROW=0, FORMAT="sdss-spec", PLATE=3655, MJD=55240,
                            FIBERID=i % 1000 + 1, RA=float(rng.uniform(0, 360)), DEC=float(rng.uniform(-90, 90)),
                            Z=float(rng.uniform(0, 7)), Z_ERR=0.01, ZWARN=int(i % 3), SN_MEDIAN=5.0,
                            COVERAGE=0.9, STATUS="ok" if i % 7 else "failed", MESSAGE="x" * (i % 50)))


@pytest.mark.parametrize("suffix", [".fits", ".fits.gz", ".csv", ".parquet"])
def test_every_format_round_trips_more_rows_than_one_writer_chunk(tmp_path, suffix):
    n = 20000  # > the writers' 8192-row chunk
    path = write_catalog(tmp_path / f"c{suffix}", lambda: _rows(n), {"FNETVER": "test", "MODEL": "m"})
    table = read_catalog(path)
    expected = list(_rows(n))
    assert len(table) == n and list(table.colnames) == catalog_columns()  # no CLASSES card: no class columns
    for i in (0, 8191, 8192, n - 1):
        for name in ("SOURCE", "FIBERID", "Z", "ZWARN", "STATUS", "MESSAGE"):
            got, want = table[name][i], expected[i][name]
            if isinstance(want, float):
                assert float(got) == pytest.approx(want, rel=1e-12)
            else:
                assert str(got) == str(want) if isinstance(want, str) else int(got) == want
    assert table.meta["MODEL"] == "m" and is_fnet_catalog(path)


def test_zpdf_hdus_are_streamed_in_row_order(tmp_path):
    centres = np.linspace(0.0, 7.0, 16)
    pdf = np.random.default_rng(1).random((10000, 16)).astype(np.float32)
    chunks = lambda: iter([pdf[:3000], pdf[3000:]])  # noqa: E731
    path = write_catalog(tmp_path / "c.fits", lambda: _rows(10000), {"FNETVER": "t"}, PdfSource(centres, chunks))
    with fits.open(path) as hdul:
        assert np.array_equal(hdul["ZPDF"].data, pdf) and np.array_equal(hdul["ZPDF_Z"].data, centres)
        assert hdul["FNET"].header["ZWB7"] == "IMPLAUSIBLE_DATA"


def test_rows_are_typed_and_messages_capped():
    row = make_row(dict(SOURCE=b"/a/\xff.fits", PLATE="12", MJD=5.0, FIBERID=3.5, TARGETID=2**64, RA="east",
                        SN_MEDIAN=1e300, MESSAGE="m" * 5000, STATUS="ok"))
    assert row["PLATE"] == 12 and row["MJD"] == 5 and row["FIBERID"] == -1 and row["TARGETID"] == -1
    assert np.isnan(row["RA"]) and row["SN_MEDIAN"] == float("inf") and "\\xff" in row["SOURCE"]
    assert len(row["MESSAGE"]) == MAX_MESSAGE and "left blank" in row["MESSAGE"]
    with pytest.raises(KeyError, match="unknown catalog columns"):
        make_row({"REDSHIFT": 1.0})


def test_an_in_memory_catalog_writes_through_the_same_writers(tmp_path):
    catalog = Catalog()
    catalog.add(SOURCE="a.fits", ROW=0, Z=1.25, STATUS="ok")
    catalog.header["FNETVER"] = "t"
    assert read_catalog(catalog.write(tmp_path / "c.csv"))["Z"][0] == 1.25


def test_the_output_check_replaces_only_fnet_catalogs(tmp_path):
    other = tmp_path / "notes.csv"
    other.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="not an fnet catalog"):
        check_output_path(other)
    ours = write_catalog(tmp_path / "ours.csv", lambda: _rows(2), {"FNETVER": "t"})
    assert check_output_path(ours) == ".csv"
    with pytest.raises(ValueError, match="unknown catalog format"):
        check_output_path(tmp_path / "c.txt")
