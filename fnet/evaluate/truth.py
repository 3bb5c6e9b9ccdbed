"""Truth catalogs for fnet-eval: which spectra have a known redshift (and class), matched how the table allows.

Keys, in order: TARGETID (DESI, redrock); a `file` column with the spectrum file's basename (a `ROW` column for
files of several spectra); PLATE/MJD/FIBERID (DR12Q/DR16Q, spAll). Classes come from a CLASS or SPECTYPE column,
or, for a table without one, from --truth-class (auto: a quasar catalog means QSO); a ZWARNING/ZWARN column is kept
so spectra whose truth is itself flagged can be left out (--exclude-truth-zwarning) or counted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..runtime.errors import SpectrumReadError
from ..runtime.pipeline import expand_inputs
from ..runtime.readers import read_spectra
from ..runtime.spectrum import Spectrum

# Class names as catalogs spell them (SDSS CLASS, redrock SPECTYPE, LAMOST CLASS) -> the class head's names.
CLASS_ALIASES = {"QSO": "QSO", "QUASAR": "QSO", "STAR": "STAR", "GALAXY": "GALAXY", "GAL": "GALAXY"}
# A table without a class column is a quasar catalog (every row QSO) when it has one of these columns: visual
# inspection redshifts, BAL indices and the DR16Q classification flags exist only in quasar catalogs.
QSO_CATALOG_COLUMNS = ("Z_VI", "BI_CIV", "IS_QSO_FINAL", "BAL_PROB", "Z_PIPE", "Z_PCA", "Z_MGII")
QSO_CATALOG_NAME = re.compile(r"qso|quasar|dr\d+q", re.IGNORECASE)
TRUTH_CLASS_CHOICES = ("auto", "none", "QSO", "STAR", "GALAXY")


def normalise_class(name) -> str:
    """QSO, STAR or GALAXY from a catalog's class name (any case, bytes or str); "" for anything else."""
    text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
    return CLASS_ALIASES.get(text.strip().upper(), "")


def _file_key(path: str) -> str:
    """A spectrum file's basename as truth tables list it (a .gz suffix ignored on either side)."""
    name = Path(str(path).strip()).name
    return name[:-3] if name.lower().endswith(".gz") else name


@dataclass
class Truth:
    """True redshifts (and classes, truth ZWARNING) keyed by TARGETID, by file name (and ROW), or by PLATE/MJD/FIBERID.

    z, classes ("" = unknown) and zwarning (-1 = not given) are per usable table row; the dicts map keys to those rows.
    class_source says where the classes came from (None: the truth has no classes).
    """

    z: np.ndarray
    classes: np.ndarray
    zwarning: np.ndarray
    by_targetid: dict[int, int] = field(default_factory=dict)
    by_file: dict[tuple[str, int | None], int] = field(default_factory=dict)
    by_pmf: dict[tuple[int, int, int], int] = field(default_factory=dict)
    class_source: str | None = None

    @property
    def has_classes(self) -> bool:
        """True when the truth gives classes (a column, a quasar catalog or --truth-class)."""
        return self.class_source is not None

    def find(self, spec: Spectrum, n_in_file: int = 1) -> tuple[int | None, str]:
        """The truth row of a spectrum, or None and why it has none."""
        m = spec.meta
        if m.get("TARGETID") is not None and int(m["TARGETID"]) in self.by_targetid:
            return self.by_targetid[int(m["TARGETID"])], ""
        name = _file_key(spec.source)
        if (name, spec.row) in self.by_file:
            return self.by_file[(name, spec.row)], ""
        if (name, None) in self.by_file:
            if n_in_file == 1:
                return self.by_file[(name, None)], ""
            # one truth row for a file of many spectra would label them all alike: refuse rather than guess
            return None, f"{name} holds {n_in_file} spectra: the truth needs a ROW or TARGETID column for it"
        key = (m.get("PLATE"), m.get("MJD"), m.get("FIBERID"))
        if None not in key and tuple(int(k) for k in key) in self.by_pmf:
            return self.by_pmf[tuple(int(k) for k in key)], ""
        return None, "not in the truth catalog"

    def lookup(self, spec: Spectrum) -> float | None:
        """The true z of a spectrum, or None when the catalog does not list it."""
        i, _ = self.find(spec)
        return None if i is None else float(self.z[i])


