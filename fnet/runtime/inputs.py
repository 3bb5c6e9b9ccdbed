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
from typing import Iterator, Sequence

SPECTRA_SUFFIXES = (".fits", ".fit", ".fits.gz", ".fit.gz", ".fits.fz", ".fits.bz2", ".fit.bz2")


@dataclass(slots=True)
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


def _walk(folder: str) -> Iterator[str]:
    """Files with a spectra suffix under `folder`, folder by folder in name order, not following links to folders.

    A generator: a folder of 10^7 files is never held as one list.
    """
    for root, dirs, files in os.walk(folder, followlinks=False):
        dirs.sort()
        for name in sorted(files):
            if has_spectra_suffix(name):
                yield os.path.join(root, name)


def _list_entries(list_path: Path) -> Iterator[str]:
    """Non-empty, non-comment lines of a list file, decoded as file names (undecodable bytes kept)."""
    with open(list_path, "rb") as fh:
        for raw in fh:
            line = os.fsdecode(raw.strip())
            if line and not line.startswith("#"):
                yield line


def expand_inputs(items: Sequence[str], exclude: Sequence[str | Path] = ()) -> list[InputItem]:
    """Files, folders, @lists and globs, expanded in order (rules in the module docstring)."""
    return list(iter_inputs(items, exclude))


def iter_inputs(items: Sequence[str], exclude: Sequence[str | Path] = ()) -> Iterator[InputItem]:
    """expand_inputs as a generator, for runs over more inputs than memory should hold."""
    return _iter(items, frozenset(os.path.realpath(p) for p in exclude), ())


def _iter(items: Sequence[str], skip: frozenset, _lists: tuple) -> Iterator[InputItem]:
    def keep(path: str) -> bool:
        return os.path.realpath(path) not in skip

    for item in items:
        if os.path.lexists(item) and not os.path.isdir(item):
            yield InputItem(item)  # literal: glob characters in a real file name are just characters
        elif os.path.isdir(item):
            found = False
            for path in _walk(item):
                found = True
                if keep(path):
                    yield InputItem(path, from_folder=True)
            if not found:
                yield InputItem(item, f"folder contains no FITS files (looked for {', '.join(SPECTRA_SUFFIXES)})")
        elif item.startswith("@"):
            yield from _expand_list(Path(item[1:]), item, skip, _lists)
        elif glob.has_magic(item):
            found = sorted(p for p in glob.glob(item, recursive=True) if not os.path.isdir(p))
            if not found:
                yield InputItem(item, "no file matches this pattern")
            for path in found:
                if keep(path):
                    yield InputItem(path)
        else:
            yield InputItem(item)  # missing: the reader says "file does not exist" in its row


def _expand_list(list_path: Path, item: str, skip: frozenset, lists: tuple) -> Iterator[InputItem]:
    """The inputs named by one @list file."""
    if not list_path.is_file():
        yield InputItem(item, f"list file {list_path} not found")
        return
    if list_path.resolve() in lists:
        yield InputItem(item, f"list file {list_path} includes itself")
        return
    base = list_path.parent

    def relative(entry: str) -> str:
        at, name = ("@", entry[1:]) if entry.startswith("@") and not os.path.lexists(base / entry) else ("", entry)
        return at + (name if os.path.isabs(name) else str(base / name))

    named = False
    inner = lists + (list_path.resolve(),)
    try:
        for entry in _list_entries(list_path):
            named = True
            yield from _iter([relative(entry)], skip, inner)
    except OSError as exc:
        yield InputItem(item, f"list file {list_path} cannot be read: {exc.strerror or exc}")
        return
    if not named:
        yield InputItem(item, f"list file {list_path} names no input")
