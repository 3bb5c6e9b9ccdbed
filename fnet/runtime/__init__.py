"""Torch-free runtime: read spectra, put them on the model grid, run an ONNX/TensorRT model, write a catalog.

Nothing in this package may import torch (tests/test_no_torch.py proves it).
"""