def _truth_classes(table, names: dict[str, str], path, truth_class: str) -> tuple[np.ndarray, str | None]:
    """Per-row classes ("" unknown) and where they came from, following --truth-class."""
    n = len(table)
    if truth_class.lower() == "none":
        return np.full(n, "", dtype=object), None
    if truth_class.lower() != "auto":
        cls = normalise_class(truth_class)
        if not cls:
            raise ValueError(f"--truth-class {truth_class!r}: choose one of {', '.join(TRUTH_CLASS_CHOICES)}")
        return np.full(n, cls, dtype=object), f"--truth-class {cls} (every row)"
    for col in ("CLASS", "SPECTYPE"):  # SDSS/LAMOST CLASS, redrock SPECTYPE
        if col in names:
            values = np.ma.filled(np.ma.asarray(table[names[col]]).astype(str), "")
            return np.array([normalise_class(v) for v in values], dtype=object), f"column {names[col]}"
    hint = next((c for c in QSO_CATALOG_COLUMNS if c in names), None)
    if hint or QSO_CATALOG_NAME.search(Path(path).name) or QSO_CATALOG_NAME.search(str(table.meta.get("EXTNAME", ""))):
        why = f"column {names[hint]}" if hint else "its name"
        return np.full(n, "QSO", dtype=object), f"QSO: a quasar catalog ({why}; --truth-class none to drop)"
    return np.full(n, "", dtype=object), None


def read_truth(path: str | Path, z_column: str = "auto", truth_class: str = "auto") -> Truth:
    """Read a truth catalog: DR12Q/DR16Q PLATE MJD FIBERID Z[_VI], DESI/redrock TARGETID Z [SPECTYPE], or a table
    with a file column (basename of the spectrum file, optional ROW) and Z, with optional CLASS and ZWARNING.

    truth_class: "auto" (a CLASS or SPECTYPE column; QSO for a quasar catalog; else no classes), "none", or one
    class name given to every row.
    """
    import warnings

    from astropy.table import Table
    from astropy.units import UnitsWarning
    from astropy.utils.exceptions import AstropyUserWarning

    with warnings.catch_warnings():  # survey catalogs carry unit strings astropy cannot parse ("-")
        warnings.simplefilter("ignore", UnitsWarning)
        warnings.simplefilter("ignore", AstropyUserWarning)  # redrock files: the first table (REDSHIFTS) is read
        table = Table.read(path)
    names = {n.upper(): n for n in table.colnames}
    if z_column == "auto":
        if "Z" not in names and "Z_VI" not in names and "Z_TRUE" not in names:
            raise ValueError(f"{path}: no redshift column (looked for Z_VI, Z, Z_TRUE); pass --z-column")
        # DR12Q/DR16Q: Z_VI where a person inspected the spectrum (> 0), else the catalog's Z (as the dataset builder)
        base = names.get("Z", names.get("Z_TRUE"))
        z = _float_column(table, base) if base else np.full(len(table), np.nan)
        if "Z_VI" in names:
            zvi = _float_column(table, names["Z_VI"])
            z = np.where(np.isfinite(zvi) & (zvi > 0), zvi, z)
    else:
        if z_column.upper() not in names:
            raise ValueError(f"{path}: no column {z_column!r}")
        z = _float_column(table, names[z_column.upper()])
    usable = np.isfinite(z) & (z > -0.5)  # -1 and NaN mean "no redshift" in SDSS catalogs
    rows = np.flatnonzero(usable)
    classes, source = _truth_classes(table, names, path, truth_class)
    zw_name = names.get("ZWARNING", names.get("ZWARN"))
    zwarning = (np.ma.filled(np.ma.asarray(table[zw_name]).astype(np.int64), -1) if zw_name
                else np.full(len(table), -1, dtype=np.int64))
    truth = Truth(z[rows], classes[rows], zwarning[rows], class_source=source)
    position = {int(r): k for k, r in enumerate(rows)}  # table row -> index into the usable arrays
    if all(c in names for c in ("PLATE", "MJD", "FIBERID")):
        for r, p, mj, f in zip(rows, *(np.asarray(table[names[c]])[rows] for c in ("PLATE", "MJD", "FIBERID"))):
            truth.by_pmf[(int(p), int(mj), int(f))] = position[int(r)]
    if "TARGETID" in names:
        truth.by_targetid = {int(t): position[int(r)] for r, t in zip(rows, np.asarray(table[names["TARGETID"]])[rows])}
    if "FILE" in names:
        files = np.ma.filled(np.ma.asarray(table[names["FILE"]]).astype(str), "")
        row_col = np.asarray(table[names["ROW"]]) if "ROW" in names else None
        for r in rows:
            if files[r].strip():
                truth.by_file[(_file_key(files[r]), None if row_col is None else int(row_col[r]))] = position[int(r)]
    if not truth.by_pmf and not truth.by_targetid and not truth.by_file:
        raise ValueError(f"{path}: needs PLATE/MJD/FIBERID, TARGETID or file columns to match spectra")
    return truth


