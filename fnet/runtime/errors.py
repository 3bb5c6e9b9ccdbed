"""Errors raised by the runtime; each names the file and what is wrong."""


class FNetError(Exception):
    """Base class for every error the toolkit raises on purpose."""


class SpectrumReadError(FNetError):
    """A spectra file cannot be read: missing, not FITS, truncated, unsupported layout or empty."""

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ModelPackageError(FNetError):
    """An ONNX file does not follow the model package contract (docs/model-package.md)."""

    def __init__(self, path: str, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class BackendUnavailable(FNetError):
    """The requested inference backend (CUDA, TensorRT, ...) is not installed or has no device."""


class CatalogFileError(SpectrumReadError):
    """The file is a catalog written by fnet-run, not spectra (skipped when found in a folder)."""
