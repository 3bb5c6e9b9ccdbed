"""`--backend auto`: which backend runs this model fastest on this machine, measured once and remembered.

Why measure: whether the FFT route wins depends on the model (FNet's k=500 layers: ~10x faster through
the FFT on 2 CPU cores; the embedded pooled network's k=9 layers: ONNX Runtime ~4x faster) and on the
machine, and a short measurement settles it where a rule would guess.

The rule, in order:
1. TensorRT engines run on TensorRT; FP16 packages on ONNX Runtime (the FFT backend computes in FP32).
2. If no convolution of the model takes the FFT route (fnet.runtime.fft_conv.CONV_RULE), ONNX Runtime:
   the FFT backend would then be a slower direct convolution.
3. Otherwise both are timed on one batch of `MEASURE_BATCH` random spectra (after a warm-up call each) and
   the faster one is used; the choice is cached in `$FNET_CACHE_DIR` (default ~/.cache/fnet)/backend-choice.json
   under the model's sha256 and the machine (CPU model, cores, device, library versions), so later runs
   start at once. Delete the file (or pass --backend) to choose again.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from .atomic import atomic_write_text
from .backends import Backend
from .model_package import ModelPackage

MEASURE_BATCH = 8


def cache_path() -> Path:
    """Where the measured choices are kept."""
    root = os.environ.get("FNET_CACHE_DIR")
    if not root:
        try:
            root = os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache"), "fnet")
        except RuntimeError:  # no home directory at all: a per-machine temporary folder
            import tempfile

            root = os.path.join(tempfile.gettempdir(), "fnet-cache")
    return Path(root) / "backend-choice.json"


def machine_key(device: str, threads: int | None) -> str:
    """CPU model, cores, threads, device and the versions whose speed is being compared."""
    from .. import __version__ as fnet_version

    versions = [f"fnet={fnet_version}"]
    for module in ("numpy", "scipy", "ducc0", "onnxruntime", "cupy"):  # those the two backends have loaded: nothing imported
        version = getattr(sys.modules.get(module), "__version__", None)
        if version:
            versions.append(f"{module}={version}")
    return "|".join([cpu_model(), f"cores={os.cpu_count()}", f"threads={threads or 0}", f"device={device}"] + versions)


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo), else what platform knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _seconds(backend: Backend, x: np.ndarray) -> float:
    backend.run(x)  # warm-up at the timed shape: sessions, kernel spectra, buffers
    start = time.perf_counter()
    backend.run(x)
    return time.perf_counter() - start


def choose(package: ModelPackage, onnxruntime: Backend, device: str, threads: int | None) -> Backend:
    """ONNX Runtime or the FFT backend on `device` ("cpu" or "cuda"), whichever the rule above picks."""
    if package.metadata.get("fnet.precision", "fp32") != "fp32":
        return onnxruntime
    from .fft_backend import FftBackend

    try:
        fft = FftBackend(package, device, threads)
        fft.run(np.zeros((1, package.grid.npix), np.float32))
    except Exception:  # noqa: BLE001  whatever stops the FFT backend on this model here, ONNX Runtime runs it
        return onnxruntime
    if not any(conv.last_route == "fft" for conv in fft.convolutions):
        return onnxruntime
    key = f"{package.sha256}|{machine_key(device, threads)}"
    path = cache_path()
    try:
        cached = json.loads(path.read_text())
        cached = cached if isinstance(cached, dict) else {}
    except (OSError, ValueError):
        cached = {}
    entry = cached.get(key)
    if not _valid(entry):
        x = np.random.default_rng(0).standard_normal((MEASURE_BATCH, package.grid.npix)).astype(np.float32)
        times = {"onnxruntime": _seconds(onnxruntime, x), "fft": _seconds(fft, x)}
        entry = {"backend": min(times, key=times.get), "seconds_per_batch": times, "batch": MEASURE_BATCH,
                 "measured": time.strftime("%Y-%m-%dT%H:%M:%S")}
        cached[key] = entry
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(path, json.dumps(cached, indent=1, sort_keys=True))
        except OSError:  # a read-only home: the choice is simply measured again next time
            pass
    chosen = fft if entry["backend"] == "fft" else onnxruntime
    chosen.choice = dict(entry, cache=str(path))  # type: ignore[attr-defined]  (fnet-run reports why, and where)
    return chosen


def _valid(entry) -> bool:
    """A cached choice with everything fnet-run reports (anything else is measured again)."""
    return (isinstance(entry, dict) and entry.get("backend") in ("fft", "onnxruntime")
            and isinstance(entry.get("seconds_per_batch"), dict)
            and all(isinstance(v, (int, float)) for v in entry["seconds_per_batch"].values())
            and isinstance(entry.get("batch"), int) and isinstance(entry.get("measured"), str))
