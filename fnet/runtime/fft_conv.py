"""One 1-D convolution (ONNX Conv semantics: cross-correlation, explicit pads) by FFT or directly, over numpy or CuPy.

Why the FFT: a k-tap convolution over L pixels costs L·k multiply-adds per channel pair directly. Through a
length-n real FFT (n >= L + pads, 5-smooth) it costs one FFT per input and per output channel plus a
per-frequency channel mixing of ~n/2 complex multiply-adds per channel pair: ~2n real multiply-adds,
whatever k is. For FNet's k=500 and k=200 layers that is 100-250x fewer operations; for k=15 still ~4x.

Layout: activations stay in the ONNX layout (batch, channels, length); FFTs run along the contiguous
last axis (faster than along a strided one in throwaway micro-benchmarks). The mixing needs the frequency axis first,
so it runs over blocks of frequencies, each transposed while it is in cache, on worker threads.
Complex products are done as real ones: a complex64 (B, c_in) row block viewed as float32 pairs times a
real (2 c_in, 2 c_out) matrix [[re, im], [-im, re]] per frequency is one real batched GEMM, which was
faster than numpy's complex matmul in the same micro-benchmarks (OpenBLAS sgemm vs cgemm on small matrices).

Which way each convolution runs is CONV_RULE: a cost model in seconds per unit of work (FFT points·log2,
mixing pairs·frequencies, direct multiply-adds) whose constants were measured on the 2-core development
machine by ``python benchmarks/bench_fft.py --conv-rule``; the same command re-measures every layer both
ways and prints where the rule and the stopwatch disagree.
"""

from __future__ import annotations

import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

# Seconds per unit and spectrum, fitted by `python benchmarks/bench_fft.py --conv-rule --batch 8` over 54
# convolution shapes (k 3..125, 8..64 channels, 578..4618 pixels) on the development machine (AMD EPYC, 2 cores,
# scipy.fft, OpenBLAS): an rfft+irfft per point·log2(n), the mixing per channel pair per frequency, a direct
# convolution per multiply-add. Only their ratios matter for the choice.
COST_FFT_POINT = 1.36e-9
COST_MIX_PAIR = 1.81e-9
COST_DIRECT_MAC = 2.43e-10
CONV_RULE = ("FFT when its modelled cost (FFT points·log2 n, channel pairs·frequencies) is below a direct "
             "convolution's (multiply-adds); 1x1 kernels always directly")
MIX_BLOCK_BYTES = 1 << 20  # one mixing block's (B, c, f) complex slice: ~L2-sized (128 frequencies at B=32, c=32
                            # measured best of 16..512 there)


def mix_block(batch: int, channels: int) -> int:
    """Frequencies per mixing block: the largest power of two whose slice stays within MIX_BLOCK_BYTES (16..512)."""
    f = MIX_BLOCK_BYTES // max(1, 8 * batch * channels)
    return int(min(512, max(16, 1 << max(0, f.bit_length() - 1))))


def next_fast_length(n: int) -> int:
    """Smallest 2^a 3^b 5^c >= n (FFT sizes both pocketfft and cuFFT handle fastest)."""
    best = 1 << max(n - 1, 0).bit_length()
    p5 = 1
    while p5 < best:
        p35 = p5
        while p35 < best:
            size = p35
            while size < n:
                size *= 2
            best = min(best, size)
            p35 *= 3
        p5 *= 5
    return best


