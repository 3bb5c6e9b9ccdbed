"""Which catalog rows a report shows: --all, --flagged (the default) or --where EXPR.

EXPR is parsed with :mod:`ast` and evaluated column-wise with numpy; nothing is ever passed to ``eval``.
Allowed, and nothing else:

- column names (any column of the catalog, case-insensitive), the derived ``DV_ERR`` (km/s: c·Z_ERR/(1+Z),
  the P(z) 1σ half-width as a velocity) and the ZWARN bit names (``MULTIPLE_PEAKS`` = 32, ...);
- numbers, quoted strings, True/False, ``nan``;
- comparisons ``== != < <= > >=`` (chains too: ``1 < Z <= 3``), ``in`` / ``not in`` a list of constants;
- ``and``, ``or``, ``not``, parentheses; ``&`` and ``|`` on integers (ZWARN bits), ``-`` before a number;
- ``isnan(X)``, ``isfinite(X)``, ``abs(X)``.

A bare integer value is true when it is not zero: ``ZWARN & (BROAD_PDF | MULTIPLE_PEAKS)``.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from ..runtime.constants import C_KMS
from ..runtime.zwarn import ZWarn

MODES = ("all", "flagged", "where")
#: Columns the report needs in every catalog.
REQUIRED = ("SOURCE", "Z", "ZWARN")
#: Columns holding text (kept as str arrays; a masked CSV cell becomes "").
TEXT_COLUMNS = ("SOURCE", "FORMAT", "STATUS", "MESSAGE", "SPECTYPE", "PLANID", "DESIG")
#: Class-probability columns shown when the catalog has them (fnet-run writes them for class-head models).
CLASS_COLUMNS = ("P_QSO", "P_STAR", "P_GALAXY")
_FUNCTIONS = {"isnan": np.isnan, "isfinite": np.isfinite, "abs": np.abs}
_COMPARE = {ast.Eq: np.equal, ast.NotEq: np.not_equal, ast.Lt: np.less, ast.LtE: np.less_equal,
            ast.Gt: np.greater, ast.GtE: np.greater_equal}


class WhereError(ValueError):
    """A --where expression that cannot be used, with the reason in plain words."""


@dataclass
class ReportCatalog:
    """A catalog read for a report: upper-case column arrays, header provenance, and where its P(z) lives."""

    path: Path
    columns: dict[str, np.ndarray]
    meta: dict[str, Any] = field(default_factory=dict)
    has_pdf: bool = False

    def __len__(self) -> int:
        return len(self.columns["SOURCE"])

    def column(self, name: str, default: Any = None) -> np.ndarray | None:
        """A column by (upper-case) name, or `default` when the catalog lacks it."""
        return self.columns.get(name.upper(), default)

    def read_pdf(self, rows: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None]:
        """P(z) of the given rows (k, nbins) and the bin centres, read from HDU ZPDF/ZPDF_Z; (None, None) without."""
        if not self.has_pdf:
            return None, None
        from astropy.io import fits

        with fits.open(self.path, memmap=True) as hdul:  # only the selected rows are copied out of the file
            pdf = np.array(hdul["ZPDF"].data[np.asarray(rows, dtype=np.int64)], dtype=np.float64)
            centres = np.array(hdul["ZPDF_Z"].data, dtype=np.float64)
        if pdf.ndim != 2 or pdf.shape[1] != len(centres):
            raise ValueError(f"{self.path}: HDU ZPDF has {pdf.shape[-1]} bins, ZPDF_Z {len(centres)} centres")
        return pdf, centres


def _text(values: Any) -> np.ndarray:
    """A column as a str array: bytes decoded, FITS padding stripped, masked cells empty."""
    mask = np.ma.getmaskarray(values) if np.ma.isMaskedArray(values) or hasattr(values, "mask") else None
    arr = np.asarray(values)
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8", "backslashreplace")
    arr = np.char.rstrip(arr.astype(str))
    if mask is not None and mask.any():
        arr = np.where(mask, "", arr)
    return arr


def load_catalog(path: str | Path) -> ReportCatalog:
    """Read an fnet-run catalog (FITS, CSV or Parquet) for a report; ValueError naming the file when unusable."""
    from ..runtime.catalog import read_catalog

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such catalog file")
    try:
        table = read_catalog(path)
    except Exception as exc:  # astropy/pyarrow say many things about a file that is not a table
        raise ValueError(f"{path}: cannot be read as a catalog ({type(exc).__name__}: {exc})") from None
    columns: dict[str, np.ndarray] = {}
    for name in table.colnames:
        key = name.upper()
        col = table[name]
        if key in TEXT_COLUMNS or np.asarray(col).dtype.kind in "SU":
            columns[key] = _text(col)
        else:
            fill = np.nan if np.asarray(col).dtype.kind == "f" else -1
            columns[key] = np.asarray(np.ma.filled(col, fill) if hasattr(col, "mask") else col)
    missing = [c for c in REQUIRED if c not in columns]
    if missing:
        raise ValueError(f"{path}: not an fnet catalog: missing column(s) {', '.join(missing)} "
                         f"(it has {', '.join(columns) or 'none'})")
    n = len(columns["SOURCE"])
    columns.setdefault("STATUS", np.where(np.isfinite(columns["Z"].astype(float)), "ok", "failed"))
    if "Z_ERR" in columns and "DV_ERR" not in columns:
        with np.errstate(invalid="ignore", divide="ignore"):
            columns["DV_ERR"] = C_KMS * columns["Z_ERR"].astype(float) / (1.0 + columns["Z"].astype(float))
    has_pdf = False
    if path.name.lower().endswith((".fits", ".fit", ".fits.gz")):
        from astropy.io import fits

        with fits.open(path, memmap=True) as hdul:
            names = {h.name for h in hdul}
            if {"ZPDF", "ZPDF_Z"} <= names:
                if hdul["ZPDF"].header.get("NAXIS2") != n:
                    raise ValueError(f"{path}: HDU ZPDF has {hdul['ZPDF'].header.get('NAXIS2')} rows, "
                                     f"the catalog {n}")
                has_pdf = True
    meta = {str(k): v for k, v in table.meta.items() if not str(k).startswith(("TTYPE", "TFORM", "TUNIT"))}
    return ReportCatalog(path=path, columns=columns, meta=meta, has_pdf=has_pdf)


def flagged_mask(columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """Rows a survey would inspect: any ZWARN bit set, or STATUS not ok."""
    zwarn = np.asarray(columns["ZWARN"]).astype(np.int64)
    status = columns.get("STATUS")
    bad = np.zeros(len(zwarn), bool) if status is None else (np.asarray(status) != "ok")
    return (zwarn != 0) | bad


def select_rows(catalog: ReportCatalog, mode: str = "flagged", where: str | None = None) -> np.ndarray:
    """Indices of the rows to show, in catalog order; WhereError for a bad --where."""
    n = len(catalog)
    if mode == "all":
        mask = np.ones(n, bool)
    elif mode == "flagged":
        mask = flagged_mask(catalog.columns)
    elif mode == "where":
        if not where or not where.strip():
            raise WhereError("--where needs an expression, e.g. --where 'ZWARN & MULTIPLE_PEAKS'")
        mask = evaluate_where(where, catalog.columns, n)
    else:
        raise ValueError(f"unknown selection mode {mode!r}; one of {MODES}")
    return np.flatnonzero(mask)


def describe_selection(mode: str, where: str | None) -> str:
    """The selection in words, for the page and the terminal."""
    if mode == "all":
        return "--all (every row)"
    if mode == "where":
        return f"--where {where}"
    return "--flagged (ZWARN != 0 or STATUS != ok)"


def evaluate_where(expr: str, columns: Mapping[str, np.ndarray], n: int) -> np.ndarray:
    """Boolean mask of the rows where `expr` holds (see the module docstring for what `expr` may contain)."""
    try:
        tree = ast.parse(expr.strip(), mode="eval")
    except SyntaxError as exc:
        hint = " (use == to compare)" if "=" in expr and "==" not in expr else ""
        raise WhereError(f"--where {expr!r}: not a valid expression{hint}: {exc.msg}") from None
    value = _Evaluator(expr, {k.upper(): v for k, v in columns.items()}).visit(tree.body)
    arr = np.asarray(value)
    if arr.dtype.kind in "US":
        raise WhereError(f"--where {expr!r}: the expression is text, not a condition (compare it, e.g. STATUS == 'ok')")
    if arr.dtype.kind != "b":
        arr = arr != 0
    return np.broadcast_to(arr, (n,)).copy()


class _Evaluator:
    """Walks an expression tree, allowing only the nodes listed in the module docstring."""

    def __init__(self, expr: str, columns: dict[str, np.ndarray]):
        self.expr = expr
        self.columns = columns

    def fail(self, problem: str) -> WhereError:
        return WhereError(f"--where {self.expr!r}: {problem}")

    def visit(self, node: ast.AST) -> Any:
        method = getattr(self, f"visit_{type(node).__name__}", None)
        if method is None:
            raise self.fail(f"{ast.unparse(node)!r} is not allowed: use column names, numbers, strings, comparisons, "
                            "and/or/not, & and | on ZWARN bits, isnan/isfinite/abs")
        return method(node)

    def visit_Constant(self, node: ast.Constant) -> Any:
        if isinstance(node.value, (bool, int, float, str)):
            return node.value
        raise self.fail(f"the constant {node.value!r} is not allowed (numbers, strings, True/False only)")

    def visit_Name(self, node: ast.Name) -> Any:
        key = node.id.upper()
        if key in self.columns:
            return self.columns[key]
        if key in ZWarn.__members__:
            return int(ZWarn[key])
        if key == "NAN":
            return float("nan")
        raise self.fail(f"unknown column {node.id}; the catalog's columns: {', '.join(self.columns)}; "
                        f"ZWARN bit names: {', '.join(ZWarn.__members__)}")

    def visit_UnaryOp(self, node: ast.UnaryOp) -> Any:
        value = self.visit(node.operand)
        if isinstance(node.op, ast.Not):
            return ~self.truth(value, "not")
        if isinstance(node.op, (ast.USub, ast.UAdd)):
            self.numeric(value, "-")
            return -value if isinstance(node.op, ast.USub) else value
        raise self.fail(f"the operator {type(node.op).__name__} is not allowed")

    def visit_BoolOp(self, node: ast.BoolOp) -> Any:
        parts = [self.truth(self.visit(v), "and/or") for v in node.values]
        op = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        return op.reduce(np.broadcast_arrays(*parts))

    def visit_BinOp(self, node: ast.BinOp) -> Any:
        if not isinstance(node.op, (ast.BitAnd, ast.BitOr)):
            raise self.fail(f"the operator {type(node.op).__name__} is not allowed (only & and | on integers)")
        left, right = self.visit(node.left), self.visit(node.right)
        values = []
        for side in (left, right):
            arr = np.asarray(side)
            if arr.dtype.kind not in "iub":
                raise self.fail("& and | need integers or conditions (e.g. ZWARN & 32, or (Z > 2) | (Z < 1))")
            values.append(arr)
        return (np.bitwise_and if isinstance(node.op, ast.BitAnd) else np.bitwise_or)(*values)

    def visit_Compare(self, node: ast.Compare) -> Any:
        result = None
        left = self.visit(node.left)
        for op, comparator in zip(node.ops, node.comparators):
            if isinstance(op, (ast.In, ast.NotIn)):
                if not isinstance(comparator, (ast.Tuple, ast.List, ast.Set)):
                    raise self.fail("'in' needs a list of constants, e.g. SPECTYPE in ('QSO', 'GALAXY')")
                options = [self.visit(e) for e in comparator.elts]
                if any(np.ndim(o) for o in options):
                    raise self.fail("'in' needs a list of constants, not columns")
                for option in options:
                    self.same_kind(left, option)
                right = options
                part = np.isin(np.asarray(left), np.asarray(options)) if options else np.zeros(np.shape(left), bool)
                if isinstance(op, ast.NotIn):
                    part = ~part
            elif type(op) in _COMPARE:
                right = self.visit(comparator)
                self.same_kind(left, right)
                with np.errstate(invalid="ignore"):
                    part = _COMPARE[type(op)](left, right)
            else:
                raise self.fail(f"the comparison {type(op).__name__} is not allowed")
            result = part if result is None else np.logical_and(result, part)
            left = right
        return result

    def visit_Call(self, node: ast.Call) -> Any:
        name = node.func.id if isinstance(node.func, ast.Name) else None
        if name not in _FUNCTIONS or node.keywords or len(node.args) != 1:
            raise self.fail(f"only isnan(X), isfinite(X) and abs(X) may be called, not {ast.unparse(node)!r}")
        value = self.visit(node.args[0])
        self.numeric(value, name)
        return _FUNCTIONS[name](np.asarray(value, dtype=float) if name != "abs" else value)

    def visit_Tuple(self, node: ast.Tuple) -> Any:
        raise self.fail("a list of values is only allowed after 'in'")

    visit_List = visit_Set = visit_Tuple

    def numeric(self, value: Any, where: str) -> None:
        if np.asarray(value).dtype.kind in "USO":
            raise self.fail(f"{where} needs a number, not text")

    def truth(self, value: Any, where: str) -> np.ndarray:
        arr = np.asarray(value)
        if arr.dtype.kind in "USO":
            raise self.fail(f"{where} needs conditions, not text (compare it, e.g. STATUS == 'ok')")
        return arr if arr.dtype.kind == "b" else arr != 0

    def same_kind(self, left: Any, right: Any) -> None:
        text = [np.asarray(v).dtype.kind in "US" for v in (left, right)]
        if text[0] != text[1]:
            raise self.fail("a text column is compared with a number (or a number with text): "
                            "quote strings, e.g. STATUS == 'failed'")
