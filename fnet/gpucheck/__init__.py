"""fnet-gpu-check: one command that trains, exports, checks and benchmarks FNet on a GPU machine (toy size elsewhere)."""

from .command import gpu_check_command

__all__ = ["gpu_check_command"]
