"""fnet-bench: the latency benchmark of the toolkit's backends (torch eager, ONNX Runtime, FFT, TensorRT), one table.

Runs every backend on the same network and the same inputs: spectra/s, p50/p99 latency per batch, Δv
parity against a reference, ratios to the slowest. Torch is imported only when a run needs it.
"""

from .command import bench_command

__all__ = ["bench_command"]
