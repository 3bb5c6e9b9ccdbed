"""The dataset package's error, and the fixed failure reasons failures.csv and the manifest count."""

from __future__ import annotations

from pathlib import Path

from ..runtime.errors import FNetError


class DatasetBuildError(FNetError):
    """A catalog, spectra tree or output folder cannot be used to build a dataset."""

    def __init__(self, path: str | Path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


# Failure reasons (fixed strings so the manifest can count them).
R_NOT_FOUND = "file not found"
R_UNREADABLE = "unreadable file"
R_NOT_IN_FILE = "spectrum not in file"
R_MISMATCH = "identity mismatch"
R_NO_GOOD = "no good pixels"
R_LOW_COVERAGE = "coverage below min_coverage"
R_PREPROCESS = "preprocessing failed"
R_DUPLICATE = "duplicate catalog row"
R_BAD_Z = "invalid redshift"
R_PAPER_EXCLUDED = "excluded by paper split"
R_FILTERED = "filtered"
