"""Atomic output, the one way the toolkit writes files: a temporary name in the destination folder, renamed when complete.

atomic_path (any file), atomic_write_text, atomic_directory (a folder of files, e.g. a dataset shard).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, on error it is removed.

    The file gets ordinary permissions (0666 minus the umask), not mkstemp's private 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())
        with open(tmp, "rb+") as fh:  # on disk before the rename, so a power cut cannot leave a torn file
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


TEMP_SUFFIX = ".part"  # every temporary name is ".<final name>.<random>.part", beside the final one


def is_temporary(name: str) -> bool:
    """True for a temporary file or folder left by atomic_path / atomic_directory (e.g. after a kill)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write a text file atomically (UTF-8); readers see the old file or the new one, never half of it."""
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


@contextmanager
def atomic_directory(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` (an old folder is removed first).

    Files inside are synced before the rename; on error the temporary folder is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=TEMP_SUFFIX, dir=path.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())
        for item in tmp.iterdir():
            os.chmod(item, 0o666 & ~_umask())
            with open(item, "rb+") as fh:
                os.fsync(fh.fileno())
        if path.exists():  # a stale or incomplete folder from an earlier run
            shutil.rmtree(path)
        os.rename(tmp, path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
