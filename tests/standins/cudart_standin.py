"""A stand-in for libcudart (the ctypes CDLL fnet.runtime.tensorrt_engine.CudaRuntime talks to).

"Device" memory and pinned host memory are ordinary host buffers (ctypes), so the stand-in tensorrt
engine can read and write them at the addresses it is given. Like the real library it checks what it
is called with: every function must have had its argtypes declared (the arguments are validated with
those ctypes types' from_param, as ctypes would), copies and frees must name live allocations, and
cudaMemcpyAsync is asynchronous: copies and engine work wait in their stream's queue until
cudaStreamSynchronize, so a caller that reads its outputs without synchronizing reads stale memory.
Every call is recorded for the tests' assertions.
"""

from __future__ import annotations

import ctypes
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable

CUDA_SUCCESS, INVALID_VALUE, INVALID_DEVICE_POINTER, INVALID_RESOURCE = 0, 1, 17, 400
_H2D, _D2H = 1, 2
_ERRORS = {INVALID_VALUE: b"invalid argument", INVALID_DEVICE_POINTER: b"invalid device pointer",
           INVALID_RESOURCE: b"invalid resource handle"}


class _Fn:
    """One library function: refuses to run before its signature is declared, validates arguments like ctypes."""

    def __init__(self, lib: "FakeCudart", name: str, impl: Callable, declared_by_default: bool = False):
        self._lib, self.__name__, self._impl = lib, name, impl
        self.restype: Any = ctypes.c_int
        self.argtypes: list | None = [] if declared_by_default else None

    def __call__(self, *args):
        if self.argtypes is None:
            raise AssertionError(f"{self.__name__} called before its argtypes were declared: ctypes would pass "
                                 "Python ints as 32-bit C ints")
        if self.argtypes:
            if len(args) != len(self.argtypes):
                raise TypeError(f"{self.__name__} takes {len(self.argtypes)} arguments, got {len(args)}")
            for kind, arg in zip(self.argtypes, args):
                kind.from_param(arg)  # raises TypeError as ctypes.ArgumentError would
        self._lib.calls.append(self.__name__)
        return self._impl(*args)


def _ptr(arg) -> int:
    """An address from whatever a c_void_p argument was given as."""
    if arg is None:
        return 0
    if isinstance(arg, int):
        return arg
    if isinstance(arg, ctypes.c_void_p):
        return arg.value or 0
    return ctypes.addressof(arg)


def _target(arg):
    """The object a ctypes.byref(...) argument points at."""
    return arg._obj if hasattr(arg, "_obj") else arg


@dataclass
class Op:
    """One operation on a stream: what, on which stream, whether its host side was pinned."""

    kind: str
    stream: int
    nbytes: int = 0
    pinned: bool = True


