"""fnet-report: a self-contained HTML page for visually inspecting the rows of an fnet-run catalog."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import click
import numpy as np

from . import analysis, html, render
from .select import CLASS_COLUMNS, ReportCatalog, WhereError, describe_selection, load_catalog, select_rows

HTML_SUFFIXES = (".html", ".htm")


@dataclass
class ReportResult:
    """What build_report wrote: the page, rows selected out of the catalog's, and spectra that could not be shown."""

    path: Path
    n_selected: int
    n_rows: int
    n_missing: int = 0
    problems: list[str] = field(default_factory=list)


def check_report_output(output: str | Path, catalog: str | Path) -> Path:
    """Refuse, before any work, an output that is not .html, is the catalog, a folder, or an existing non-HTML file."""
    out = Path(output)
    if out.is_dir():
        raise ValueError(f"{out}: is a folder; give a page name such as {out / 'report.html'}")
    if out.suffix.lower() not in HTML_SUFFIXES:
        raise ValueError(f"{out}: the report is an HTML page; name it *.html")
    if out.exists():
        if Path(catalog).exists() and out.resolve() == Path(catalog).resolve():
            raise ValueError(f"{out}: is the catalog itself")
        with open(out, "rb") as fh:
            start = fh.read(64).lstrip().lower()
        if not start.startswith((b"<!doctype html", b"<html")):
            raise ValueError(f"{out}: exists and is not an HTML page; refusing to overwrite it")
    return out


def _number(value, fmt: str) -> str:
    """A catalog number as text: '' when missing (NaN, or -1 for identifiers)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    return "" if not np.isfinite(v) else format(v, fmt)


def _ident(cat: ReportCatalog, i: int) -> str:
    """PLATE-MJD-FIBERID, TARGETID, LAMOST OBSID or DESIG, or file#ROW: how a survey names the object."""
    plate, mjd, fiber = (int(cat.column(k, np.full(len(cat), -1))[i]) for k in ("PLATE", "MJD", "FIBERID"))
    if plate >= 0 and fiber >= 0:
        return f"{plate}-{mjd}-{fiber}"
    for key in ("TARGETID", "OBSID"):
        number = int(cat.column(key, np.full(len(cat), -1))[i])
        if number >= 0:
            return f"{key} {number}"
    desig = str(cat.columns["DESIG"][i]).strip() if "DESIG" in cat.columns else ""
    if desig:
        return desig
    return f"{Path(str(cat.columns['SOURCE'][i])).name}#{int(cat.column('ROW', np.zeros(len(cat)))[i])}"


def _row_data(cat: ReportCatalog, pos: int, i: int) -> dict[str, str]:
    """The summary values of catalog row i: the table's cells and the data-* attributes the script filters on."""
    col = cat.columns
    get = lambda name, default=np.nan: col[name][i] if name in col else default  # noqa: E731
    spectype = str(col["SPECTYPE"][i]) if "SPECTYPE" in col else ""
    return {"i": str(pos), "file": Path(str(col["SOURCE"][i])).name, "id": _ident(cat, i),
            "z": _number(get("Z"), ".5f"), "zerr": _number(get("Z_ERR"), ".2g"), "dv": _number(get("DV_ERR"), ".0f"),
            "zwarn": str(int(get("ZWARN", 0))), "spectype": spectype or "—", "sn": _number(get("SN_MEDIAN"), ".3g"),
            "cov": _number(get("COVERAGE"), ".2f"), "status": str(get("STATUS", ""))}


