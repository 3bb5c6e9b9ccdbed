"""fnet-gpu-check: the CPU dry run of the whole job, and the split/join that keeps every file under 16 MiB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from fnet.gpucheck.parts import LIMIT_BYTES, MANIFEST, join_parts, sha256_of, split_large

ROOT = Path(__file__).resolve().parents[1]


def test_split_then_join_rebuilds_every_file_byte_for_byte(tmp_path):
    folder = tmp_path / "job"
    (folder / "train").mkdir(parents=True)
    big = os.urandom(5000)
    (folder / "train" / "best.pt").write_bytes(big)
    (folder / "small.json").write_text('{"a": 1}')
    manifest = split_large(folder, limit=2048, part_bytes=1500)
    # the big file is gone, its parts are each under the limit, and the small file is whole
    assert not (folder / "train" / "best.pt").exists()
    parts = sorted((folder / "train").glob("best.pt.part*"))
    assert [p.stat().st_size for p in parts] == [1500, 1500, 1500, 500]
    assert all(p.stat().st_size <= 2048 for p in folder.rglob("*") if p.is_file())
    entries = {e["path"]: e for e in manifest["files"]}
    assert entries["small.json"]["sha256"] == sha256_of(folder / "small.json")
    assert len(entries["train/best.pt"]["parts"]) == 4
    written = join_parts(folder, tmp_path / "rebuilt")
    assert written == [str(tmp_path / "rebuilt" / "train" / "best.pt")]
    assert (tmp_path / "rebuilt" / "train" / "best.pt").read_bytes() == big


def test_join_refuses_a_damaged_or_missing_part(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "ckpt.pt").write_bytes(os.urandom(3000))
    split_large(folder, limit=1024, part_bytes=1000)
    part = folder / "ckpt.pt.part001"
    data = bytearray(part.read_bytes())
    data[10] ^= 1
    part.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="ckpt.pt: rebuilt file"):
        join_parts(folder, tmp_path / "out")
    part.unlink()
    with pytest.raises(ValueError, match="ckpt.pt.part001 .*missing"):
        join_parts(folder, tmp_path / "out")
    assert not (tmp_path / "out" / "ckpt.pt").exists()  # nothing half-built is left behind


def test_the_documented_cat_one_liner_gives_the_same_file(tmp_path):
    folder = tmp_path / "job"
    folder.mkdir()
    payload = os.urandom(40_000)
    (folder / "model.onnx").write_bytes(payload)
    manifest = split_large(folder, limit=16_384, part_bytes=10_000)
    subprocess.run("cat model.onnx.part* > joined", shell=True, cwd=folder, check=True)
    assert sha256_of(folder / "joined") == manifest["files"][0]["sha256"]


@pytest.mark.slow
def test_cpu_dry_run_runs_every_step_at_toy_size_and_skips_gpu_backends_with_reasons(tmp_path):
    out = tmp_path / "check"
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, "-m", "fnet.gpucheck", "--minutes", "4", "--out", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=400)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    steps = {s["name"]: s for s in summary["steps"]}
    assert not summary["plan"]["gpu"] and summary["plan"]["arch"] == "tiny"
    for name in ("train", "export", "bench-arch", "bench-model"):
        assert steps[name]["status"] == "ok", steps[name]
    assert steps["train"]["data"]["train_spectra"] > 0
    assert (out / "train" / "best.pt").is_file()
    # FP32 and FP16 packages went through the gate; what passed is written with its report beside it. The toy
    # network (8 steps) is meaningless, so its FP16 arithmetic may move a near-tied P(z) peak and be refused.
    packages = steps["export"]["data"]["packages"]
    assert "fnet-smoke-fp32.onnx" in packages and set(packages) <= {"fnet-smoke-fp16.onnx", "fnet-smoke-fp32.onnx"}
    if "fnet-smoke-fp16.onnx" not in packages:
        assert "FP16 arithmetic" in (out / "gpu-check.log").read_text()
    for name in packages:
        report = json.loads((out / "parity" / f"{name}.json").read_text())
        assert report["passed"] is True
    assert steps["export"]["data"]["tensorrt"].startswith("skipped")
    # every GPU backend is named with the reason it could not run here, the CPU ones measured with parity
    bench = steps["bench-arch"]["data"]
    measured = {r["backend"] for r in bench["results"]}
    assert {"torch", "onnxruntime-cpu", "fft-numpy"} <= measured
    assert {"torch-bf16", "onnxruntime-cuda", "fft-cupy", "tensorrt-engine"} <= set(bench["skipped"])
    assert all(r["max_abs_dv_kms"] is not None and r["max_abs_dv_kms"] < 1.0 for r in bench["results"]), bench
    # nothing over the limit, and the manifest lists every file with its true sha256
    manifest = json.loads((out / MANIFEST).read_text())
    files = [p for p in out.rglob("*") if p.is_file() and p.name != MANIFEST]
    assert all(p.stat().st_size <= LIMIT_BYTES for p in files)
    listed = {e["path"]: e["sha256"] for e in manifest["files"]}
    assert set(listed) == {p.relative_to(out).as_posix() for p in files}
    assert all(sha256_of(out / path) == digest for path, digest in listed.items())
    assert "train: ok" in (out / "gpu-check.log").read_text()


def test_a_step_whose_modules_are_missing_is_skipped_with_their_names(tmp_path, monkeypatch):
    from fnet.gpucheck import job

    real = job.find_spec
    monkeypatch.setattr(job, "find_spec", lambda name: None if name == "onnx" else real(name))
    check = job.GpuCheck(tmp_path / "out", 1.0, log=lambda line: None,
                         env={"cpu_cores": 2, "cuda": False, "tensorrt": None})
    (tmp_path / "out").mkdir()
    result = check._step("export", lambda: job.StepResult("export", "ok"))
    assert result.status == "skipped" and "onnx" in result.detail
    assert check._step("bench-model", lambda: job.StepResult("bench-model", "ok")).status == "ok"
