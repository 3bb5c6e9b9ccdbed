"""Stand-ins for GPU libraries, so the TensorRT paths run (not skip) on a machine without a GPU.

tensorrt_standin.make_tensorrt(version): a `tensorrt` module for 10.x or 11.x that enforces the real
bindings' rules; cudart_standin.FakeCudart: libcudart with host memory as "device" memory.
"""
