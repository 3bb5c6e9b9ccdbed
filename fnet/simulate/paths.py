"""Where the optional real survey data lives (templates and BOSS spectra used by the simulator)."""

from __future__ import annotations

import os
from pathlib import Path

ENV_VAR = "FNET_SHARED_DATA"


def resolve_data_dir(data_dir: str | Path | None = None) -> Path | None:
    """Explicit path, else $FNET_SHARED_DATA, else ../shared/data next to the repo root or the cwd; None if absent."""
    if data_dir is not None:
        path = Path(data_dir).expanduser()
        return path if path.is_dir() else None
    candidates = []
    if os.environ.get(ENV_VAR):
        candidates.append(Path(os.environ[ENV_VAR]).expanduser())
    candidates.append(Path(__file__).resolve().parents[2].parent / "shared" / "data")
    candidates.append(Path.cwd().parent / "shared" / "data")
    for path in candidates:
        if path.is_dir():
            return path
    return None
