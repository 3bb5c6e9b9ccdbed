"""What fnet-bench measures, and on what: input pools, per-call latency, Δv parity, file reading, the machine.

Latency is one backend.run call on one batch, host array in, host arrays out (time.perf_counter around it):
a GPU backend's copies and its synchronisation are inside the call, as they are for fnet-run.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
import warnings
from importlib import metadata as importlib_metadata
from importlib.util import find_spec
from typing import Callable, Sequence

import numpy as np

from ..metrics import velocity_offsets
from ..runtime.backend_choice import cpu_model
from ..runtime.errors import SpectrumReadError
from ..runtime.heads import decode
from ..runtime.inputs import iter_inputs
from ..runtime.model_package import ModelPackage
from ..runtime.preprocess import prepare_arrays, prepare_spectra
from ..runtime.readers import read_spectra

PARITY_N = 64  # spectra every backend runs for parity: the first PARITY_N of the input pool
MIN_TIMED_CALLS = 3  # a p50 of fewer calls says little; --seconds never cuts below this (nor above --repeats)
LIBRARIES = ("numpy", "scipy", "ducc0", "threadpoolctl", "onnxruntime", "torch", "cupy", "tensorrt", "click", "astropy")


def simulated_pool(package: ModelPackage, n: int = PARITY_N, seed: int = 0) -> np.ndarray:
    """n simulated BOSS-like quasars (the toolkit's simulator), prepared for the package's grid: (n, npix) float32."""
    from ..simulate import QuasarSimulator

    batch = QuasarSimulator(source="auto", seed=seed).sample(n)
    return prepare_arrays(batch.loglam, batch.flux, batch.ivar, batch.good, package.grid, package.normalisation).x


def spectra_files(items: Sequence[str]) -> list[str]:
    """The files named by --spectra (files, folders, @lists, globs), expanded as fnet-run expands its INPUTS."""
    files, missing = [], []
    for item in iter_inputs(list(items)):
        if item.problem:
            missing.append(f"{item.path}: {item.problem}")
        else:
            files.append(item.path)
    if missing:
        raise ValueError(f"--spectra: {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    if not files:
        raise ValueError(f"--spectra {' '.join(items)}: no spectra files found")
    return files


def read_all(files: Sequence[str]) -> tuple[list, list[str]]:
    """Every spectrum of every readable file, and one message per file that could not be read."""
    spectra, problems = [], []
    for path in files:
        try:
            spectra += read_spectra(path)
        except SpectrumReadError as exc:
            problems.append(str(exc))
    return spectra, problems


def load_spectra(files: Sequence[str]) -> tuple[list, list[str]]:
    """read_all, refusing a set of files none of which can be read."""
    spectra, problems = read_all(files)
    if not spectra:
        raise ValueError(f"--spectra: none of the {len(files)} files could be read; first: {problems[0]}")
    return spectra, problems


def io_throughput(files: Sequence[str], spectra: list, problems: list[str], package: ModelPackage, repeats: int,
                  seconds: float) -> dict:
    """Files/s and spectra/s of reading and of preprocessing (rebin + normalise) the files, median of passes.

    The files were read once already (load_spectra), so every timed pass finds them in the page cache:
    this is the readers' speed, not the disk's.
    """
    readable = len(files) - len(problems)
    t_read = float(np.median(timed_calls(lambda: read_all(files), repeats, seconds)))
    t_prep = float(np.median(timed_calls(lambda: prepare_spectra(spectra, package.grid, package.normalisation),
                                         repeats, seconds)))
    return {"files": readable, "unreadable_files": len(problems), "first_problem": problems[0] if problems else None,
            "spectra": len(spectra),
            "read_files_per_s": readable / t_read, "read_spectra_per_s": len(spectra) / t_read,
            "preprocess_spectra_per_s": len(spectra) / t_prep,
            "read_preprocess_files_per_s": readable / (t_read + t_prep)}


def repeat_to(pool: np.ndarray, n: int) -> np.ndarray:
    """A batch of n spectra made by cycling through the pool (contiguous float32)."""
    return np.ascontiguousarray(np.resize(pool, (n, pool.shape[1])), dtype=np.float32)


def timed_calls(fn: Callable[[], object], repeats: int, seconds: float) -> list[float]:
    """Seconds per call of fn: up to `repeats` calls, stopping once `seconds` are spent (never before 3 calls)."""
    times: list[float] = []
    floor = min(MIN_TIMED_CALLS, repeats)
    while len(times) < repeats and (len(times) < floor or sum(times) < seconds):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def latency(run: Callable[[np.ndarray], dict], x: np.ndarray, warmup: int, repeats: int, seconds: float) -> dict:
    """Warm-up calls (a TensorRT or CuPy first call builds and plans), then timed calls: p50/p99 and spectra/s."""
    for _ in range(warmup):
        run(x)
    times = np.asarray(timed_calls(lambda: run(x), repeats, seconds))
    p50 = float(np.percentile(times, 50))
    return {"spectra_per_s": len(x) / p50, "latency_p50_ms": 1e3 * p50,
            "latency_p99_ms": 1e3 * float(np.percentile(times, 99)), "timed_calls": int(times.size)}


def max_abs_dv(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray], head: dict) -> float:
    """Largest |Δv| in km/s between two output sets decoded with the package's head, c·|z − z_ref|/(1 + z_ref)."""
    return float(np.max(np.abs(velocity_offsets(decode(outputs, head).z, decode(reference, head).z))))


def machine_info() -> dict:
    """CPU, cores, GPU and library versions of this machine, for the JSON record."""
    try:
        usable = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        usable = os.cpu_count()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "cores_usable": usable, "gpu": _gpus(),
            "platform": platform.platform(), "python": platform.python_version(), "libraries": _versions()}


def _gpus() -> list[str] | None:
    """GPU names from nvidia-smi -L, else CuPy's device 0, else None."""
    try:
        proc = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        names = [line.split(" (UUID")[0].strip() for line in proc.stdout.splitlines() if line.startswith("GPU")]
        if proc.returncode == 0 and names:
            return names
    except (OSError, subprocess.SubprocessError):
        pass
    if find_spec("cupy") is None:
        return None
    try:
        import cupy

        name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
        return [name.decode() if isinstance(name, bytes) else str(name)]
    except Exception:  # CuPy without a driver or a GPU: no GPU to report
        return None


def _versions() -> dict[str, str | None]:
    """Version of each library when installed (from its distribution: nothing heavy such as torch is imported)."""
    dists = importlib_metadata.packages_distributions()
    out: dict[str, str | None] = {}
    for module in LIBRARIES:
        version = None
        for dist in dists.get(module, []):
            try:
                version = importlib_metadata.version(dist)
                break
            except importlib_metadata.PackageNotFoundError:
                continue
        if version is None and module in sys.modules:  # an install without distribution metadata
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                version = getattr(sys.modules[module], "__version__", None)
        out[module] = version
    return out