def _card(cat: ReportCatalog, pos: int, i: int, files: analysis.SpectrumFiles, pdf: np.ndarray | None,
          centres: np.ndarray | None, width: int) -> tuple[html.ObjectCard, str]:
    """The card of catalog row i (position pos in the selection) and the problem showing its spectrum, if any."""
    col = cat.columns
    get = lambda name, default="": col[name][i] if name in col else default  # noqa: E731
    source, row = str(get("SOURCE")), int(get("ROW", 0))
    z, zwarn, status = float(get("Z", np.nan)), int(get("ZWARN", 0)), str(get("STATUS", ""))
    spectype = str(get("SPECTYPE", "")) if "SPECTYPE" in col else ""
    data = _row_data(cat, pos, i)
    ident = data["id"]
    z2 = mass2 = away = None
    if pdf is not None:
        peak = analysis.second_peak(pdf, centres, z) if status == "ok" else None
        if peak:
            z2, mass2 = peak
        away = analysis.mass_away(pdf, centres, z)
        pdf_html = render.pdf_svg(pdf, centres, z, z2) if np.sum(pdf) > 0 else \
            '<p class="note">P(z): none (the row failed)</p>'
    else:
        pdf_html = '<p class="note">P(z): not in this catalog (fnet-run --save-pdf writes it, FITS only)</p>'
    spectrum, path, problem = files.spectrum(source, row)
    if spectrum is not None:
        figure = render.spectrum_svg(analysis.spectrum_curve(spectrum, width), z, z2, ident)
    else:
        figure = f'<div class="nofig">spectrum not shown: {escape(problem)}</div>'
    legend = [f"smoothed flux ({width}-pixel ivar-weighted boxcar), band ±1/√ivar"] if spectrum is not None else []
    if np.isfinite(z):
        legend.append(f'<span class="c1">red: lines at Z = {z:.4f}</span>')
    if z2 is not None:
        legend.append(f'<span class="c2">blue dashed: lines at the second P(z) peak z = {z2:.4f} '
                      f"({100 * mass2:.0f} % of P(z))</span>")
    names = html.zwarn_names(zwarn)
    caption = (f"<b>#{pos + 1}</b> {escape(Path(source).name)} · {escape(ident)} · "
               f"Z = {escape(_number(z, '.4f') or 'NaN')}"
               + (f' ± {escape(data["zerr"])}' if data["zerr"] else "")
               + (f' · <span class="zw">ZWARN {zwarn} {escape(names)}</span>' if zwarn else " · ZWARN 0")
               + (f" · {escape(spectype)}" if spectype else "") + f" · {escape(status)}")
    facts = [("file", source)]
    if path is not None and str(path) != source:
        facts.append(("read from", str(path)))
    facts += [("ROW", str(row)), ("FORMAT", str(get("FORMAT")))]
    for key in ("PLATE", "MJD", "FIBERID", "TARGETID"):
        if key in col and int(col[key][i]) >= 0:
            facts.append((key, str(int(col[key][i]))))
    if "RA" in col and np.isfinite(float(col["RA"][i])):
        facts.append(("RA, DEC", f"{float(col['RA'][i]):.5f}, {float(col['DEC'][i]):.5f}"))
    facts += [("Z", _number(z, ".5f") or "NaN"), ("Z_ERR", data["zerr"] or "—"),
              ("P(z) 1σ width", f"{data['dv']} km/s" if data["dv"] else "—")]
    if away is not None and np.isfinite(away):
        facts.append(("P(z) away from Z", f"{100 * away:.1f} % (> {analysis.SECOND_PEAK_DV_KMS:.0f} km/s)"))
    facts += [("second peak", f"z = {z2:.4f}, {100 * mass2:.0f} %" if z2 is not None else "—"),
              ("ZWARN", f"{zwarn} {names}".strip()), ("SPECTYPE", spectype or "—"),
              ("SN_MEDIAN", data["sn"] or "—"), ("COVERAGE", data["cov"] or "—"), ("STATUS", status)]
    if str(get("MESSAGE")):
        facts.append(("MESSAGE", str(get("MESSAGE"))))
    present = [c for c in CLASS_COLUMNS if c in col]
    if present:
        bars = []
        for name in present:
            v = float(col[name][i])
            w = 0 if not np.isfinite(v) else int(round(100 * min(max(v, 0.0), 1.0)))
            bars.append(f'<div><span class="bar" style="width:{w}px"></span>{escape(name)} '
                        f'{escape(_number(v, ".2f") or "—")}</div>')
        classes = "<b>class probabilities</b>" + "".join(bars)
    else:
        classes = "<b>class probabilities</b><div>—</div>"
    card = html.ObjectCard(index=pos, data=data, caption=caption, figure=figure, pdf=pdf_html,
                           legend=" · ".join(legend), facts=facts, classes=classes)
    return card, problem if spectrum is None and row >= 0 else ""


