"""Failure isolation and edge cases of the runtime: extreme pixels, failing batches, inputs, paths, ZWARN."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import require_shared
from fnet.runtime.backends import open_backend
from fnet.runtime.catalog import Catalog, read_catalog
from fnet.runtime.errors import ModelPackageError
from fnet.runtime.grid import Grid
from fnet.runtime.model_package import DEFAULT_QUALITY, ModelPackage, build_metadata
from fnet.runtime.pipeline import expand_inputs, run_catalog
from fnet.runtime.preprocess import prepare_arrays
from fnet.runtime.zwarn import ZWarn, compute_zwarn
from tiny_models import make_tiny_model

GRID = Grid(3.5522, 1e-4, 4618)
NORM = {"scheme": "ivar_unit_norm", "clip": 10.0}
REGRESSION = {"kind": "regression", "output": "z_scaled", "z_min": 0.0, "z_max": 7.0}


def test_an_extreme_pixel_only_affects_its_own_spectrum():
    rng = np.random.default_rng(0)
    lam = 3.5523 + 1e-4 * np.arange(4600)
    flux = rng.normal(5, 1, (16, lam.size))
    ivar, good = np.ones_like(flux), np.ones(flux.shape, bool)
    clean = prepare_arrays(lam, flux, ivar, good, GRID, NORM)
    ivar2, flux2 = ivar.copy(), flux.copy()
    ivar2[3, 2000] = 1e15  # e.g. 1/sigma^2 of a near-zero DR7 error
    flux2[7, 100] = 1e22
    dirty = prepare_arrays(lam, flux2, ivar2, good, GRID, NORM)
    others = [i for i in range(16) if i not in (3, 7)]
    assert np.allclose(clean.x[others], dirty.x[others])
    ragged = prepare_arrays([lam] * 16, list(flux2), list(ivar2), list(good), GRID, NORM)
    assert np.allclose(ragged.x[others], clean.x[others])


class Choosy:
    """A backend that runs out of memory on batches of more than two and chokes on one particular spectrum."""

    def __init__(self, backend, poison: np.ndarray):
        self.backend, self.poison, self.name, self.calls = backend, poison, "choosy", 0

    def run(self, x):
        self.calls += 1
        if len(x) > 2:
            raise MemoryError("simulated out-of-memory")
        if any(np.array_equal(row, self.poison) for row in x):
            raise ValueError("simulated kernel failure")
        return self.backend.run(x)

    def describe(self):
        return self.name


def test_a_failing_batch_is_split_until_only_the_failing_spectrum_fails(tmp_path):
    from fnet.runtime.model_package import load_model_package
    from fnet.runtime.preprocess import prepare_spectra
    from fnet.runtime.readers import read_spectra

    files = sorted(require_shared("sdss", "dr16").glob("spec-3655-*.fits"))[:12]
    package = load_model_package(make_tiny_model(tmp_path / "m.onnx", REGRESSION))
    cpu = open_backend(package, "cpu")
    poison = prepare_spectra(read_spectra(files[5]), package.grid, package.normalisation).x[0]
    catalog, summary = run_catalog([str(f) for f in files], package, Choosy(cpu, poison), batch_size=8)
    reference, _ = run_catalog([str(f) for f in files], package, cpu, batch_size=8)
    status = [r["STATUS"] for r in catalog.rows]
    assert status == ["ok"] * 5 + ["failed"] + ["ok"] * 6
    assert "inference failed: ValueError: simulated kernel failure" in catalog.rows[5]["MESSAGE"]
    assert catalog.rows[5]["ZWARN"] & ZWarn.BAD_INPUT
    ok = [i for i in range(12) if i != 5]
    assert [catalog.rows[i]["Z"] for i in ok] == [reference.rows[i]["Z"] for i in ok]  # same numbers, bit for bit
    assert summary.n_failed == 1 and [r["SOURCE"] for r in catalog.rows] == [str(f) for f in files]


def test_list_files_resolve_relative_paths_and_refuse_loops(tmp_path):
    spectra = tmp_path / "lists" / "data"
    spectra.mkdir(parents=True)
    (spectra / "spec-1.fits").write_bytes(b"")
    (tmp_path / "lists" / "a.txt").write_text("data/spec-1.fits\n@b.txt\n")
    (tmp_path / "lists" / "b.txt").write_text("@a.txt\n")
    (tmp_path / "lists" / "empty.txt").write_text("# nothing\n")
    items = expand_inputs([f"@{tmp_path / 'lists' / 'a.txt'}", f"@{tmp_path / 'lists' / 'empty.txt'}"])
    assert items[0].path == str(spectra / "spec-1.fits") and items[0].problem is None
    assert "includes itself" in items[1].problem
    assert "names no input" in items[2].problem


def test_the_output_catalog_is_not_read_back_as_an_input(tmp_path):
    (tmp_path / "spec-1.fits").write_bytes(b"")
    out = tmp_path / "catalog.fits"
    out.write_bytes(b"")
    paths = [i.path for i in expand_inputs([str(tmp_path)], exclude=[out])]
    assert paths == [str(tmp_path / "spec-1.fits")]


def test_non_ascii_paths_survive_fits_csv_and_parquet(tmp_path):
    catalog = Catalog()
    catalog.add(SOURCE="/data/Ångström/spec-0001.fits", STATUS="ok", Z=2.5, ROW=0)
    catalog.header["MODEL"] = "tiny"
    for suffix in (".fits", ".csv", ".parquet"):
        table = read_catalog(catalog.write(tmp_path / f"c{suffix}"))
        assert "ngstr" in str(table["SOURCE"][0]) and float(table["Z"][0]) == 2.5


def test_zwarn_flags_redshifts_below_and_above_the_training_range():
    z = np.array([-0.3, 0.0, 3.0, 6.9999, 7.5, np.nan])
    zwarn = compute_zwarn(coverage=np.ones(6), sn_median=np.full(6, 5.0), ivar_known=np.ones(6, bool), z=z,
                          z_err=np.full(6, np.nan), z_range=(0.0, 7.0), quality=DEFAULT_QUALITY)
    assert list((zwarn & ZWarn.Z_OUT_OF_RANGE) > 0) == [True, False, False, True, True, True]


@pytest.mark.parametrize("key, value, message", [
    ("fnet.head", json.dumps({"kind": "zbins", "z_min": 0, "z_max": 7}), "nbins"),
    ("fnet.normalisation", json.dumps({"scheme": "median"}), "scheme"),
    ("fnet.grid", json.dumps({"loglam_start": 3.5, "loglam_step": 1e-4, "npix": 0}), "npix > 0"),
    ("fnet.grid", "{not json", "not valid JSON"),
])
def test_malformed_metadata_is_refused_naming_the_file_and_key(key, value, message):
    meta = build_metadata(model_name="m", model_version="1", architecture="a", grid=GRID, normalisation=NORM,
                          head=REGRESSION, z_range=(0, 7))
    meta[key] = value
    with pytest.raises(ModelPackageError, match=message) as info:
        ModelPackage.from_metadata("/models/broken.onnx", meta)
    assert "/models/broken.onnx" in str(info.value)