@dataclass
class FakeCudart:
    """libcudart for one GPU ("NVIDIA H200" by default), with host memory standing in for device memory."""

    gpu: str = "NVIDIA H200"
    compute_capability: tuple[int, int] = (9, 0)
    runtime_version: int = 12080
    driver_version: int = 12090
    device_count: int = 1
    calls: list[str] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    device: dict[int, Any] = field(default_factory=dict)  # address -> buffer of live cudaMalloc allocations
    pinned: dict[int, Any] = field(default_factory=dict)  # address -> buffer of live cudaHostAlloc allocations
    streams: dict[int, list] = field(default_factory=dict)  # live stream handle -> queued work
    allocations: list[tuple[str, int]] = field(default_factory=list)  # ("device"/"pinned", nbytes), every one

    def __post_init__(self):
        self._handles = itertools.count(0x7000)
        impls = {name[1:]: getattr(self, name) for name in dir(self) if name.startswith("_cuda")}
        for name, impl in impls.items():
            # cudaGetDeviceCount is the one call made before the signatures are declared (its defaults are right)
            setattr(self, name, _Fn(self, name, impl, declared_by_default=name == "cudaGetDeviceCount"))

    # --- what the tests look at -------------------------------------------------------------------------
    def count(self, name: str) -> int:
        """How many times a library function was called."""
        return self.calls.count(name)

    def live(self) -> int:
        """Allocations and streams not yet freed."""
        return len(self.device) + len(self.pinned) + len(self.streams)

    # --- what the stand-in tensorrt uses ------------------------------------------------------------------
    def device_memory(self, address: int, nbytes: int) -> Any:
        """A ctypes view of nbytes of live device memory at address (AssertionError otherwise)."""
        for base, buf in self.device.items():
            if base <= address and address + nbytes <= base + ctypes.sizeof(buf):
                return (ctypes.c_char * nbytes).from_address(address)
        raise AssertionError(f"0x{address:x} (+{nbytes} bytes) is not live device memory")

    def enqueue(self, stream: int, work: Callable[[], None], kind: str) -> None:
        """Queue work on a live stream (run at cudaStreamSynchronize, in order)."""
        if stream not in self.streams:
            raise AssertionError(f"{kind} on stream 0x{stream:x}, which is not a live stream")
        self.ops.append(Op(kind, stream))
        self.streams[stream].append(work)

    # --- the library (name -> _cuda<name> below) -------------------------------------------------------------
    def _cudaGetDeviceCount(self, count):
        _target(count).value = self.device_count
        return CUDA_SUCCESS if self.device_count else 100

    def _cudaGetDevice(self, device):
        _target(device).value = 0
        return CUDA_SUCCESS

    def _cudaDeviceGetAttribute(self, value, attr, device):
        values = {75: self.compute_capability[0], 76: self.compute_capability[1]}
        if attr not in values or device != 0:
            return INVALID_VALUE
        _target(value).value = values[attr]
        return CUDA_SUCCESS

    def _cudaRuntimeGetVersion(self, version):
        _target(version).value = self.runtime_version
        return CUDA_SUCCESS

    def _cudaDriverGetVersion(self, version):
        _target(version).value = self.driver_version
        return CUDA_SUCCESS

    def _cudaGetDeviceProperties_v2(self, props, device):
        target = _target(props)
        if ctypes.sizeof(target) < 1032:  # the CUDA 12 struct: a smaller buffer would be overrun
            raise AssertionError(f"cudaGetDeviceProperties given {ctypes.sizeof(target)} bytes")
        ctypes.memmove(target, self.gpu.encode() + b"\0", len(self.gpu) + 1)
        return CUDA_SUCCESS

    def _cudaGetErrorString(self, status):
        return _ERRORS.get(status, b"unknown error")

    def _cudaMalloc(self, ptr, nbytes):
        buf = ctypes.create_string_buffer(int(nbytes))
        self.device[ctypes.addressof(buf)] = buf
        self.allocations.append(("device", int(nbytes)))
        _target(ptr).value = ctypes.addressof(buf)
        return CUDA_SUCCESS

    def _cudaHostAlloc(self, ptr, nbytes, flags):
        buf = ctypes.create_string_buffer(int(nbytes))
        self.pinned[ctypes.addressof(buf)] = buf
        self.allocations.append(("pinned", int(nbytes)))
        _target(ptr).value = ctypes.addressof(buf)
        return CUDA_SUCCESS

    def _cudaFree(self, ptr):
        return CUDA_SUCCESS if self.device.pop(_ptr(ptr), None) is not None else INVALID_DEVICE_POINTER

    def _cudaFreeHost(self, ptr):
        return CUDA_SUCCESS if self.pinned.pop(_ptr(ptr), None) is not None else INVALID_VALUE

    def _cudaStreamCreateWithFlags(self, stream, flags):
        handle = next(self._handles)
        self.streams[handle] = []
        _target(stream).value = handle
        return CUDA_SUCCESS

    def _cudaStreamDestroy(self, stream):
        return CUDA_SUCCESS if self.streams.pop(_ptr(stream), None) is not None else INVALID_RESOURCE

    def _cudaStreamSynchronize(self, stream):
        work = self.streams.get(_ptr(stream))
        if work is None:
            return INVALID_RESOURCE
        self.ops.append(Op("synchronize", _ptr(stream)))
        while work:
            work.pop(0)()
        return CUDA_SUCCESS

    def _cudaMemcpyAsync(self, dst, src, nbytes, kind, stream):
        dst, src, stream, nbytes = _ptr(dst), _ptr(src), _ptr(stream), int(nbytes)
        device_side, host_side = (dst, src) if kind == _H2D else (src, dst)
        if kind not in (_H2D, _D2H):
            return INVALID_VALUE
        try:
            self.device_memory(device_side, nbytes)
        except AssertionError:
            return INVALID_VALUE
        pinned = any(base <= host_side and host_side + nbytes <= base + ctypes.sizeof(buf)
                     for base, buf in self.pinned.items())
        if stream not in self.streams:
            return INVALID_RESOURCE
        self.ops.append(Op("H2D" if kind == _H2D else "D2H", stream, nbytes, pinned))
        self.streams[stream].append(lambda: ctypes.memmove(dst, src, nbytes))
        return CUDA_SUCCESS