def build_report(catalog: str | Path, output: str | Path, mode: str = "flagged", where: str | None = None,
                 spectra_root: str | Path | None = None, smooth: int = 5, progress: bool = False) -> ReportResult:
    """Write the inspection page for the selected rows of `catalog`; ValueError (naming the file) when refused."""
    from tqdm.auto import tqdm

    from ..runtime.atomic import atomic_path

    out = check_report_output(output, catalog)
    cat = load_catalog(catalog)
    try:
        rows = select_rows(cat, mode, where)
    except WhereError as exc:
        raise ValueError(f"{cat.path}: {exc}") from None
    root = Path(spectra_root) if spectra_root is not None else None
    if root is not None and not root.is_dir():
        raise ValueError(f"{root}: --spectra must be a folder")
    files = analysis.SpectrumFiles(cat.path.parent, root)
    meta = cat.meta
    provenance = [(k, str(meta[k])) for k in ("MODEL", "MODELVER", "FNETVER", "BACKEND", "DATE", "NSPEC", "NFAIL")
                  if k in meta]
    spectypes = sorted(set(cat.columns["SPECTYPE"][rows].tolist())) if "SPECTYPE" in cat.columns else None
    notes = [] if cat.has_pdf else ["This catalog has no P(z) (HDU ZPDF): run fnet-run --save-pdf with a .fits "
                                    "output to see P(z) and the second peak."]
    definitions = [
        f"Spectrum: flux smoothed by a {smooth}-pixel inverse-variance-weighted boxcar, shown at ≤ "
        f"{analysis.MAX_POINTS} points; the band is ±1/√ivar (per-pixel noise); clipped to the 1–99 % flux range.",
        "Red lines: emission lines (Lyα, NV, SiIV, CIV, CIII], MgII, Hβ, [OIII], Hα; vacuum) at Z.",
        f"Blue dashed: the same at the second P(z) peak, the highest local maximum farther than "
        f"{analysis.SECOND_PEAK_DV_KMS:.0f} km/s from Z holding ≥ {100 * analysis.SECOND_PEAK_MIN_MASS:.0f} % of "
        f"P(z) within ±{analysis.SECOND_PEAK_DV_KMS / 2:.0f} km/s.",
        "P(z) width: the 1σ half-width as a velocity, c·Z_ERR/(1+Z). Click a column heading to sort.",
    ]
    result = ReportResult(path=out, n_selected=len(rows), n_rows=len(cat))
    with atomic_path(out) as tmp, open(tmp, "w", encoding="utf-8") as fh:
        fh.write(html.page_head(f"fnet-report: {cat.path.name}", provenance, describe_selection(mode, where),
                                len(rows), len(cat), spectypes, notes))
        for pos, i in enumerate(rows):  # the table needs catalog columns only: the figures stream after it
            fh.write(html.table_row(pos, _row_data(cat, pos, int(i))))
        fh.write(html.middle(definitions))
        chunk = 256  # P(z) rows read at once: memory stays small for any selection
        with tqdm(total=len(rows), unit="object", desc="fnet-report", disable=not progress, file=sys.stderr,
                  dynamic_ncols=True) as bar:
            for start in range(0, len(rows), chunk):
                block = rows[start:start + chunk]
                pdf, centres = cat.read_pdf(block)
                for j, i in enumerate(block):
                    card, problem = _card(cat, start + j, int(i), files, None if pdf is None else pdf[j], centres,
                                          smooth)
                    if problem:
                        result.n_missing += 1
                        result.problems.append(problem)
                    fh.write(html.figure_html(card))
                    bar.update(1)
        fh.write(html.page_tail("" if len(rows) else f"No rows matched {describe_selection(mode, where)}."))
    return result


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("catalog", type=click.Path(dir_okay=False))
@click.option("--output", "-o", required=True, type=click.Path(), help="the page to write, e.g. report.html")
@click.option("--all", "mode", flag_value="all", help="every row of the catalog")
@click.option("--flagged", "mode", flag_value="flagged", help="rows with ZWARN != 0 or STATUS != ok [default]")
@click.option("--where", "where", metavar="EXPR",
              help="rows where EXPR holds, e.g. \"ZWARN & MULTIPLE_PEAKS or (Z > 2 and SN_MEDIAN < 3)\"")
@click.option("--spectra", "spectra_root", type=click.Path(file_okay=False),
              help="folder the spectra files are under now, when the catalog's SOURCE paths are relative or moved")
@click.option("--smooth", default=5, show_default=True, type=click.IntRange(1, 501),
              help="boxcar width in pixels (inverse-variance weighted)")
@click.option("--progress/--no-progress", default=None, help="progress bar [default: on when stderr is a terminal]")
def report_command(catalog, output, mode, where, spectra_root, smooth, progress):
    """Write one self-contained HTML page (no server, no network) to visually inspect rows of an fnet-run CATALOG.

    Per object: the spectrum (smoothed, with noise), emission lines at Z and at the second P(z) peak, P(z), class
    probabilities when the catalog has them, and the header facts; a summary table sorts and filters by ZWARN bits,
    SPECTYPE, S/N and P(z) width. --where takes comparisons, and/or/not, & on ZWARN bits (names allowed), e.g.
    --where "STATUS == 'failed' or ZWARN & BROAD_PDF".
    """
    if where is not None:
        if mode is not None:
            raise click.UsageError("give one of --all, --flagged, --where")
        mode = "where"
    mode = mode or "flagged"
    show = sys.stderr.isatty() if progress is None else progress
    try:
        result = build_report(catalog, output, mode, where, spectra_root, smooth, show)
    except ValueError as exc:
        click.echo(f"fnet-report: {exc}", err=True)
        sys.exit(2)
    size = result.path.stat().st_size / 2**20
    missing = f"; {result.n_missing} spectra could not be shown (see their cards)" if result.n_missing else ""
    click.echo(f"fnet-report: {result.n_selected} of {result.n_rows} rows ({describe_selection(mode, where)}) "
               f"-> {result.path} ({size:.1f} MB){missing}", err=True)
