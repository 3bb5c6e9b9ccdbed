"""Sharded training-set builder on the real DR16 (plate 3655) and DR14 Pk1D sets."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table

from conftest import PROJECT_ROOT, require_shared
from fnet.runtime.grid import Grid
from fnet.runtime.preprocess import prepare_spectra
from fnet.runtime.readers import read_spectra
from fnet.dataset import DatasetBuildError, build_dataset, load_manifest, open_shards

GRID = {"loglam_start": 3.5522, "loglam_step": 1e-4, "npix": 4618}
NORM = {"scheme": "ivar_unit_norm", "clip": 10.0}
ARRAYS = ("x", "z", "ids", "coverage", "sn_median", "split", "catalog_row")


def dr16_catalog():
    return require_shared("sdss", "dr16", "cat_for_clustering_plate3655.fits.gz")


def build(catalog, root, out, **kw):
    kw = {"grid": GRID, "normalisation": NORM, "shard_size": 16, "processes": 1, "progress": False, **kw}
    return build_dataset(catalog, root, out, **kw)


def read_failures(out):
    with open(out / "failures.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def all_rows(out, split=None):
    """Concatenate every array over the shards (x as float32)."""
    shards = list(open_shards(out, split))
    return {"x": np.concatenate([np.asarray(s.x, np.float32) for s in shards]),
            **{k: np.concatenate([getattr(s, k) for s in shards]) for k in ("z", "ids", "split", "coverage")}}


def shard_files(out):
    """{shard/file: bytes} for every array file, for bit-for-bit comparisons."""
    return {f"{d.name}/{f}.npy": (d / f"{f}.npy").read_bytes()
            for d in sorted(out.glob("shard-*")) for f in ARRAYS}


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
    """The DR16 plate-3655 catalog built once from the flat folder, 16 rows per shard, one process."""
    out = tmp_path_factory.mktemp("flat")
    manifest = build(dr16_catalog(), require_shared("sdss", "dr16"), out)
    return out, manifest


def test_counts_failures_and_layout(flat):
    out, manifest = flat
    assert manifest["n_built"] == 67 and manifest["n_failed"] == 12
    assert manifest["failures"] == {"file not found": 12}
    failures = read_failures(out)
    assert len(failures) == 12
    assert {f["reason"] for f in failures} == {"file not found"} and {f["stage"] for f in failures} == {"build"}
    assert len(manifest["shards"]) >= 5  # 79 rows at 16 per shard, cut per split
    assert load_manifest(out) == manifest
    for entry in manifest["shards"]:
        meta = json.loads((out / entry["name"] / "meta.json").read_text())
        assert meta["count"] == entry["count"] and meta["grid"] == GRID and meta["normalisation"] == NORM
        assert meta["z_column"] == "Z" and meta["catalog"].endswith("cat_for_clustering_plate3655.fits.gz")
    shards = list(open_shards(out))
    assert sum(s.x.shape[0] for s in shards) == 67
    for s in shards:
        assert isinstance(s.x, np.memmap) and s.x.dtype == np.float16 and s.x.shape[1] == GRID["npix"]
        assert s.z.dtype == np.float32 and s.ids.dtype == np.int64 and s.ids.shape == (s.x.shape[0], 3)
        assert s.split.dtype == np.uint8 and len(set(s.split.tolist())) == 1  # one split per shard
    # every catalog row is either built or listed in failures.csv, never both
    built = {tuple(r) for r in all_rows(out)["ids"].tolist()}
    failed = {(int(f["plate"]), int(f["mjd"]), int(f["fiberid"])) for f in failures}
    cat = Table.read(dr16_catalog())
    assert built | failed == {(int(r["PLATE"]), int(r["MJD"]), int(r["FIBERID"])) for r in cat}
    assert not built & failed


def test_labels_and_inputs_match_catalog_and_preprocess(flat):
    out, _ = flat
    rows = all_rows(out)
    cat = Table.read(dr16_catalog())
    z_of = {(int(r["PLATE"]), int(r["MJD"]), int(r["FIBERID"])): float(r["Z"]) for r in cat}
    np.testing.assert_array_equal(rows["z"], np.array([z_of[tuple(i)] for i in rows["ids"].tolist()], np.float32))
    root = require_shared("sdss", "dr16")
    spectra = [read_spectra(root / f"spec-{p:04d}-{m:05d}-{f:04d}.fits")[0] for p, m, f in rows["ids"].tolist()]
    prepared = prepare_spectra(spectra, Grid.from_dict(GRID), NORM)
    np.testing.assert_allclose(rows["x"], prepared.x.astype(np.float16).astype(np.float32), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(rows["coverage"], prepared.coverage, rtol=1e-6)


def test_rerun_skips_complete_shards_and_rebuilds_broken_ones(tmp_path):
    out = tmp_path / "ds"
    first = build(dr16_catalog(), require_shared("sdss", "dr16"), out)
    n = len(first["shards"])
    mtimes = {p: p.stat().st_mtime_ns for p in out.glob("shard-*/x.npy")}
    second = build(dr16_catalog(), require_shared("sdss", "dr16"), out)
    assert second["run"]["shards_skipped"] == n and second["run"]["shards_built"] == 0
    assert {p: p.stat().st_mtime_ns for p in out.glob("shard-*/x.npy")} == mtimes
    assert second["n_built"] == 67 and len(read_failures(out)) == 12  # failures survive from the shards' meta
    (out / "shard-00001" / "meta.json").unlink()  # as if the process died mid-shard
    third = build(dr16_catalog(), require_shared("sdss", "dr16"), out)
    assert third["run"]["shards_built"] == 1 and third["run"]["shards_skipped"] == n - 1
    assert third["n_built"] == 67
    # a different grid changes every shard's plan: nothing stale is reused
    fourth = build(dr16_catalog(), require_shared("sdss", "dr16"), out, grid={**GRID, "npix": 4000})
    assert fourth["run"]["shards_built"] == len(fourth["shards"])
    assert all(s.x.shape[1] == 4000 for s in open_shards(out))


def test_two_processes_give_identical_shards(flat, tmp_path):
    out, manifest = flat
    par = build(dr16_catalog(), require_shared("sdss", "dr16"), tmp_path / "par", processes=2)
    assert par["run"]["processes"] == 2
    assert par["shards"] == manifest["shards"]
    assert shard_files(tmp_path / "par") == shard_files(out)
    assert (tmp_path / "par" / "failures.csv").read_text() == (out / "failures.csv").read_text()


def test_sdss_tree_layout(flat, tmp_path):
    out, _ = flat
    root = require_shared("sdss", "dr16")
    tree = tmp_path / "lite"
    (tree / "3655").mkdir(parents=True)
    for spec in root.glob("spec-3655-*.fits"):
        (tree / "3655" / spec.name).symlink_to(spec)
    manifest = build(dr16_catalog(), tree, tmp_path / "ds")
    assert manifest["n_built"] == 67 and manifest["failures"] == {"file not found": 12}
    assert shard_files(tmp_path / "ds") == shard_files(out)


def test_paper_split(tmp_path):
    cat = Table.read(dr16_catalog())
    fake_dr12q = tmp_path / "DR12Q.fits"
    cat[:40]["PLATE", "MJD", "FIBERID", "Z"].write(fake_dr12q)
    manifest = build(dr16_catalog(), require_shared("sdss", "dr16"), tmp_path / "ds", split="paper",
                     dr12q_catalog=fake_dr12q)
    in12 = {(int(r["PLATE"]), int(r["MJD"]), int(r["FIBERID"])) for r in cat[:40]}
    rows = all_rows(tmp_path / "ds")
    for ids, code in zip(rows["ids"].tolist(), rows["split"].tolist()):
        assert (code in (0, 1)) == (tuple(ids) in in12)
    counts = manifest["split"]["counts"]
    assert counts["train"] + counts["val"] == int(np.isin(rows["split"], (0, 1)).sum()) > 0
    assert counts["test"] == int((rows["split"] == 2).sum()) > 0
    assert counts["val"] > 0 and manifest["split"]["dr12q_rows_matched"] == 40
    test_only = list(open_shards(tmp_path / "ds", "test"))
    assert test_only and all((s.split == 2).all() for s in test_only)


def test_dr14_catalog_uses_z_vi(tmp_path):
    root = require_shared("sdss", "dr14-pk1d")
    manifest = build(root / "DRQ_Pk1D.fits", root, tmp_path / "ds")
    assert manifest["z_column"] == "Z_VI" and manifest["n_built"] == 8 and manifest["n_failed"] == 0
    rows = all_rows(tmp_path / "ds")
    drq = fits.getdata(root / "DRQ_Pk1D.fits", 1)  # not Table.read: its non-FITS units only make warnings
    zvi = {(int(p), int(m), int(f)): float(z)
           for p, m, f, z in zip(drq["PLATE"], drq["MJD"], drq["FIBERID"], drq["Z_VI"])}
    np.testing.assert_array_equal(rows["z"], np.array([zvi[tuple(i)] for i in rows["ids"].tolist()], np.float32))
    assert np.all(rows["coverage"] < 0.2)  # trimmed forest-only spectra are kept, and their coverage says so


def test_bad_files_and_selection_are_recorded(tmp_path):
    root = require_shared("sdss", "dr16")
    spectra = tmp_path / "spectra"
    spectra.mkdir()
    (spectra / "spec-3655-55240-0002.fits").symlink_to(root / "spec-3655-55240-0002.fits")  # good
    (spectra / "spec-3655-55240-0026.fits").write_bytes(b"not a fits file at all")  # unreadable
    (spectra / "spec-3655-55240-0054.fits").symlink_to(root / "spec-3655-55240-0030.fits")  # wrong identity
    with fits.open(root / "spec-3655-55240-0066.fits") as hdul:  # every pixel masked
        hdul[1].data["IVAR"][:] = 0
        hdul.writeto(spectra / "spec-3655-55240-0066.fits")
    catalog = tmp_path / "cat.fits"
    Table({"PLATE": [3655] * 7, "MJD": [55240] * 7, "FIBERID": [2, 26, 54, 66, 2, 70, 100],
           "Z": [2.0, 1.0, 1.5, 0.9, 2.0, -1.0, 1.2], "IS_QSO_FINAL": [1, 1, 1, 1, 1, 1, 0]}).write(catalog)
    manifest = build(catalog, spectra, tmp_path / "ds")
    assert manifest["n_built"] == 1
    why = {int(f["catalog_row"]): (f["stage"], f["reason"], f["detail"]) for f in read_failures(tmp_path / "ds")}
    assert why[1][:2] == ("build", "unreadable file") and "spec-3655-55240-0026.fits" in why[1][2]
    assert why[2][:2] == ("build", "identity mismatch") and "FIBERID=30" in why[2][2]
    assert why[3][:2] == ("build", "no good pixels")
    assert why[4][:2] == ("select", "duplicate catalog row") and "row 0" in why[4][2]
    assert why[5][:2] == ("select", "invalid redshift")
    assert why[6][:2] == ("select", "filtered") and "IS_QSO_FINAL" in why[6][2]
    assert sorted(why) == [1, 2, 3, 4, 5, 6]


def test_spplate_fallback(tmp_path):
    plate_file = require_shared("sdss", "formats", "spPlate-4055-55359-0020.fits")
    spectra = tmp_path / "spectra"
    spectra.mkdir()
    (spectra / "spPlate-4055-55359.fits").symlink_to(plate_file)
    catalog = tmp_path / "cat.fits"
    Table({"PLATE": [4055] * 3, "MJD": [55359] * 3, "FIBERID": [10, 3, 30], "Z": [2.953, 1.0, 1.0]}).write(catalog)
    manifest = build(catalog, spectra, tmp_path / "ds", order="plate")
    assert manifest["n_built"] == 2 and manifest["failures"] == {"spectrum not in file": 1}
    assert manifest["index"]["rows_from_spplate"] == 3
    rows = all_rows(tmp_path / "ds")
    fiber10 = [s for s in read_spectra(plate_file) if s.meta["FIBERID"] == 10]
    expected = prepare_spectra(fiber10, Grid.from_dict(GRID), NORM).x[0].astype(np.float16)
    i = rows["ids"][:, 2].tolist().index(10)
    np.testing.assert_allclose(rows["x"][i], expected.astype(np.float32), rtol=1e-3, atol=1e-3)


def test_limit_and_errors_name_the_problem(tmp_path):
    root = require_shared("sdss", "dr16")
    manifest = build(dr16_catalog(), root, tmp_path / "lim", limit=10)
    assert manifest["n_rows_used"] == 10 and manifest["n_built"] + manifest["n_failed"] == 10
    with pytest.raises(DatasetBuildError, match="Z_VI"):
        build(dr16_catalog(), root, tmp_path / "e1", z_column="Z_VI")
    with pytest.raises(DatasetBuildError, match="does not exist"):
        build(tmp_path / "nope.fits", root, tmp_path / "e2")
    with pytest.raises(DatasetBuildError, match="not a directory"):
        build(dr16_catalog(), tmp_path / "no_such_dir", tmp_path / "e3")
    with pytest.raises(ValueError, match="dr12q_catalog"):
        build(dr16_catalog(), root, tmp_path / "e4", split="paper")
    with pytest.raises(DatasetBuildError, match="manifest.json"):
        load_manifest(tmp_path)
    with pytest.raises(DatasetBuildError, match="manifest.json"):
        open_shards(tmp_path)
    with pytest.raises(ValueError, match="unknown split"):
        open_shards(tmp_path / "lim", "training")
    assert not os.path.exists(tmp_path / "e1")  # nothing written when the catalog is rejected


def test_builder_does_not_need_torch(tmp_path):
    blocked = tmp_path / "blocked" / "torch"
    blocked.mkdir(parents=True)
    (blocked / "__init__.py").write_text("raise ImportError('torch is deliberately unavailable in this test')\n")
    code = "import sys, fnet.dataset\nassert 'torch' not in sys.modules\n"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(blocked.parent), str(PROJECT_ROOT)]))
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
