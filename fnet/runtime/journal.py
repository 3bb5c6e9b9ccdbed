"""The run journal: catalog rows appended as inputs complete, so a killed run loses nothing and can resume.

fnet-run never holds its catalog in memory. Rows go, input by input and in input order, to
``<output>.fnet-progress`` (JSON lines; the first line identifies the run) and P(z) rows to
``<output>.fnet-progress.pdf`` (raw float32). The catalog is streamed from the journal at the end,
then the journal is removed. After a crash or SIGKILL, ``fnet-run ... --resume`` checks that the
journal belongs to the same run (same expanded inputs, model, P(z) option), drops a half-written last
line, and continues with the first input that has no rows yet: the final catalog is the one a clean run
writes (same rows in the same order, same Z), and no finished input is read again.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .errors import FNetError

JOURNAL_VERSION = 2  # 2: rows carry the LAMOST identifier and class columns (a version-1 journal's rows lack them)
_FSYNC_SECONDS = 10.0  # a power cut may cost the last seconds of work; a killed process costs nothing
_READ_ROWS = 8192


class JournalMismatch(FNetError):
    """--resume found a journal written by a different run."""


def journal_paths(output: str | Path) -> tuple[Path, Path]:
    """The journal and its P(z) file for a catalog path."""
    output = Path(output)
    return output.with_name(output.name + ".fnet-progress"), output.with_name(output.name + ".fnet-progress.pdf")


class InputsDigest:
    """SHA-256 and count of the expanded input paths, fed one at a time (inputs may not fit in memory)."""

    def __init__(self):
        self._digest = hashlib.sha256()
        self.count = 0

    def add(self, path: str) -> None:
        self._digest.update(os.fsencode(path) + b"\0")
        self.count += 1

    def hexdigest(self) -> str:
        return self._digest.hexdigest()


def run_fingerprint(paths: Iterable[str] | InputsDigest, model_sha256: str, nbins: int | None) -> dict[str, Any]:
    """What makes two runs the same run: the expanded inputs in order (paths, or their digest), the model file,
    the P(z) option."""
    if isinstance(paths, InputsDigest):
        digest = paths
    else:
        digest = InputsDigest()
        for path in paths:
            digest.add(path)
    return {"journal": JOURNAL_VERSION, "inputs_sha256": digest.hexdigest(), "n_inputs": digest.count,
            "model_sha256": model_sha256, "pdf_bins": nbins}


class RunJournal:
    """Append-only, crash-safe record of finished inputs and their rows."""

    def __init__(self, output: str | Path, fingerprint: dict[str, Any], resume: bool = False):
        self.path, self.pdf_path = journal_paths(output)
        self.fingerprint = fingerprint
        self.nbins = fingerprint.get("pdf_bins")
        self.n_done = 0  # inputs whose rows are recorded (always the first n_done inputs)
        self.n_rows = 0
        self.n_failed = 0
        self.n_files_failed = 0
        self.resumed = False
        if resume and self.path.exists():
            self._reopen()
        else:
            self._create()
        self._last_sync = time.monotonic()

    def _create(self) -> None:
        self._fh = open(self.path, "w", encoding="utf-8")
        self._fh.write(json.dumps({"fnet_run_journal": self.fingerprint}) + "\n")
        self._fh.flush()
        self._pdf = open(self.pdf_path, "wb") if self.nbins else None

    def _reopen(self) -> None:
        """Check the journal is this run's, drop a torn last line, and count what is done."""
        complete = 0  # bytes of whole lines: a line without its newline was cut by the kill
        with open(self.path, "rb") as fh:  # line by line: a 10^7-row journal is never held in memory
            for number, line in enumerate(fh):
                if not line.endswith(b"\n"):
                    break
                if number == 0:
                    try:
                        found = json.loads(line)["fnet_run_journal"]
                    except (ValueError, KeyError, TypeError):
                        found = None
                    if isinstance(found, dict) and found.get("journal") != JOURNAL_VERSION:
                        raise JournalMismatch(f"{self.path}: this progress file was written by another fnet version "
                                              f"(journal {found.get('journal')!r}, this one writes "
                                              f"{JOURNAL_VERSION}); its rows cannot be finished into one catalog: "
                                              "run without --resume to start over")
                    if found != self.fingerprint:
                        raise JournalMismatch(f"{self.path}: this progress file belongs to a different run (other "
                                              "inputs, model or --save-pdf); run without --resume to start over")
                else:
                    entry = json.loads(line)
                    if entry["i"] != self.n_done:
                        raise JournalMismatch(f"{self.path}: progress file is out of order at input {entry['i']}")
                    self._count(entry["rows"])
                complete += len(line)
        if complete == 0:
            raise JournalMismatch(f"{self.path}: this progress file belongs to a different run (other inputs, model "
                                  "or --save-pdf); run without --resume to start over")
        with open(self.path, "r+b") as fh:
            fh.truncate(complete)
        self._fh = open(self.path, "a", encoding="utf-8")
        self._pdf = None
        if self.nbins:
            size = self.n_rows * self.nbins * 4
            if not self.pdf_path.exists() or self.pdf_path.stat().st_size < size:
                raise JournalMismatch(f"{self.pdf_path}: P(z) progress file is shorter than its journal")
            self._pdf = open(self.pdf_path, "r+b")
            self._pdf.truncate(size)
            self._pdf.seek(size)
        self.resumed = True

    def _count(self, rows: list[dict]) -> None:
        self.n_done += 1
        self.n_rows += len(rows)
        self.n_failed += sum(r["STATUS"] != "ok" for r in rows)
        self.n_files_failed += any(r["ROW"] == -1 for r in rows)

    def add(self, index: int, rows: list[dict], pdfs: list[np.ndarray | None]) -> None:
        """Record the rows of input `index` (inputs arrive in order)."""
        if index != self.n_done:
            raise ValueError(f"journal expects input {self.n_done}, got {index}")
        if self._pdf is not None:
            block = np.zeros((len(rows), self.nbins), np.float32)
            for k, pdf in enumerate(pdfs):
                if pdf is not None:
                    block[k] = pdf
            self._pdf.write(block.tobytes())
            self._pdf.flush()  # P(z) before the line that counts it: a kill between them leaves it unused
        self._fh.write(json.dumps({"i": index, "rows": rows}, allow_nan=True) + "\n")
        self._fh.flush()
        self._count(rows)
        if time.monotonic() - self._last_sync > _FSYNC_SECONDS:
            self.sync()

    def sync(self) -> None:
        """Force what was written to disk."""
        for fh in (self._fh, self._pdf):
            if fh is not None:
                fh.flush()
                os.fsync(fh.fileno())
        self._last_sync = time.monotonic()

    def close(self) -> None:
        """Flush, sync and close (the journal stays on disk)."""
        self.sync()
        for fh in (self._fh, self._pdf):
            if fh is not None:
                fh.close()

    def rows(self) -> Iterator[dict]:
        """Every recorded row, in catalog order, read back from disk."""
        with open(self.path, encoding="utf-8") as fh:
            next(fh)
            for line in fh:
                yield from json.loads(line)["rows"]

    def pdf_chunks(self) -> Iterator[np.ndarray]:
        """The P(z) rows in chunks, read back from disk."""
        with open(self.pdf_path, "rb") as fh:
            while True:
                data = fh.read(_READ_ROWS * self.nbins * 4)
                if not data:
                    return
                yield np.frombuffer(data, np.float32).reshape(-1, self.nbins)

    def remove(self) -> None:
        """Delete the journal files (after the catalog is written)."""
        self.path.unlink(missing_ok=True)
        self.pdf_path.unlink(missing_ok=True)
