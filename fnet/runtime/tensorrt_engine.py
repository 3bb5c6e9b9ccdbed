"""A serialized TensorRT engine as a Backend, and the few libcudart calls it needs (ctypes, no pycuda).

Buffers are allocated once, at the engine profile's largest batch: one device buffer and one pinned
(page-locked) host buffer per input and output, and one non-default CUDA stream. Each batch is then
an async host-to-device copy, the engine's execute_async_v3 and async device-to-host copies on that
stream, followed by one cudaStreamSynchronize. Nothing is allocated per batch, and pinned memory is
what lets cudaMemcpyAsync actually run asynchronously (pageable memory makes CUDA stage it).
"""

from __future__ import annotations

import ctypes
import json
from pathlib import Path
from typing import Any

import numpy as np

from .backends import Backend
from .errors import BackendUnavailable
from .model_package import ModelPackage

# cudaDeviceAttr values (driver_types.h): stable across CUDA 11-13
_ATTR_CC_MAJOR, _ATTR_CC_MINOR = 75, 76
_H2D, _D2H = 1, 2  # cudaMemcpyKind
_STREAM_NON_BLOCKING = 1  # cudaStreamNonBlocking: no implicit synchronisation with the legacy default stream
# cudaGetDeviceProperties fills a struct whose layout changes between CUDA versions (about 1 KB in CUDA 12);
# only its first field, char name[256], is read, so a generous buffer is safe whatever the version.
_PROPS_BYTES = 8192

_INT_P, _VOID_PP = ctypes.POINTER(ctypes.c_int), ctypes.POINTER(ctypes.c_void_p)
# name -> (restype, argtypes): every libcudart function this module calls. cudaError_t and enums are ints,
# cudaStream_t is a pointer.
_SIGNATURES: dict[str, tuple[Any, list]] = {
    "cudaGetDeviceCount": (ctypes.c_int, [_INT_P]),
    "cudaGetDevice": (ctypes.c_int, [_INT_P]),
    "cudaDeviceGetAttribute": (ctypes.c_int, [_INT_P, ctypes.c_int, ctypes.c_int]),
    "cudaRuntimeGetVersion": (ctypes.c_int, [_INT_P]),
    "cudaDriverGetVersion": (ctypes.c_int, [_INT_P]),
    "cudaGetDeviceProperties_v2": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "cudaGetDeviceProperties": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_int]),
    "cudaGetErrorString": (ctypes.c_char_p, [ctypes.c_int]),
    "cudaMalloc": (ctypes.c_int, [_VOID_PP, ctypes.c_size_t]),
    "cudaFree": (ctypes.c_int, [ctypes.c_void_p]),
    "cudaHostAlloc": (ctypes.c_int, [_VOID_PP, ctypes.c_size_t, ctypes.c_uint]),
    "cudaFreeHost": (ctypes.c_int, [ctypes.c_void_p]),
    "cudaStreamCreateWithFlags": (ctypes.c_int, [_VOID_PP, ctypes.c_uint]),
    "cudaStreamDestroy": (ctypes.c_int, [ctypes.c_void_p]),
    "cudaStreamSynchronize": (ctypes.c_int, [ctypes.c_void_p]),
    "cudaMemcpyAsync": (ctypes.c_int, [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int,
                                       ctypes.c_void_p]),
}
# CUDA 12 headers map cudaGetDeviceProperties to the _v2 symbol; CUDA 11 has only the plain one
_OPTIONAL = {"cudaGetDeviceProperties_v2", "cudaGetDeviceProperties"}


def load_cudart():
    """The CUDA runtime library (ctypes.CDLL), or BackendUnavailable; tests substitute a stand-in here."""
    for name in _cudart_candidates():
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    raise BackendUnavailable("CUDA runtime library (libcudart) not found: a TensorRT engine needs a GPU")


def _cudart_candidates() -> list[str]:
    """libcudart names for the system loader, then the copies pip's nvidia-cuda-runtime wheels install."""
    import glob
    import importlib.util

    names = ["libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"]
    for module in ("nvidia.cuda_runtime", "nvidia.cu13", "nvidia.cu12"):
        try:
            spec = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            continue
        for root in (spec.submodule_search_locations or []) if spec else []:
            names += sorted(glob.glob(f"{root}/lib/libcudart.so*"))
    return names


