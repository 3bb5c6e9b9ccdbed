"""fnet-bench: one table and one JSON record per run, parity against the reference, unavailable backends skipped."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from conftest import PROJECT_ROOT, require_shared
from fnet.bench import bench_command
from fnet.cli import default_model_path

FAST = ["--warmup", "1", "--repeats", "3", "--seconds", "0"]
RESULT_KEYS = {"backend", "device", "batch_size", "spectra_per_s", "latency_p50_ms", "latency_p99_ms",
               "max_abs_dv_kms", "ratio_to_slowest"}


def bench(tmp_path, *args: str) -> tuple:
    """Run fnet-bench in-process with --json; (click result, JSON record or None)."""
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(bench_command, [*args, *FAST, "--json", str(out)])
    return result, (json.loads(out.read_text()) if out.is_file() else None)


def check_ratios(results: list[dict]) -> None:
    for size in {r["batch_size"] for r in results}:
        same = [r for r in results if r["batch_size"] == size]
        slowest = min(r["spectra_per_s"] for r in same)
        assert min(r["ratio_to_slowest"] for r in same) == 1.0
        for r in same:
            assert r["ratio_to_slowest"] == pytest.approx(r["spectra_per_s"] / slowest)


def test_random_weights_arch_on_every_cpu_backend(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("onnx")
    result, record = bench(tmp_path, "--arch", "tiny", "--random-weights", "--device", "cpu",
                           "-B", "torch", "-B", "onnxruntime-cpu", "-B", "fft-numpy", "-B", "torch-bf16",
                           "-b", "1", "-b", "4")
    assert result.exit_code == 0, result.output
    machine = record["machine"]
    assert {"cpu", "cores", "gpu", "python", "libraries"} <= set(machine)
    assert machine["cores"] >= 1 and machine["libraries"]["numpy"] and machine["libraries"]["onnxruntime"]
    assert record["model"]["random_weights"] and record["model"]["architecture"] == "tiny"
    assert record["reference"] == "torch-fp64"  # the float64 network: not timed, not a row
    rows = record["results"]
    assert [(r["backend"], r["batch_size"]) for r in rows] == [
        (b, s) for b in ("torch", "onnxruntime-cpu", "fft-numpy") for s in (1, 4)]
    for r in rows:
        assert RESULT_KEYS <= set(r) and r["device"] == "cpu"
        assert 0 < r["latency_p50_ms"] <= r["latency_p99_ms"]
        assert r["spectra_per_s"] == pytest.approx(r["batch_size"] / (r["latency_p50_ms"] / 1e3))
        assert r["timed_calls"] == 3
    dv = {r["backend"]: r["max_abs_dv_kms"] for r in rows}
    # the same weights in float32 three ways: float32 rounding only, against the exact network
    assert 0.0 < dv["torch"] < 1.0 and dv["onnxruntime-cpu"] < 1.0 and dv["fft-numpy"] < 1.0
    check_ratios(rows)
    # torch-bf16 needs CUDA: skipped on a line of its own with the reason, and the run still succeeds
    skipped = {s["backend"]: s["reason"] for s in record["skipped"]}
    assert "CUDA" in skipped["torch-bf16"]
    assert f"torch-bf16: skipped: {skipped['torch-bf16']}" in result.stdout
    assert "Traceback" not in result.output
    for name in ("torch", "onnxruntime-cpu", "fft-numpy", "spectra/s", "p50 ms", "p99 ms", "max |dv| km/s"):
        assert name in result.stdout


def test_gpu_backends_without_a_gpu_are_skipped_with_a_reason(tmp_path):
    result, record = bench(tmp_path, "-B", "onnxruntime-cpu", "-B", "fft-cupy", "-B", "onnxruntime-cuda", "-b", "1")
    assert result.exit_code == 0, result.output
    measured = {r["backend"] for r in record["results"]}
    skipped = {s["backend"]: s["reason"] for s in record["skipped"]}
    for name in ("fft-cupy", "onnxruntime-cuda"):  # on a GPU machine with CuPy / onnxruntime-gpu they are measured
        assert name in measured or (skipped[name] and f"{name}: skipped: {skipped[name]}" in result.stdout)
    assert "Traceback" not in result.output


def test_embedded_model_uses_onnxruntime_cpu_as_reference(tmp_path):
    result, record = bench(tmp_path, "--model", str(default_model_path()), "-B", "onnxruntime-cpu", "-B", "fft-numpy",
                           "-B", "torch", "-b", "1")
    assert result.exit_code == 0, result.output
    assert record["reference"] == "onnxruntime-cpu" and record["model"]["architecture"].startswith("pooled4x")
    dv = {r["backend"]: r["max_abs_dv_kms"] for r in record["results"]}
    assert set(dv) == {"onnxruntime-cpu", "fft-numpy"}
    assert dv["onnxruntime-cpu"] == 0.0 and dv["fft-numpy"] < 1.0
    check_ratios(record["results"])
    torch_reason = {s["backend"]: s["reason"] for s in record["skipped"]}["torch"]
    assert "--arch" in torch_reason  # says how to get a torch comparison


def test_default_backend_list_notes_unavailable_ones_in_one_line(tmp_path):
    result, record = bench(tmp_path, "-b", "2")
    assert result.exit_code == 0, result.output
    assert {r["backend"] for r in record["results"]} >= {"onnxruntime-cpu", "fft-numpy"}
    notes = [line for line in result.stdout.splitlines() if line.startswith("note: skipped")]
    assert len(notes) == 1 and "torch" in notes[0]  # a package gives torch nothing to run
    assert ": skipped: " not in result.stdout


def test_real_spectra_add_read_and_preprocess_throughput(tmp_path):
    files = sorted(require_shared("sdss", "dr16").glob("spec-*.fits"))[:3]
    spectra = [a for f in files for a in ("--spectra", str(f))]
    result, record = bench(tmp_path, "-B", "onnxruntime-cpu", "-b", "2", *spectra)
    assert result.exit_code == 0, result.output
    io = record["io"]
    assert io["files"] == 3 and io["spectra"] >= 3 and io["read_files_per_s"] > 0
    assert io["read_preprocess_files_per_s"] < io["read_files_per_s"]
    assert "read + preprocess on 3 files" in result.stdout


@pytest.mark.parametrize("args, message", [
    (["--arch", "tiny"], "--random-weights"),
    (["--random-weights"], "--arch"),
    (["--model", "x.onnx", "--arch", "tiny", "--random-weights"], "not both"),
    (["-B", "torch-bf16", "-b", "1"], "nothing was measured"),
])
def test_refusals_exit_2_naming_the_problem(tmp_path, args, message):
    result, record = bench(tmp_path, *args)
    assert result.exit_code == 2 and message in result.output and record is None
    assert "Traceback" not in result.output


def test_json_folder_is_checked_before_measuring(tmp_path):
    result = CliRunner().invoke(bench_command, ["--json", str(tmp_path / "missing" / "b.json")])
    assert result.exit_code == 2 and "does not exist" in result.output


def test_bench_imports_no_torch_for_a_package_run():
    code = ("import sys, fnet.bench, fnet.bench.backends, fnet.bench.measure\n"
            "bad = [m for m in sys.modules if m == 'torch' or m.startswith('torch.')]\n"
            "sys.exit(f'torch imported: {bad[:3]}' if bad else 0)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, PYTHONPATH=str(PROJECT_ROOT)))
    assert proc.returncode == 0, proc.stderr + proc.stdout
