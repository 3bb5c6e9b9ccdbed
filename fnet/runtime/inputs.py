"""Turn the user's INPUTS arguments into an ordered list of files to read.

Rules (docs/catalog.md, "Inputs"):

- an argument that names an existing file is that file, literally, even when its name holds glob
  characters (``bracket[1].fits`` is never taken as a pattern);
- an existing folder is searched recursively (symbolic links to folders are not followed) for names
  ending in .fits, .fit, .fits.gz, .fit.gz, .fits.fz or .fits.bz2, in any letter case;
- ``@list.txt`` (when no file of that literal name exists) is a list of inputs, one per line, relative to
  the list's folder; ``#`` starts a comment line; lists may include lists, never themselves. Lines are
  file names in whatever bytes the file system uses, so non-UTF-8 lines are kept as such;
- anything else with glob characters is a pattern (``**`` recursive); a pattern matching nothing, a
  missing file or a list naming nothing become failed rows, never a crash;
- the run's own output, its temporary and progress files, and (in folders) catalogs written by an
  earlier fnet-run are never read as inputs.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

SPECTRA_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fits.fz", ".fits.bz2", ".fit.bz2")


@dataclass
class InputItem:
    """A path to read, or an input that could not even be resolved (reported as a failed row).

    from_folder: found by searching a folder (not named by the user), so an earlier run's catalog found
    this way is skipped rather than reported.
    """

    path: str
    problem: str | None = None
    from_folder: bool = False


def has_spectra_suffix(name: str) -> bool:
    """True when a file name ends in one of SPECTRA_SUFFIXES, in any letter case."""
    return name.lower().endswith(SPECTRA_SUFFIXES)


def _walk(folder: str) -> list[str]:
    """Files with a spectra suffix under `folder`, sorted, without following links to folders."""
    found = []
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        found.extend(os.path.join(root, name) for name in files if has_spectra_suffix(name))
    return sorted(found)


def _list_entries(list_path: Path) -> list[str]:
    """Non-empty, non-comment lines of a list file, decoded as file names (undecodable bytes kept)."""
    raw = list_path.read_bytes()
    lines = [os.fsdecode(line.strip()) for line in raw.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def expand_inputs(items: Sequence[str], exclude: Sequence[str | Path] = (), _lists: tuple = ()) -> list[InputItem]:
    """Files, folders, @lists and globs, expanded in order (rules in the module docstring)."""
    skip = {os.path.realpath(p) for p in exclude}
    out: list[InputItem] = []

    def add(path: str, from_folder: bool = False) -> None:
        if os.path.realpath(path) not in skip:
            out.append(InputItem(path, from_folder=from_folder))

    for item in items:
        if os.path.lexists(item) and not os.path.isdir(item):
            out.append(InputItem(item))  # literal: glob characters in a real file name are just characters
        elif os.path.isdir(item):
            found = _walk(item)
            if not found:
                out.append(InputItem(item, f"folder contains no FITS files (looked for {', '.join(SPECTRA_SUFFIXES)})"))
            for p in found:
                add(p, from_folder=True)
        elif item.startswith("@"):
            out.extend(_expand_list(Path(item[1:]), item, exclude, _lists))
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if not os.path.isdir(p))
            if not found:
                out.append(InputItem(item, "no file matches this pattern"))
            for p in found:
                add(p)
        else:
            out.append(InputItem(item))  # missing: the reader says "file does not exist" in its row
    return out


def _expand_list(list_path: Path, item: str, exclude: Sequence[str | Path], lists: tuple) -> list[InputItem]:
    """The inputs named by one @list file."""
    if not list_path.is_file():
        return [InputItem(item, f"list file {list_path} not found")]
    if list_path.resolve() in lists:
        return [InputItem(item, f"list file {list_path} includes itself")]
    try:
        entries = _list_entries(list_path)
    except OSError as exc:
        return [InputItem(item, f"list file {list_path} cannot be read: {exc.strerror or exc}")]
    if not entries:
        return [InputItem(item, f"list file {list_path} names no input")]
    base = list_path.parent

    def relative(entry: str) -> str:
        at, name = ("@", entry[1:]) if entry.startswith("@") and not os.path.lexists(base / entry) else ("", entry)
        return at + (name if os.path.isabs(name) else str(base / name))

    return expand_inputs([relative(e) for e in entries], exclude, lists + (list_path.resolve(),))