def _version(code: int) -> str:
    """CUDA's version integer (1000*major + 10*minor) as "major.minor"."""
    return f"{code // 1000}.{(code % 1000) // 10}"


class CudaRuntime:
    """The libcudart calls an engine needs, through ctypes; `lib` substitutes the library (tests)."""

    def __init__(self, lib: Any = None):
        lib = load_cudart() if lib is None else lib
        # Loading proves only that CUDA wheels are installed; ask whether a GPU answers. This first call runs
        # before the signatures are declared: its int* argument and int result are ctypes' defaults anyway,
        # and the refusal must work on any library object.
        count = ctypes.c_int(0)
        status = lib.cudaGetDeviceCount(ctypes.byref(count))
        if status != 0 or count.value < 1:
            raise BackendUnavailable(f"CUDA runtime found but no usable GPU (cudaGetDeviceCount: error {status}, "
                                     f"{count.value} devices): a TensorRT engine needs an NVIDIA GPU and its driver")
        for name, (restype, argtypes) in _SIGNATURES.items():
            fn = getattr(lib, name, None)
            if fn is None:
                if name in _OPTIONAL:
                    continue
                raise BackendUnavailable(f"the CUDA runtime library lacks {name} (too old a CUDA?)")
            # without argtypes ctypes would pass Python ints as 32-bit C ints: pointers and sizes would be cut
            fn.restype, fn.argtypes = restype, argtypes
        self.lib = lib

    def _call(self, name: str, *args, what: str) -> None:
        """Call a libcudart function; RuntimeError naming `what` failed (in user terms) and CUDA's reason."""
        status = getattr(self.lib, name)(*args)
        if status != 0:
            try:
                reason = self.lib.cudaGetErrorString(status)
                reason = reason.decode(errors="replace") if isinstance(reason, bytes) else str(reason)
            except Exception:  # noqa: BLE001  the error code alone still says something
                reason = "unknown error"
            raise RuntimeError(f"{what} failed ({name}: CUDA error {status}, {reason})")

    def device_facts(self) -> dict[str, str]:
        """GPU name, compute capability, CUDA runtime and driver versions of the current device."""
        device, major, minor, runtime, driver = (ctypes.c_int(0) for _ in range(5))
        self._call("cudaGetDevice", ctypes.byref(device), what="asking which GPU is current")
        self._call("cudaDeviceGetAttribute", ctypes.byref(major), _ATTR_CC_MAJOR, device.value,
                   what="reading the GPU's compute capability")
        self._call("cudaDeviceGetAttribute", ctypes.byref(minor), _ATTR_CC_MINOR, device.value,
                   what="reading the GPU's compute capability")
        self._call("cudaRuntimeGetVersion", ctypes.byref(runtime), what="reading the CUDA runtime version")
        self._call("cudaDriverGetVersion", ctypes.byref(driver), what="reading the CUDA driver version")
        props = ctypes.create_string_buffer(_PROPS_BYTES)
        name = "cudaGetDeviceProperties_v2" if hasattr(self.lib, "cudaGetDeviceProperties_v2") \
            else "cudaGetDeviceProperties"
        self._call(name, props, device.value, what="reading the GPU's name")
        return {"gpu": props.raw[:256].split(b"\0", 1)[0].decode(errors="replace").strip(),
                "compute_capability": f"{major.value}.{minor.value}",
                "cuda_runtime": _version(runtime.value), "cuda_driver": _version(driver.value)}

    def malloc(self, nbytes: int, what: str) -> int:
        """Device memory of nbytes (at least 1)."""
        ptr = ctypes.c_void_p()
        self._call("cudaMalloc", ctypes.byref(ptr), max(int(nbytes), 1),
                   what=f"allocating {nbytes} bytes of GPU memory for {what}")
        return int(ptr.value)

    def host_alloc(self, nbytes: int, what: str) -> int:
        """Pinned (page-locked) host memory of nbytes (at least 1), for truly asynchronous copies."""
        ptr = ctypes.c_void_p()
        self._call("cudaHostAlloc", ctypes.byref(ptr), max(int(nbytes), 1), 0,  # cudaHostAllocDefault
                   what=f"allocating {nbytes} bytes of pinned host memory for {what}")
        return int(ptr.value)

    def free(self, ptr: int) -> None:
        """Release device memory."""
        self._call("cudaFree", ptr, what="releasing GPU memory")

    def free_host(self, ptr: int) -> None:
        """Release pinned host memory."""
        self._call("cudaFreeHost", ptr, what="releasing pinned host memory")

    def stream_create(self) -> int:
        """A new non-blocking CUDA stream (never the legacy default stream)."""
        stream = ctypes.c_void_p()
        self._call("cudaStreamCreateWithFlags", ctypes.byref(stream), _STREAM_NON_BLOCKING,
                   what="creating a CUDA stream")
        return int(stream.value)

    def stream_destroy(self, stream: int) -> None:
        """Destroy a stream created by stream_create."""
        self._call("cudaStreamDestroy", stream, what="destroying the CUDA stream")

    def copy_to_device(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        """Enqueue a host-to-device copy on `stream`."""
        self._call("cudaMemcpyAsync", dst, src, int(nbytes), _H2D, stream, what="copying the batch to the GPU")

    def copy_to_host(self, dst: int, src: int, nbytes: int, stream: int) -> None:
        """Enqueue a device-to-host copy on `stream`."""
        self._call("cudaMemcpyAsync", dst, src, int(nbytes), _D2H, stream,
                   what="copying the engine's outputs back from the GPU")

    def synchronize(self, stream: int) -> None:
        """Wait until everything enqueued on `stream` has finished."""
        self._call("cudaStreamSynchronize", stream, what="running the engine on the GPU")


class _Buffer:
    """One tensor's device buffer and pinned host buffer, sized for the profile's largest batch."""

    def __init__(self, cuda: CudaRuntime, name: str, shape: tuple[int, ...], dtype: np.dtype):
        self.name, self.dtype = name, np.dtype(dtype)
        self.nbytes = int(np.prod(shape)) * self.dtype.itemsize
        self.device = self.host = 0
        self.array: np.ndarray | None = None
        try:
            self.device = cuda.malloc(self.nbytes, f"tensor {name!r}")
            self.host = cuda.host_alloc(self.nbytes, f"tensor {name!r}")
        except BaseException:
            self.release(cuda)  # the device half must not leak when the host half fails
            raise
        raw = (ctypes.c_byte * max(self.nbytes, 1)).from_address(self.host)
        self.array = np.frombuffer(raw, dtype=np.uint8)[:self.nbytes].view(self.dtype)  # a view, no copy

    def release(self, cuda: CudaRuntime) -> None:
        """Free both buffers (once)."""
        self.array = None
        device, host, self.device, self.host = self.device, self.host, 0, 0
        if device:
            cuda.free(device)
        if host:
            cuda.free_host(host)


class TensorRTEngineBackend(Backend):
    """A serialized TensorRT engine run through the tensorrt Python API on its own CUDA stream."""

    def __init__(self, package: ModelPackage, cuda: CudaRuntime | None = None):
        self._buffers: list[_Buffer] = []
        self._stream = 0
        try:
            import tensorrt as trt
        except ImportError:
            raise BackendUnavailable(f"{package.path}: a TensorRT engine needs the tensorrt package "
                                     "(pip install 'fnet-qso[gpu]') and an NVIDIA GPU") from None
        self._cuda = cuda or CudaRuntime()
        self._trt = trt
        logger = trt.Logger(trt.Logger.WARNING)
        self.engine = trt.Runtime(logger).deserialize_cuda_engine(Path(package.path).read_bytes())
        if self.engine is None:
            raise BackendUnavailable(f"{package.path}: TensorRT {trt.__version__} could not deserialize the engine"
                                     f"{_built_with(package)}: rebuild it here with fnet-export --tensorrt")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.input_name = package.input_name
        if self.input_name not in names:
            raise BackendUnavailable(f"{package.path}: the engine has no input {self.input_name!r} (tensors: {names})")
        self.output_names = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        # The optimisation profile fixes the largest batch; bigger batches are run in slices.
        self.max_batch = int(self.engine.get_tensor_profile_shape(self.input_name, 0)[2][0])
        self.npix = package.grid.npix
        self.name = f"tensorrt-engine[{trt.__version__}]"
        try:
            self._allocate()
        except BaseException:
            self.close()
            raise

    def _allocate(self) -> None:
        """Stream and buffers, once: output sizes are what the engine gives at the largest batch."""
        trt, cuda = self._trt, self._cuda
        self._stream = cuda.stream_create()
        if not self.context.set_input_shape(self.input_name, (self.max_batch, 1, self.npix)):
            raise BackendUnavailable(f"the TensorRT engine refuses its own largest batch {self.max_batch} of "
                                     f"{self.npix} pixels (built for another grid?)")
        for name in [self.input_name] + self.output_names:
            shape = tuple(int(d) for d in self.context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                raise BackendUnavailable(f"the TensorRT engine gives no fixed shape for {name!r} at batch "
                                         f"{self.max_batch}: {shape}")
            self._buffers.append(_Buffer(cuda, name, shape, trt.nptype(self.engine.get_tensor_dtype(name))))

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Run the engine, in slices of at most the profile's largest batch."""
        if len(x) == 0:  # outputs with no rows, shaped as the engine makes them
            return {k: v[:0] for k, v in self._run_slice(np.zeros((1, x.shape[1]), np.float32)).items()}
        parts = [self._run_slice(x[i:i + self.max_batch]) for i in range(0, len(x), self.max_batch)]
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _run_slice(self, x: np.ndarray) -> dict[str, np.ndarray]:
        """Pinned copy in, async H2D, execute on the stream, async D2H, one synchronize, copies out."""
        if not self._buffers:
            raise RuntimeError("this TensorRT engine backend is closed")
        cuda, stream = self._cuda, self._stream
        n = len(x)
        inp, outputs = self._buffers[0], self._buffers[1:]
        shape = (n, 1, self.npix)
        staged = inp.array[:n * self.npix].reshape(shape)
        staged[:, 0, :] = x  # into pinned memory, converted to the engine's input type
        cuda.copy_to_device(inp.device, inp.host, staged.nbytes, stream)
        if not self.context.set_input_shape(self.input_name, shape):
            raise RuntimeError(f"the TensorRT engine rejects input shape {shape} (built for another grid?)")
        for buf in self._buffers:
            if not self.context.set_tensor_address(buf.name, buf.device):
                raise RuntimeError(f"TensorRT refused the GPU buffer of tensor {buf.name!r}")
        if not self.context.execute_async_v3(stream):
            raise RuntimeError(f"the TensorRT engine failed on a batch of {n} spectra (see the TensorRT log)")
        views = {}
        for buf in outputs:
            out_shape = tuple(int(d) for d in self.context.get_tensor_shape(buf.name))
            size = int(np.prod(out_shape))
            if size * buf.dtype.itemsize > buf.nbytes:
                raise RuntimeError(f"the engine's output {buf.name!r} at batch {n} is {out_shape}, larger than "
                                   "at its largest batch: the engine is not batch-major")
            cuda.copy_to_host(buf.host, buf.device, size * buf.dtype.itemsize, stream)
            views[buf.name] = buf.array[:size].reshape(out_shape)
        cuda.synchronize(stream)
        # astype copies: the pinned buffers are overwritten by the next batch
        return {name: view.astype(np.float32) for name, view in views.items()}

    def close(self) -> None:
        """Free the buffers and the stream; safe to call more than once."""
        cuda = getattr(self, "_cuda", None)
        buffers, self._buffers = getattr(self, "_buffers", []), []
        stream, self._stream = getattr(self, "_stream", 0), 0
        if cuda is None:
            return
        for buf in buffers:
            buf.release(cuda)
        if stream:
            cuda.stream_destroy(stream)

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001  at interpreter exit CUDA may already be gone: nothing left to free
            pass


def _built_with(package: ModelPackage) -> str:
    """" (built with TensorRT x on GPU y)" from the sidecar, to say why an engine does not load here."""
    try:
        facts = json.loads(package.metadata.get("fnet.tensorrt", "{}"))
    except ValueError:
        return ""
    if not isinstance(facts, dict) or not facts.get("version"):
        return ""
    where = f" on {facts['gpu']} (compute capability {facts.get('compute_capability', '?')})" if facts.get("gpu") else ""
    return f" (built with TensorRT {facts['version']}{where})"