def _float_column(table, name: str) -> np.ndarray:
    """A column as float64, blanks (masked) as NaN."""
    return np.ma.filled(np.ma.asarray(table[name]).astype(np.float64), np.nan)


@dataclass
class Sample:
    """Spectra with a truth row: true z, true class ("" unknown), truth ZWARNING (-1 not given), skipped inputs."""

    spectra: list[Spectrum]
    z_true: np.ndarray
    classes: np.ndarray
    zwarning: np.ndarray
    skipped: list[str]
    class_source: str | None = None


def collect_sample(inputs: Sequence[str], truth: Truth, exclude_zwarning: bool = False) -> Sample:
    """The spectra of the inputs that the truth lists (exclude_zwarning: only those with truth ZWARNING 0 or none)."""
    spectra, rows, skipped = [], [], []
    for item in expand_inputs(inputs):
        if item.problem:
            skipped.append(f"{item.path}: {item.problem}")
            continue
        try:
            records = read_spectra(item.path)
        except SpectrumReadError as exc:
            skipped.append(str(exc))
            continue
        for spec in records:
            i, why = truth.find(spec, len(records))
            if i is None:
                skipped.append(f"{spec.source}[{spec.row}]: {why}")
            elif exclude_zwarning and truth.zwarning[i] > 0:
                skipped.append(f"{spec.source}[{spec.row}]: truth ZWARNING {truth.zwarning[i]} "
                               "(--exclude-truth-zwarning)")
            else:
                spectra.append(spec)
                rows.append(i)
    idx = np.asarray(rows, dtype=np.int64)
    return Sample(spectra, truth.z[idx], truth.classes[idx], truth.zwarning[idx], skipped, truth.class_source)


def collect(inputs: Sequence[str], truth: Truth) -> tuple[list[Spectrum], np.ndarray, list[str]]:
    """Spectra listed in the truth catalog, their true z, and messages for inputs that were skipped."""
    sample = collect_sample(inputs, truth)
    return sample.spectra, sample.z_true, sample.skipped


def load_sample(inputs: Sequence[str], truth_path: str | Path, z_column: str = "auto", truth_class: str = "auto",
                exclude_truth_zwarning: bool = False) -> Sample:
    """fnet-eval's input: read the truth, collect the listed spectra; ValueError when none is usable."""
    sample = collect_sample(inputs, read_truth(truth_path, z_column, truth_class), exclude_truth_zwarning)
    if not sample.spectra:
        raise ValueError(f"none of the inputs is listed in {truth_path} ({len(sample.skipped)} skipped)")
    return sample
