"""Find the spectra files a catalog asks for: one walk of the spectra tree, indexed by identifiers."""

from __future__ import annotations

import logging
import os
import re
from collections import Counter
from pathlib import Path
from typing import Sequence

log = logging.getLogger(__name__)

SPEC_RE = re.compile(r"^spec-(\d+)-(\d+)-(\d+)\.fits(?:\.gz)?$")
SPPLATE_RE = re.compile(r"^spPlate-(\d+)-(\d+)\.fits(?:\.gz)?$")
# Source kinds per planned row.
MISSING, SPEC, SPPLATE = 0, 1, 2


def index_spectra(roots: Sequence[Path], wanted: set[int], wanted_plates: set[int] | None
                   ) -> tuple[dict[int, str], dict[int, str], dict[str, int]]:
    """Walk the roots once: spec files by row key and spPlate files by (plate * 100000 + mjd), wanted only."""
    spec: dict[int, str] = {}
    plates: dict[int, str] = {}
    stats = Counter()
    seen_dirs: set[str] = set()
    stack = [str(r) for r in reversed(roots)]
    while stack:
        d = stack.pop()
        real = os.path.realpath(d)
        if real in seen_dirs:  # symlinked directories may loop
            continue
        seen_dirs.add(real)
        try:
            entries = sorted(os.scandir(d), key=lambda e: e.name)
        except OSError as exc:
            log.warning("cannot list %s: %s", d, exc)
            stats["unlistable directories"] += 1
            continue
        subdirs = []
        for entry in entries:
            name = entry.name
            if name.startswith("."):
                continue
            m = SPEC_RE.match(name)
            if m:
                key = (int(m[1]) * 100000 + int(m[2])) * 10000 + int(m[3])
                if key in wanted:
                    if key in spec:
                        stats["duplicate spec files (first kept)"] += 1
                    else:
                        spec[key] = entry.path
                continue
            if wanted_plates is not None:
                m = SPPLATE_RE.match(name)
                if m:
                    pkey = int(m[1]) * 100000 + int(m[2])
                    if pkey in wanted_plates and pkey not in plates:
                        plates[pkey] = entry.path
                    continue
            try:
                if entry.is_dir():
                    subdirs.append(entry.path)
            except OSError:
                continue
        stats["directories"] += 1
        stack.extend(reversed(subdirs))
    return spec, plates, dict(stats)
