"""fnet-reproduce-paper end to end on the real small DR16 set (a tiny network, the paper's split rule)."""

from __future__ import annotations

import json

import numpy as np
from astropy.table import Table
from click.testing import CliRunner

from conftest import require_shared
from fnet.cli import reproduce_command


def test_reproduce_paper_pipeline_on_real_spectra(tmp_path):
    dr16 = require_shared("sdss", "dr16")
    catalog = dr16 / "cat_for_clustering_plate3655.fits.gz"
    table = Table.read(catalog)
    fake_dr12q = tmp_path / "DR12Q-subset.fits"
    table[:45].write(fake_dr12q)  # stands in for DR12Q: these rows train/validate, the rest are the test set
    work = tmp_path / "work"
    args = [str(catalog), str(dr16), "--dr12q", str(fake_dr12q), "--work", str(work), "--config", "smoke",
            "--processes", "1", "--set", "train.epochs=1", "--set", "train.steps_per_epoch=2",
            "--set", "train.batch_size=8"]
    result = CliRunner().invoke(reproduce_command, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    summary = json.loads((work / "summary.json").read_text())
    assert summary["dataset"]["built"] == 67 and summary["dataset"]["failures"] == {"file not found": 12}
    manifest = json.loads((work / "dataset" / "manifest.json").read_text())
    splits = {s["split"] for s in manifest["shards"]}
    assert splits == {"train", "val", "test"}
    test_report = json.loads((work / "test_report.json").read_text())
    n_test = sum(s["count"] for s in manifest["shards"] if s["split"] == "test")
    assert test_report["n"] == n_test > 0  # rows not in the fake DR12Q, with a spectrum on disk
    exports = summary["exports"]
    assert set(exports) == {"onnx-fp32", "onnx-fp16", "fft-fp32", "fp16-arithmetic"}
    assert exports["onnx-fp32"].endswith(".onnx"), exports
    assert exports["fft-fp32"] == exports["onnx-fp32"]  # the same file, checked another way
    # two training steps leave the logits near ties: FP16 arithmetic (torch's own FP16 too) moves 2 of 256 peaks
    # here, over the 0.5 % allowance; the FP16 package is then refused by that check, and says so
    assert exports["onnx-fp16"].endswith(".onnx") or "FP16 arithmetic moves redshifts" in exports["onnx-fp16"], exports
    # a second run resumes: the dataset is reused and training finds its last checkpoint
    again = CliRunner().invoke(reproduce_command, args + ["--no-export"], catch_exceptions=False)
    assert again.exit_code == 0
    assert np.isclose(json.loads((work / "test_report.json").read_text())["n"], n_test)
