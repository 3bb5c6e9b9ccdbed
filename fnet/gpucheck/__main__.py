"""python -m fnet.gpucheck: fnet-gpu-check from a checkout that was never pip-installed."""

from .command import gpu_check_command

gpu_check_command(prog_name="fnet-gpu-check")
