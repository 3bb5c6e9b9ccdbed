"""Which ONNX Runtime is installed, and whether its GPU providers can work: clear messages instead of silent CPU.

Two pip distributions ship the one `onnxruntime` module: `onnxruntime` (CPU) and `onnxruntime-gpu`
(CUDA + TensorRT providers). Installed together, the later one overwrites the other's files and what
is left often offers only the CPU provider; so fnet-qso depends on neither and its extras `[cpu]` and
`[gpu]` each pick exactly one. ONNX Runtime's TensorRT provider is linked against one TensorRT major
(libnvinfer.so.10 for ONNX Runtime 1.18 and later), which may not be the tensorrt wheel installed for
building engines; that mismatch is detected here from the provider library itself.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
from pathlib import Path
from types import ModuleType

from .errors import BackendUnavailable

ORT_DISTRIBUTIONS = ("onnxruntime", "onnxruntime-gpu")
TENSORRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu12", "tensorrt-cu13", "tensorrt-cu11")
FIX_BOTH = ("pip uninstall -y onnxruntime onnxruntime-gpu && pip install 'onnxruntime-gpu>=1.18'  "
            "(keep only onnxruntime-gpu; or only onnxruntime on a CPU machine)")


def installed_versions(names: tuple[str, ...]) -> dict[str, str]:
    """Installed version of each named pip distribution that is present."""
    found = {}
    for name in names:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    return found


def import_onnxruntime() -> ModuleType:
    """The onnxruntime module, or BackendUnavailable saying which extra to install."""
    try:
        import onnxruntime
    except ImportError:
        raise BackendUnavailable("ONNX Runtime is not installed: pip install 'fnet-qso[cpu]' on a CPU machine, "
                                 "or 'fnet-qso[gpu]' on one with an NVIDIA GPU") from None
    return onnxruntime


def install_problem() -> str | None:
    """Why GPU providers may be missing although onnxruntime-gpu is installed (both distributions present)."""
    present = installed_versions(ORT_DISTRIBUTIONS)
    if len(present) > 1:
        listed = ", ".join(f"{name} {version}" for name, version in present.items())
        return f"two ONNX Runtime distributions are installed ({listed}); they overwrite each other: {FIX_BOTH}"
    return None


def tensorrt_majors_needed(capi_dir: str | Path | None = None) -> list[int]:
    """TensorRT majors ONNX Runtime's TensorRT provider library is linked against (libnvinfer.so.N), if it has one."""
    if capi_dir is None:
        spec = importlib.util.find_spec("onnxruntime")
        if spec is None or not spec.submodule_search_locations:
            return []
        capi_dir = Path(list(spec.submodule_search_locations)[0]) / "capi"
    majors: set[int] = set()
    for lib in Path(capi_dir).glob("libonnxruntime_providers_tensorrt*"):
        # the soname appears verbatim in the library's dynamic section: no ELF parser needed
        majors.update(int(m) for m in re.findall(rb"libnvinfer\.so\.(\d+)", lib.read_bytes()))
    return sorted(majors)


def tensorrt_provider_problem(capi_dir: str | Path | None = None,
                              installed: dict[str, str] | None = None) -> str | None:
    """A message when the installed tensorrt major is not the one ONNX Runtime's TensorRT provider needs."""
    needed = tensorrt_majors_needed(capi_dir)
    installed = installed_versions(TENSORRT_DISTRIBUTIONS) if installed is None else installed
    if not needed or not installed:
        return None  # nothing to compare: ONNX Runtime's own error then names the missing library
    have = {int(v.split(".")[0]) for v in installed.values() if v.split(".")[0].isdigit()}
    if have & set(needed):
        return None
    listed = ", ".join(f"{name} {version}" for name, version in installed.items())
    want = " or ".join(str(m) for m in needed)
    return (f"ONNX Runtime's TensorRT provider needs TensorRT {want} (libnvinfer.so.{needed[0]}) but {listed} is "
            f"installed: pip install 'tensorrt>={needed[0]},<{needed[0] + 1}', or build a .engine with "
            f"fnet-export --tensorrt and run that (any TensorRT 10 or 11)")
