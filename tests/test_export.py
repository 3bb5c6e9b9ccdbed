"""Export: ONNX FP32/FP16 packages gated by Δv parity; the runtime reads them back; eval and TensorRT paths."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from conftest import require_shared
from fnet.export.onnx_export import ExportParityError, export_onnx
from fnet.train.evaluate_torch import TorchBackend
from fnet.train.package import PackageInfo
from fnet.export.parity import TOLERANCES
from fnet.runtime.backends import run_in_batches
from fnet.export.pipeline import parity_inputs
from fnet.runtime.backends import open_backend
from fnet.runtime.grid import Grid
from fnet.runtime.model_package import load_model_package
from fnet.runtime.pipeline import run_catalog
from fnet.train.model import build_model

GRID = Grid(3.5522, 8e-4, 578)
HEAD = {"kind": "zbins", "output": "logits", "spacing": "log1p", "z_min": 0.0, "z_max": 7.0, "nbins": 64}
NORM = {"scheme": "ivar_unit_norm", "clip": 10.0}


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return build_model("tiny", HEAD, GRID).eval()


@pytest.fixture(scope="module")
def info():
    return PackageInfo("tiny-export-test", "0.0.1", "tiny", GRID, NORM, HEAD, (0.0, 7.0), training={"note": "test"})


@pytest.fixture(scope="module")
def parity_x():
    x, _ = parity_inputs(GRID, NORM, [], n_simulated=48, seed=3)
    return x


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_export_writes_a_package_whose_redshifts_match_torch(tmp_path, tiny_net, info, parity_x, precision):
    path = tmp_path / f"m-{precision}.onnx"
    report = export_onnx(tiny_net, info, path, parity_x, precision=precision)
    assert report.passed and path.is_file()
    package = load_model_package(path)
    assert package.grid == GRID and package.head == HEAD and package.metadata["fnet.precision"] == precision
    assert package.parity["passed"] and package.parity["n_spectra"] == len(parity_x)
    # real spectra through the runtime give the same Z as the torch network on the same inputs
    files = sorted(require_shared("sdss", "dr16").glob("spec-3655-55240-00*.fits"))
    catalog, _ = run_catalog([str(f) for f in files], package, open_backend(package, "cpu"))
    from fnet.runtime.heads import decode
    from fnet.runtime.preprocess import prepare_spectra
    from fnet.runtime.readers import read_spectra

    x = prepare_spectra([read_spectra(f)[0] for f in files], GRID, NORM).x
    z_torch = decode(TorchBackend(tiny_net, "logits").run(x), HEAD).z
    dv = 299792.458 * (catalog.column("Z") - z_torch) / (1 + z_torch)
    assert np.percentile(np.abs(dv), 90) <= TOLERANCES[precision]["p99_abs_dv_kms"]


def test_parity_failure_writes_nothing(tmp_path, tiny_net, info, parity_x):
    ref = run_in_batches(TorchBackend(tiny_net, "logits").run, parity_x)
    shuffled = {"logits": ref["logits"][:, ::-1].copy()}  # a reference whose peaks sit elsewhere
    path = tmp_path / "bad.onnx"
    with pytest.raises(ExportParityError, match="not written"):
        export_onnx(tiny_net, info, path, parity_x, reference_outputs=shuffled)
    assert list(tmp_path.iterdir()) == []


def test_fnet_eval_reports_on_real_spectra(tmp_path, tiny_net, info, parity_x):
    from fnet.cli import eval_command

    model = tmp_path / "m.onnx"
    export_onnx(tiny_net, info, model, parity_x)
    dr16 = require_shared("sdss", "dr16")
    out = tmp_path / "eval"
    result = CliRunner().invoke(eval_command, [str(dr16), "--truth", str(dr16 / "cat_for_clustering_plate3655.fits.gz"),
                                               "--model", str(model), "-o", str(out), "--all-variants"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert [r["variant"] for r in report["reports"]] == ["as observed", "lines masked", "S/N halved"]
    assert all(r["n"] == 67 for r in report["reports"])
    assert {"6000", "12000", "30000"} <= set(report["reports"][0]["fractions"])
    assert all((out / f).is_file() for f in ("eval_as_observed.png", "eval_lines_masked.png", "eval_SN_halved.png"))
    assert report["model"]["sha256"] == load_model_package(model).sha256


def test_tensorrt_engine_build_and_run(tmp_path, tiny_net, info, parity_x):
    from fnet.export.tensorrt_build import build_engine, tensorrt_available

    ok, why = tensorrt_available()
    if not ok:
        pytest.skip(f"TensorRT engine build needs a GPU: {why}")
    onnx_path = tmp_path / "m.onnx"
    export_onnx(tiny_net, info, onnx_path, parity_x)
    engine = tmp_path / "m.engine"
    report = build_engine(onnx_path, engine, parity_x, fp16=False, max_batch=32)
    assert report.passed and engine.is_file() and (tmp_path / "m.engine.json").is_file()
    package = load_model_package(engine)
    assert package.is_engine
    out = open_backend(package, "tensorrt").run(parity_x[:40])  # more than max_batch: sliced
    assert out["logits"].shape == (40, 64)
