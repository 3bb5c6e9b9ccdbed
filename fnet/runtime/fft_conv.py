"""One 1-D convolution (ONNX Conv semantics: cross-correlation, explicit pads) by FFT or directly, over numpy or CuPy.

Why the FFT: a k-tap convolution over L pixels costs L·k multiply-adds per channel pair directly. Through a
length-n real FFT (n >= L + the larger pad, 7-smooth: fft_length) it costs one FFT per input and per output channel plus a
per-frequency channel mixing of ~n/2 complex multiply-adds per channel pair: ~2n real multiply-adds,
whatever k is. For FNet's k=500 and k=200 layers that is 100-250x fewer operations; for k=15 still ~4x.

Layout: activations are channels-last, (batch, length, channels). The FFTs run along the length axis, which
ducc0 (pocketfft's successor, SIMD across the contiguous channels) does as fast as along a contiguous axis,
and their output (batch, frequency, channels) is exactly what the channel mixing needs: at each frequency
a (batch x c_in) matrix whose rows are contiguous, multiplied by that frequency's (c_in x c_out) weights.
BLAS takes such strided matrices as they are, so the mixing is a batched GEMM with no transposes (the
ONNX layout (batch, channels, length) needed two transposes per convolution, which cost more than the
GEMMs themselves: docs/models.md, "Inference through the FFT"). Complex products are done as real ones: a complex64
(B, c_in) row block viewed as float32 pairs times a real (2 c_in, 2 c_out) matrix [[re, im], [-im, re]]
per frequency, faster than numpy's complex matmul on these small matrices (OpenBLAS sgemm vs cgemm).
Direct convolutions are channels-last too: one (B·L, c_in) x (c_in, c_out) GEMM per tap.

FFT engines, fastest first: ducc0 (the `fft` extra), scipy's pocketfft, numpy.fft; cuFFT on CuPy.

Which way each convolution runs is CONV_RULE: a cost model in seconds per unit of work (FFT points·log2,
mixing pairs·frequencies, direct multiply-adds) whose constants were measured on the 2-core development
machine by ``python benchmarks/bench_fft.py --conv-rule``; the same command re-measures every layer both
ways and prints where the rule and the stopwatch disagree.
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

# Seconds per unit and spectrum, fitted by `python benchmarks/bench_fft.py --conv-rule --batch 8` over 54
# convolution shapes (k 3..125, 8..64 channels, 578..4618 pixels) on the development machine (Intel Xeon
# 2.8 GHz, 2 cores, ducc0, OpenBLAS): an rfft+irfft per point·log2(n), the mixing per channel pair per
# frequency, a direct convolution per multiply-add. Only their ratios matter for the choice.
COST_FFT_POINT = 7.64e-10
COST_MIX_PAIR = 2.53e-9
COST_DIRECT_MAC = 1.81e-10
CONV_RULE = ("FFT when its modelled cost (FFT points·log2 n, channel pairs·frequencies) is below a direct "
             "convolution's (multiply-adds); 1x1 kernels always directly")
MIX_TASKS_PER_THREAD = 2  # the mixing's frequencies in 2 blocks per worker thread: fewer, larger tasks were faster
                          # than blocks of 32..256 frequencies at B=32, c=32 (one task per thread: less balanced)


def next_fast_length(n: int, twos: int = 1) -> int:
    """Smallest 2^a 3^b 5^c 7^d >= n with a >= twos (1 for n <= 1): the FFT sizes FFT libraries do fastest.

    Why 7, and why a factor of 2 (`python benchmarks/bench_fft.py --lengths` measures both engines over the
    sizes FNet's layers may use): with ducc0 on (32, n, 32) float32 arrays the time per point of an r2c + c2r
    pair differs less than this VM's run-to-run noise among even 5- and 7-smooth sizes from 4704 to 5120 and
    is higher at the odd ones (4725, 5103), so the runtime takes the smallest even size: 4900 points for
    FNet's k=500 layers. torch's CPU FFT (MKL) is 1.5-2x slower at sizes with fewer than 2^4 in them
    (4802, 4860, 4900, 5000) than at 4704, 4800, 5040 and 5120, so training asks for twos=4.
    """
    if n <= 1:
        return 1
    best = 1 << max((n - 1).bit_length(), twos)
    p7 = 1 << twos
    while p7 < best:
        p57 = p7
        while p57 < best:
            p357 = p57
            while p357 < best:
                size = p357
                while size < n:
                    size *= 2
                best = min(best, size)
                p357 *= 3
            p57 *= 5
        p7 *= 7
    return best


def fft_length(length: int, k: int, pads: tuple[int, int], twos: int = 1) -> int:
    """The FFT length for `length` input pixels, a k-tap kernel and (left, right) zero pads.

    Why not length + both pads: the circular correlation may wrap around as long as what it wraps onto is
    zero. With the input at [left, left + length) of an n-long zero buffer, output m reads buffer indices
    m .. m + k - 1 (mod n); those past n read index - n, which lands in the left zeros when
    n >= length + right. So n >= length + max(left, right) (the data must fit too), and n must hold the
    outputs and the kernel. For FNet's k=500 layers that is 4868 points (FFT 4900) instead of 5117 (5120).
    """
    left, right = pads
    return next_fast_length(max(length + max(left, right), length + left + right - k + 1, k), twos)


def use_fft(k: int, c_in: int, c_out: int, length: int, n: int) -> bool:
    """CONV_RULE: does a k-tap c_in->c_out convolution over `length` padded pixels (FFT length n) run through the FFT?"""
    if k == 1:
        return False
    fft = COST_FFT_POINT * (c_in + c_out) * n * math.log2(n) + COST_MIX_PAIR * c_in * c_out * (n // 2 + 1)
    direct = COST_DIRECT_MAC * c_in * c_out * k * (length - k + 1)
    return fft < direct


FFT_ENGINES = ("ducc0", "scipy", "numpy")  # the CPU FFT engines, fastest first


def _pocketfft_with_out() -> Any:
    """scipy's pocketfft binding, whose r2c/c2r write into a given array (scipy.fft itself always allocates).

    Why bother: every fresh output here is tens of MB, and in a VM each new page costs a fault; writing
    into buffers kept between batches leaves no page faults after the first batch. The binding
    is private, so it is checked on a tiny transform and dropped (scipy.fft used) if it ever changes.
    """
    try:
        from scipy.fft._pocketfft import pypocketfft as pocketfft

        x = np.arange(16, dtype=np.float32).reshape(1, 8, 2)
        out = np.empty((1, 5, 2), dtype=np.complex64)
        pocketfft.r2c(x, axes=[1], forward=True, inorm=0, out=out, nthreads=1)
        back = np.empty((1, 8, 2), dtype=np.float32)
        pocketfft.c2r(out.copy(), axes=[1], lastsize=8, forward=False, inorm=2, out=back, nthreads=1)
        ok = np.allclose(back, x, atol=1e-4) and np.allclose(out, np.fft.rfft(x, axis=1), atol=1e-3)
        return pocketfft if ok else None
    except Exception:  # absent or changed: the public API is used instead
        return None


class _FftEngine:
    """Real FFTs along axis 1 of (B, n, C) arrays, written into given buffers where the engine allows it.

    Engines, fastest first on the development machine (`python benchmarks/bench_fft.py --engines`): ducc0
    (the `fft` extra; pocketfft's successor, SIMD across the contiguous channels, AVX-512 where the CPU has
    it), scipy's pocketfft, numpy.fft (single-threaded); cuFFT through CuPy on a GPU.
    """

    def __init__(self, xp: Any, threads: int, first: str | None = None):
        """The fastest engine installed, or the fastest from `first` on (one of FFT_ENGINES) when given."""
        self.xp, self.threads = xp, threads
        self.name, self._ducc, self._pocketfft, self._scipy = "numpy.fft", None, None, None
        if xp is not np:
            self.name = "cufft"
            return
        if first is not None and first not in FFT_ENGINES:
            raise ValueError(f"unknown FFT engine {first!r}; known: {', '.join(FFT_ENGINES)}")
        candidates = FFT_ENGINES[FFT_ENGINES.index(first or FFT_ENGINES[0]):]
        if "ducc0" in candidates:
            try:
                import ducc0

                self._ducc, self.name = ducc0.fft, f"ducc0 {ducc0.__version__}"
                return
            except ImportError:
                pass
        if "scipy" in candidates:
            try:
                import scipy
                import scipy.fft

                self._scipy, self.name = scipy.fft, f"scipy.fft {scipy.__version__}"
                self._pocketfft = _pocketfft_with_out()
            except ImportError:
                pass

    @property
    def writes_out(self) -> bool:
        """Whether rfft/irfft write into a given `out` buffer (else they return new arrays)."""
        return self._ducc is not None or self._pocketfft is not None

    def rfft(self, x, n: int, out=None):
        """Unnormalised real FFT of length n along axis 1 (x already n long when `out` is given); complex64."""
        if out is not None and x.shape[1] == n:
            if self._ducc is not None:
                return self._ducc.r2c(x, axes=(1,), forward=True, out=out, nthreads=self.threads)
            if self._pocketfft is not None:
                return self._pocketfft.r2c(x, axes=[1], forward=True, inorm=0, out=out, nthreads=self.threads)
        if self._scipy is not None:
            return self._scipy.rfft(x, n=n, axis=1, workers=self.threads)
        return self.xp.fft.rfft(x, n=n, axis=1).astype(np.complex64, copy=False)  # numpy 1.x computes in float64

    def irfft(self, z, n: int, out=None):
        """Inverse of rfft (divided by n), length n along axis 1, float32; may overwrite z."""
        if out is not None:
            if self._ducc is not None:
                return self._ducc.c2r(z, axes=(1,), lastsize=n, forward=False, inorm=2, out=out,
                                      nthreads=self.threads, allow_overwriting_input=True)
            if self._pocketfft is not None:
                return self._pocketfft.c2r(z, axes=[1], lastsize=n, forward=False, inorm=2, out=out,
                                           nthreads=self.threads)
        if self._scipy is not None:
            return self._scipy.irfft(z, n=n, axis=1, workers=self.threads)
        return self.xp.fft.irfft(z, n=n, axis=1).astype(np.float32, copy=False)


def _single_threaded_blas() -> Callable[[], Any]:
    """A context factory that keeps BLAS to one thread while the FFT backend runs (a no-op without threadpoolctl).

    Why: the backend splits its GEMMs over its own worker threads; an OpenBLAS that also threads them
    puts four busy threads on two cores, and its idle threads spin after each call, stealing the cores
    from the FFTs that follow. The limit is process-wide while a batch runs (threadpoolctl sets BLAS's
    global thread count and restores it after), one more reason why one backend runs one batch at a time.
    """
    try:
        from threadpoolctl import ThreadpoolController

        controller = ThreadpoolController()
        return lambda: controller.limit(limits=1, user_api="blas")
    except ImportError:
        return contextlib.nullcontext


class ArrayOps:
    """What the convolutions need from an array module: numpy with an FFT engine and worker threads, or CuPy.

    Also the memory policy: `scratch` buffers (consumed before the next call) and a `pool` of activation
    buffers handed back by the graph runner when their last reader is done, so that a batch allocates
    nothing new after the first.
    """

    def __init__(self, xp: Any, threads: int | None = None, engine: str | None = None):
        self.xp = xp
        self.threads = max(1, int(threads or os.cpu_count() or 1))
        self.engine = _FftEngine(xp, self.threads, engine)
        self.workers: ThreadPoolExecutor | None = None
        self.blas_limit: Callable[[], Any] = contextlib.nullcontext
        self._scratch: dict[tuple, Any] = {}
        self._free: dict[tuple, list] = {}  # (shape, dtype) -> activation buffers nobody reads any more
        self._pooled: dict[int, Any] = {}  # id -> every buffer the pool handed out
        if xp is np and self.threads > 1:
            self.workers = ThreadPoolExecutor(self.threads, thread_name_prefix="fnet-fft")
            self.blas_limit = _single_threaded_blas()

    @property
    def label(self) -> str:
        """The array module and FFT engine, e.g. "numpy+ducc0 0.42.0" or "cupy"."""
        return "cupy" if self.xp is not np else f"numpy+{self.engine.name}"

    def rfft(self, x, n: int, out=None):
        """Unnormalised real FFT of length n along the length axis (1)."""
        return self.engine.rfft(x, n, out)

    def irfft(self, z, n: int, out=None):
        """Inverse of rfft (divided by n) along axis 1; z may be overwritten."""
        return self.engine.irfft(z, n, out)

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

    def map_batch(self, fn, batch: int) -> None:
        """fn(slice) over the batch in one part per worker thread (one part, one launch, on CuPy)."""
        self.map_blocks(fn, batch, -(-batch // (self.threads if self.workers is not None else 1)))


class Conv1d:
    """An ONNX Conv (1-D, group 1, stride 1, dilation 1) with its weights baked in; runs on (B, L, c_in) arrays."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, pads: tuple[int, int], ops: ArrayOps):
        self.w = np.asarray(weight, dtype=np.float32)
        self.c_out, self.c_in, self.k = self.w.shape
        self.bias = None if bias is None else np.asarray(bias, dtype=np.float32)
        self.pads = (int(pads[0]), int(pads[1]))
        self.ops = ops
        xp = ops.xp
        self.bias_x = None if self.bias is None else xp.asarray(self.bias)
        self.taps = xp.asarray(np.ascontiguousarray(self.w.transpose(2, 1, 0)))  # (k, c_in, c_out) for the direct path
        self._spectra: dict[int, Any] = {}  # FFT length -> mixing weights, computed once per length
        self.last_route = ""  # "fft" or "direct": how the last call ran (fnet-run --backend auto looks)
        self.relu_input = False  # set by the graph planner when a Relu feeds only this convolution: fused here

    def uses_fft(self, length: int) -> bool:
        """Whether an input of `length` pixels goes through the FFT (CONV_RULE)."""
        return use_fft(self.k, self.c_in, self.c_out, length + sum(self.pads), fft_length(length, self.k, self.pads))

    def __call__(self, x, *_baked):
        """y = Conv(x) for x (B, L, c_in) (weight/bias arguments ignored: baked in); (B, L + pads - k + 1, c_out)."""
        out_len = x.shape[1] + sum(self.pads) - self.k + 1
        if self.uses_fft(x.shape[1]):
            self.last_route = "fft"
            return self._fft(x, fft_length(x.shape[1], self.k, self.pads), out_len)
        self.last_route = "direct"
        return self._direct(x, out_len)

    def _padded(self, x, n: int):
        """x (after the fused ReLU, if any) at the left pad inside a zero buffer of length n, shared between calls."""
        left = self.pads[0]
        buffer = self.ops.scratch(("padded", x.shape[0], n, self.c_in, left, x.shape[1]), (x.shape[0], n, self.c_in),
                                  np.float32, zeroed=True)
        self._copy_input(x, buffer[:, left:left + x.shape[1]])
        return buffer

    def _copy_input(self, x, out) -> None:
        """out[...] = x, rectified when a ReLU is fused here: a memory-bound pass, split over the batch."""
        def copy(s: slice) -> None:
            if self.relu_input:
                self.ops.xp.maximum(x[s], 0, out=out[s])
            else:
                out[s] = x[s]
        self.ops.map_batch(copy, x.shape[0])

    def _direct(self, x, out_len: int):
        """Tap by tap: y += x[:, j:j + out_len] @ taps[j], each a (B·L, c_in) x (c_in, c_out) GEMM, over the batch."""
        ops, xp = self.ops, self.ops.xp
        batch = x.shape[0]
        if self.k == 1 and not any(self.pads):
            if self.relu_input:
                source = ops.scratch(("rectified",), x.shape, np.float32)
                self._copy_input(x, source)
            else:
                source = x
        else:
            source = self._padded(x, x.shape[1] + sum(self.pads))
        y = ops.take((batch, out_len, self.c_out))

        # one input channel: a broadcast product per tap (a GEMM with an inner dimension of 1 is far slower)
        product_of = xp.multiply if self.c_in == 1 else xp.matmul
        taps = self.taps[:, 0] if self.c_in == 1 else self.taps

        def convolve(s: slice) -> None:
            product_of(source[s, :out_len], taps[0], out=y[s])
            if self.k > 1:
                product = ops.scratch(("tap", threading.get_ident()), y[s].shape, np.float32)
                for j in range(1, self.k):
                    y[s] += product_of(source[s, j:j + out_len], taps[j], out=product)
            if self.bias_x is not None:
                y[s] += self.bias_x
        ops.map_batch(convolve, batch)
        return y

    def _mixing_weights(self, n: int):
        """conj(rfft(kernel)) for FFT length n, arranged for the mixing path this layer takes."""
        if n not in self._spectra:
            xp = self.ops.xp
            spectrum = np.conj(np.fft.rfft(self.w.astype(np.float64), n=n, axis=-1)).transpose(2, 1, 0)  # (F, c_in, c_out)
            if min(self.c_in, self.c_out) <= 2 or xp is not np:  # (F, c_in, c_out) complex: products, cuBLAS
                weights = spectrum.astype(np.complex64)
            else:  # real GEMM on interleaved pairs: (F, 2 c_in, 2 c_out) [[re, im], [-im, re]]
                weights = np.empty((spectrum.shape[0], 2 * self.c_in, 2 * self.c_out), dtype=np.float32)
                weights[:, 0::2, 0::2], weights[:, 0::2, 1::2] = spectrum.real, spectrum.imag
                weights[:, 1::2, 0::2], weights[:, 1::2, 1::2] = -spectrum.imag, spectrum.real
            self._spectra[n] = xp.asarray(np.ascontiguousarray(weights))
        return self._spectra[n]

    def _fft(self, x, n: int, out_len: int):
        ops, xp = self.ops, self.ops.xp
        batch, frequencies = x.shape[0], n // 2 + 1
        given = ops.scratch(("spectrum",), (batch, frequencies, self.c_in), np.complex64) if ops.engine.writes_out \
            else None
        spectrum = ops.rfft(self._padded(x, n), n, out=given)  # (B, F, c_in)
        mixed = self._mix(spectrum, self._mixing_weights(n))
        if self.bias is not None:  # a constant b is n·b in the DC bin of an unnormalised rfft: the bias costs nothing
            mixed[:, 0, :] += xp.asarray(n * self.bias)
        # circular correlation over n (fft_length): what outputs [0, out_len) wrap onto is zero padding
        out = ops.take((batch, n, self.c_out)) if ops.engine.writes_out else None  # else irfft allocates
        return ops.irfft(mixed, n, out=out)[:, :out_len]

    def _mix(self, spectrum, weights):
        """(B, F, c_in) input spectra -> (B, F, c_out): at each frequency, the rows times that frequency's weights."""
        ops, xp = self.ops, self.ops.xp
        batch, frequencies = spectrum.shape[:2]
        mixed = ops.scratch(("mixed",), (batch, frequencies, self.c_out), np.complex64)
        if self.c_in == 1:  # (B, F, 1) * (F, c_out)
            ops.map_batch(lambda s: xp.multiply(spectrum[s], weights[:, 0], out=mixed[s]), batch)
        elif self.c_out == 1:  # (B, F, c_in) . (F, c_in)
            ops.map_batch(lambda s: xp.sum(xp.multiply(spectrum[s], weights[:, :, 0]), axis=2, out=mixed[s, :, 0]), batch)
        elif min(self.c_in, self.c_out) <= 2:
            def products(s: slice) -> None:
                mixed[s] = xp.einsum("bfi,fio->bfo", spectrum[s], weights)
            ops.map_batch(products, batch)
        elif xp is not np:  # one batched complex GEMM over the frequencies (cuBLAS)
            mixed[...] = xp.matmul(spectrum.transpose(1, 0, 2), weights).transpose(1, 0, 2)
        else:
            def mix(s: slice) -> None:  # (f, B, 2 c_in) @ (f, 2 c_in, 2 c_out): strided rows, no copies
                xp.matmul(spectrum[:, s].transpose(1, 0, 2).view(np.float32), weights[s],
                          out=mixed[:, s].transpose(1, 0, 2).view(np.float32))
            ops.map_blocks(mix, frequencies, -(-frequencies // (MIX_TASKS_PER_THREAD * ops.threads)))
        return mixed