def use_fft(k: int, c_in: int, c_out: int, length: int) -> bool:
    """CONV_RULE: does a k-tap c_in->c_out convolution over `length` padded pixels run through the FFT?"""
    if k == 1:
        return False
    n = next_fast_length(length)
    fft = COST_FFT_POINT * (c_in + c_out) * n * math.log2(n) + COST_MIX_PAIR * c_in * c_out * (n // 2 + 1)
    direct = COST_DIRECT_MAC * c_in * c_out * k * (length - k + 1)
    return fft < direct


def _pocketfft_with_out() -> Any:
    """scipy's pocketfft binding, whose r2c/c2r write into a given array (scipy.fft itself always allocates).

    Why bother: every fresh output here is tens of MB, and in a VM each new page costs a fault; writing
    into buffers kept between batches leaves no page faults after the first batch. The binding
    is private, so it is checked on a tiny transform and dropped (scipy.fft used) if it ever changes.
    """
    try:
        from scipy.fft._pocketfft import pypocketfft as pocketfft

        x = np.arange(8, dtype=np.float32)
        out = np.empty(5, dtype=np.complex64)
        pocketfft.r2c(x, axes=[0], forward=True, inorm=0, out=out, nthreads=1)
        back = np.empty(8, dtype=np.float32)
        pocketfft.c2r(out, axes=[0], lastsize=8, forward=False, inorm=2, out=back, nthreads=1)
        return pocketfft if np.allclose(back, x, atol=1e-5) and np.allclose(out, np.fft.rfft(x), atol=1e-4) else None
    except Exception:  # absent or changed: the public API below is used instead
        return None


class ArrayOps:
    """What the convolutions need from an array module: numpy with scipy.fft and worker threads, or CuPy.

    Also the memory policy: `scratch` buffers (consumed before the next call) and a `pool` of activation
    buffers handed back by the graph runner when their last reader is done, so that a batch allocates
    nothing new after the first.
    """

    def __init__(self, xp: Any, threads: int | None = None):
        self.xp = xp
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self.fft_kwargs: dict = {}
        self.fft = xp.fft
        self.pocketfft = None
        self.workers: ThreadPoolExecutor | None = None
        self._scratch: dict[tuple, Any] = {}
        self._free: dict[tuple, list] = {}  # (shape, dtype) -> activation buffers nobody reads any more
        self._pooled: dict[int, Any] = {}  # id -> every buffer the pool handed out
        if xp is np:
            try:
                import scipy.fft as sfft

                self.fft, self.fft_kwargs = sfft, {"workers": self.threads}
                self.pocketfft = _pocketfft_with_out()
            except ImportError:
                pass
            if self.threads > 1:
                self.workers = ThreadPoolExecutor(self.threads, thread_name_prefix="fnet-fft")

    @property
    def label(self) -> str:
        """numpy+scipy.fft, numpy or cupy."""
        if self.xp is not np:
            return "cupy"
        return "numpy+scipy.fft" if self.fft_kwargs else "numpy"

    def rfft(self, x, n: int, out=None):
        """Unnormalised real FFT of length n along the last axis (x already n long when `out` is given)."""
        if out is not None and self.pocketfft is not None and x.shape[-1] == n:
            return self.pocketfft.r2c(x, axes=[x.ndim - 1], forward=True, inorm=0, out=out, nthreads=self.threads)
        return self.fft.rfft(x, n=n, axis=-1, **self.fft_kwargs)

    def irfft(self, z, n: int, out=None):
        """Inverse of rfft (divided by n), length n along the last axis."""
        if out is not None and self.pocketfft is not None:
            return self.pocketfft.c2r(z, axes=[z.ndim - 1], lastsize=n, forward=False, inorm=2, out=out,
                                      nthreads=self.threads)
        return self.fft.irfft(z, n=n, axis=-1, **self.fft_kwargs)

    def scratch(self, key: tuple, shape: tuple, dtype, zeroed: bool = False):
        """A buffer kept between calls (one per key and shape): no allocation, page faults or zeroing per batch.

        Only for values consumed before the next call with the same key; `zeroed` buffers must have their
        written part in the same place every time (the key says where), so the rest stays zero.
        """
        full_key = key + (tuple(shape), np.dtype(dtype).str)
        buffer = self._scratch.get(full_key)
        if buffer is None:
            if len(self._scratch) > 256:  # many batch shapes: drop the old buffers rather than grow without bound
                self._scratch.clear()
            buffer = self._scratch[full_key] = (self.xp.zeros if zeroed else self.xp.empty)(shape, dtype=dtype)
        return buffer

    def take(self, shape: tuple, dtype=np.float32):
        """An activation buffer from the pool (or a new one); the graph runner gives it back with `give`."""
        if self.xp is not np:  # CuPy has its own memory pool
            return self.xp.empty(shape, dtype=dtype)
        free = self._free.get((tuple(shape), np.dtype(dtype).str))
        if free:
            return free.pop()
        if len(self._pooled) > 256:  # many batch shapes seen: forget the pool rather than grow without bound
            self._pooled.clear()
            self._free.clear()
        buffer = np.empty(shape, dtype=dtype)
        self._pooled[id(buffer)] = buffer
        return buffer

    def owner(self, array) -> int | None:
        """The pool buffer an array is (a view of), or None when the pool did not make it."""
        base = array if getattr(array, "base", None) is None else array.base
        return id(base) if self._pooled.get(id(base)) is base else None

    def give(self, owner: int) -> None:
        """Return a pool buffer nobody reads any more."""
        buffer = self._pooled.get(owner)
        if buffer is not None:
            self._free.setdefault((buffer.shape, buffer.dtype.str), []).append(buffer)

    def map_blocks(self, fn, total: int, block: int) -> None:
        """fn(slice) over [0, total) in blocks, on the worker threads when there are any (numpy releases the GIL)."""
        slices = [slice(i, min(i + block, total)) for i in range(0, total, block)]
        if self.workers is None or len(slices) == 1:
            for s in slices:
                fn(s)
        else:
            for future in [self.workers.submit(fn, s) for s in slices]:
                future.result()


class Conv1d:
    """An ONNX Conv (1-D, group 1, stride 1, dilation 1) with its weights baked in; run on (B, c_in, L) arrays."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, pads: tuple[int, int], ops: ArrayOps):
        self.w = np.asarray(weight, dtype=np.float32)
        self.c_out, self.c_in, self.k = self.w.shape
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32)
        self.pads = (int(pads[0]), int(pads[1]))
        self.ops = ops
        xp = ops.xp
        self.bias_x = None if self.bias is None else xp.asarray(self.bias[None, :, None])
        self.taps = xp.asarray(np.ascontiguousarray(self.w.transpose(2, 0, 1)))  # (k, c_out, c_in) for the direct path
        self._spectra: dict[int, Any] = {}  # FFT length -> mixing weights, computed once per length
        self.last_route = ""  # "fft" or "direct": how the last call ran (fnet-run --backend auto looks)
        self.relu_input = False  # set by the graph planner when a Relu feeds only this convolution: fused here

    def uses_fft(self, length: int) -> bool:
        """Whether an input of `length` pixels goes through the FFT (CONV_RULE)."""
        return use_fft(self.k, self.c_in, self.c_out, length + sum(self.pads))

    def __call__(self, x, *_baked):
        """y = Conv(x) for x (B, c_in, L) (weight/bias arguments ignored: baked in); (B, c_out, L + pads - k + 1)."""
        length = x.shape[-1] + sum(self.pads)
        if self.uses_fft(x.shape[-1]):
            self.last_route = "fft"
            return self._fft(x, next_fast_length(length), length - self.k + 1)
        self.last_route = "direct"
        return self._direct(x, length - self.k + 1)

    def _padded(self, x, n: int):
        """x (after the fused ReLU, if any) at the left pad inside a zero buffer of length n, shared between calls."""
        left = self.pads[0]
        buffer = self.ops.scratch(("padded", x.shape[0], self.c_in, n, left, x.shape[-1]), (x.shape[0], self.c_in, n),
                                  np.float32, zeroed=True)
        middle = buffer[:, :, left:left + x.shape[-1]]

        def copy(s: slice) -> None:  # a memory-bound pass: split over the batch, one part per worker thread
            if self.relu_input:
                self.ops.xp.maximum(x[s], 0, out=middle[s])
            else:
                middle[s] = x[s]
        parts = self.ops.threads if self.ops.workers is not None else 1  # CuPy: one launch, not many small ones
        self.ops.map_blocks(copy, x.shape[0], -(-x.shape[0] // parts))
        return buffer

    def _direct(self, x, out_len: int):
        xp = self.ops.xp
        if self.k == 1 and not any(self.pads):
            y = xp.matmul(self.taps[0], xp.maximum(x, 0) if self.relu_input else x,
                          out=self.ops.take((x.shape[0], self.c_out, x.shape[-1])))
        else:
            xpad = self._padded(x, x.shape[-1] + sum(self.pads))
            y = xp.matmul(self.taps[0], xpad[:, :, :out_len])
            for j in range(1, self.k):
                y += xp.matmul(self.taps[j], xpad[:, :, j:j + out_len])
        if self.bias_x is not None:
            y += self.bias_x
        return y

    def _mixing_weights(self, n: int):
        """conj(rfft(kernel)) for FFT length n, arranged for the mixing path this layer takes."""
        if n not in self._spectra:
            xp = self.ops.xp
            spectrum = np.conj(np.fft.rfft(self.w.astype(np.float64), n=n, axis=-1))  # (c_out, c_in, F)
            if min(self.c_in, self.c_out) <= 2:  # broadcast products: (c_in, c_out, F) complex
                weights = spectrum.transpose(1, 0, 2).astype(np.complex64)
            else:  # real GEMM on interleaved pairs: (F, 2 c_in, 2 c_out) [[re, im], [-im, re]]
                s = spectrum.transpose(2, 1, 0)
                weights = np.empty((s.shape[0], 2 * self.c_in, 2 * self.c_out), dtype=np.float32)
                weights[:, 0::2, 0::2], weights[:, 0::2, 1::2] = s.real, s.imag
                weights[:, 1::2, 0::2], weights[:, 1::2, 1::2] = -s.imag, s.real
            self._spectra[n] = xp.asarray(np.ascontiguousarray(weights))
        return self._spectra[n]

    def _fft(self, x, n: int, out_len: int):
        ops, xp = self.ops, self.ops.xp
        batch, frequencies = x.shape[0], n // 2 + 1
        spectrum = ops.rfft(self._padded(x, n), n, out=ops.scratch(("spectrum",), (batch, self.c_in, frequencies),
                                                                       np.complex64))  # (B, c_in, F)
        weights = self._mixing_weights(n)
        if self.c_in == 1:
            mixed = spectrum * weights  # (B, 1, F) * (1, c_out, F)
        elif min(self.c_in, self.c_out) <= 2:
            mixed = (spectrum[:, :, None, :] * weights[None]).sum(axis=1)  # (B, c_out, F)
        else:
            mixed = ops.scratch(("mixed",), (batch, self.c_out, frequencies), np.complex64)

            def mix(s: slice) -> None:
                f = s.stop - s.start  # per-thread buffers: no allocation per block
                block = ops.scratch(("mix-in", threading.get_ident()), (f, batch, self.c_in), np.complex64)
                product = ops.scratch(("mix-out", threading.get_ident()), (f, batch, self.c_out), np.complex64)
                block[...] = spectrum[:, :, s].transpose(2, 0, 1)  # (f, B, c_in), in cache
                xp.matmul(block.view(np.float32), weights[s], out=product.view(np.float32))  # (f, B, c_out)
                mixed[:, :, s] = product.transpose(1, 2, 0)
            block = mix_block(batch, max(self.c_in, self.c_out)) if xp is np else frequencies
            ops.map_blocks(mix, frequencies, block)
        if self.bias is not None:  # a constant b is n·b in the DC bin of an unnormalised rfft: the bias costs nothing
            mixed[:, :, 0] += xp.asarray(n * self.bias)
        # circular correlation over n >= padded length: outputs [0, out_len) never see the wrap-around
        out = ops.take((batch, self.c_out, n)) if ops.pocketfft is not None else None  # else irfft allocates
        return ops.irfft(mixed, n, out=out)[:, :, :out_len]
