"""fnet-report: a real catalog from simulated spectra (plus broken files) rendered as one offline HTML page."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fnet.report import build_report, report_command
from fnet.report.analysis import EMISSION_LINES, resolve_source, second_peak, smooth
from fnet.report.render import path_data
from fnet.report.select import WhereError, evaluate_where
from fnet.runtime.catalog import read_catalog

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """12 simulated quasars, a constant-flux file, a noise-only file and a junk file, through fnet-run --save-pdf."""
    from fnet.cli import run_command
    from fnet.simulate import write_simulated_set, write_spec_fits

    base = tmp_path_factory.mktemp("report")
    spectra = base / "spectra"
    empty = base / "no_shared_data"
    empty.mkdir()
    truth = write_simulated_set(spectra, n=12, seed=5, source="parametric", data_dir=empty)
    shutil.move(str(truth), base / "truth.fits")  # keep the folder spectra-only
    loglam = 3.58 + 1e-4 * np.arange(4000)
    mask = np.zeros(4000, np.int32)
    write_spec_fits(spectra, loglam, np.full(4000, 3.0), np.ones(4000), mask, 16000, 61000, 1, 10.0, 5.0)
    noise = np.random.default_rng(0).normal(0.0, 1.0, 4000)
    write_spec_fits(spectra, loglam, noise, np.ones(4000), mask, 16000, 61000, 2, 11.0, 5.0)
    (spectra / "spec-junk.fits").write_bytes(b"SIMPLE  =                    T" + b"\0" * 200)
    catalog = base / "cat.fits"
    result = CliRunner().invoke(run_command, [str(spectra), "-o", str(catalog), "--save-pdf", "-q",
                                              "--backend", "onnxruntime", "--threads", "1"])
    assert result.exit_code in (0, 1), result.output
    return base, catalog, read_catalog(catalog)


class Dom(HTMLParser):
    """Figures, table rows, every URL-bearing attribute and the text of a page."""

    def __init__(self, text: str):
        super().__init__()
        self.figures: list[dict] = []
        self.rows: list[dict] = []
        self.urls: list[str] = []
        self.svgs = 0
        self.tags: dict[str, list[dict]] = {}
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.setdefault(tag, []).append(a)
        if tag == "figure":
            self.figures.append(a)
        if tag == "tr" and "data-i" in a:
            self.rows.append(a)
        if tag == "svg" and "spec" in (a.get("class") or ""):
            self.svgs += 1
        for key, value in a.items():
            if key in ("src", "href", "xlink:href", "action", "data", "poster", "srcset") and value:
                self.urls.append(value)


def assert_offline(text: str, dom: Dom) -> None:
    """No external URL anywhere: attributes, CSS url(), imports, or any http(s):// text at all."""
    external = [u for u in dom.urls if not u.startswith("#")]
    assert not external, f"external references: {external[:5]}"
    assert "http://" not in text and "https://" not in text
    assert "url(" not in text and "@import" not in text
    assert not any(a.get("src") for a in dom.tags.get("script", [])) and "link" not in dom.tags


def render(catalog: Path, out: Path, *args: str) -> tuple[str, Dom]:
    result = CliRunner().invoke(report_command, [str(catalog), "-o", str(out), "--no-progress", *args])
    assert result.exit_code == 0, result.output
    text = out.read_text(encoding="utf-8")
    return text, Dom(text)


def test_all_flagged_and_where_pages_have_one_figure_per_selected_row(run, tmp_path):
    base, catalog, cat = run
    zwarn, status = np.asarray(cat["ZWARN"]), np.asarray(cat["STATUS"]).astype(str)
    z, sn = np.asarray(cat["Z"]), np.asarray(cat["SN_MEDIAN"])
    assert len(cat) == 15 and (status == "failed").sum() >= 2  # constant flux and junk rows
    where = "Z > 2 and SN_MEDIAN > 3 or STATUS == 'failed'"
    with np.errstate(invalid="ignore"):
        expected_where = ((z > 2) & (sn > 3)) | (status == "failed")
    for args, expected in ((["--all"], np.ones(len(cat), bool)), ([], (zwarn != 0) | (status != "ok")),
                           (["--where", where], expected_where)):
        text, dom = render(catalog, tmp_path / "page.html", *args)
        figures = [f for f in dom.figures if "object" in f.get("class", "")]
        assert len(figures) == len(dom.figures) == len(dom.rows) == expected.sum(), args
        assert [f["id"] for f in figures] == [f"obj-{i}" for i in range(expected.sum())]
        assert [f["data-file"] for f in figures] == [Path(s).name for s in np.asarray(cat["SOURCE"]).astype(str)[expected]]
        assert f"<b>{expected.sum()}</b> of {len(cat)} rows" in text
        assert_offline(text, dom)
        readable = expected & (np.asarray(cat["ROW"]) >= 0)
        assert dom.svgs == readable.sum()  # every spectrum that was read once is drawn again
    text, dom = render(catalog, tmp_path / "all.html", "--all")
    assert "ROW = -1" in text  # the junk file: a figure with the reason, not a crash
    assert text.count('class="pz"') == (status == "ok").sum()  # P(z) drawn for every ok row
    ok = np.flatnonzero(status == "ok")
    name = next(n for n, rest in EMISSION_LINES if 3600 < rest * (1 + z[ok[0]]) < 10000)
    assert f">{name}</text>" in text


def test_the_page_renders_in_headless_chromium(run, tmp_path):
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not installed (Debian: apt-get install chromium)")
    _, catalog, cat = run
    page = tmp_path / "report.html"
    render(catalog, page, "--all")
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1280,900",
             f"--user-data-dir={tmp_path / 'profile'}", "--no-first-run", "--disable-extensions"]
    shot = tmp_path / "shot.png"
    subprocess.run([str(CHROMIUM), *flags, f"--screenshot={shot}", page.as_uri()], capture_output=True, timeout=60)
    assert shot.exists() and shot.stat().st_size > 10_000
    pixels = decode_png(shot.read_bytes())
    assert pixels.shape[:2] == (900, 1280)
    assert pixels.std() > 10 and len(np.unique(pixels.reshape(-1, pixels.shape[2]), axis=0)) > 50  # not blank

    dump = subprocess.run([str(CHROMIUM), *flags, "--dump-dom", page.as_uri() + "#sort=-z"], capture_output=True,
                          timeout=60, text=True).stdout
    dom = Dom(dump)
    figures = [f for f in dom.figures if "object" in f.get("class", "")]
    assert len(figures) == len(cat) and dom.svgs == (np.asarray(cat["ROW"]) >= 0).sum()
    assert_offline(dump, dom)
    assert "hidden" in dom.tags["div"][0] and dom.tags["div"][0]["id"] == "loading"  # the script ran
    zs = [float(f["data-z"]) for f in figures if f["data-z"]]
    assert zs == sorted(zs, reverse=True) and all(not f["data-z"] for f in figures[len(zs):])  # sorted, NaN last


def decode_png(data: bytes) -> np.ndarray:
    """8-bit RGB/RGBA PNG -> (h, w, channels) uint8, with the five PNG row filters undone (enough for a test)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        (n,), kind = struct.unpack(">I", data[pos:pos + 4]), data[pos + 4:pos + 8]
        body = data[pos + 8:pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, color = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat += body
        pos += 12 + n
    assert depth == 8 and color in (2, 6), (depth, color)
    bpp = 3 if color == 2 else 4
    raw = np.frombuffer(zlib.decompress(idat), np.uint8).reshape(h, 1 + w * bpp)
    out = np.zeros((h, w * bpp), np.uint8)
    prev = np.zeros(w * bpp, np.int64)
    for y in range(h):
        f, line = raw[y, 0], raw[y, 1:].astype(np.int64)
        if f == 0:
            cur = line
        elif f == 1:
            cur = np.cumsum(line.reshape(w, bpp), axis=0).reshape(-1) % 256
        elif f == 2:
            cur = (line + prev) % 256
        else:
            cur, p, ln = [0] * (w * bpp), prev.tolist(), line.tolist()
            for x in range(w * bpp):
                a = cur[x - bpp] if x >= bpp else 0
                b, c = p[x], (p[x - bpp] if x >= bpp else 0)
                if f == 3:
                    cur[x] = (ln[x] + (a + b) // 2) & 255
                else:
                    pa, pb, pc = abs(b - c), abs(a - c), abs(a + b - 2 * c)
                    cur[x] = (ln[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
            cur = np.array(cur, np.int64)
        out[y] = cur
        prev = cur
    return out.reshape(h, w, bpp)


def test_moved_spectra_are_found_under_spectra_root(run, tmp_path):
    base, catalog, cat = run
    moved = tmp_path / "elsewhere" / "deep"
    shutil.copytree(base / "spectra", moved / "spectra")
    copy = tmp_path / "cat.fits"
    shutil.copy(catalog, copy)
    readable = int((np.asarray(cat["ROW"]) >= 0).sum())
    original = base / "spectra"
    hidden = base / "spectra-away"
    original.rename(hidden)  # the catalog's paths no longer exist
    try:
        text, dom = render(copy, tmp_path / "lost.html", "--all")
        assert dom.svgs == 0 and text.count("spectrum file not found") == readable
        assert len(dom.figures) == len(cat)
        text, dom = render(copy, tmp_path / "found.html", "--all", "--spectra", str(moved))
        assert dom.svgs == readable and str(moved / "spectra") in text
    finally:
        hidden.rename(original)


def test_where_is_safe_and_says_what_is_wrong():
    cols = {"Z": np.array([0.5, 2.5, 3.5, np.nan]), "ZWARN": np.array([0, 32, 16, 1]),
            "STATUS": np.array(["ok", "ok", "ok", "failed"]), "SPECTYPE": np.array(["QSO", "QSO", "GALAXY", ""])}
    n = 4

    def where(expr):
        return evaluate_where(expr, cols, n).tolist()

    assert where("Z > 2") == [False, True, True, False]
    assert where("1 < Z <= 3") == [False, True, False, False]
    assert where("ZWARN & MULTIPLE_PEAKS") == [False, True, False, False]
    assert where("zwarn & (BROAD_PDF | MULTIPLE_PEAKS)") == [False, True, True, False]
    assert where("not ZWARN") == [True, False, False, False]
    assert where("STATUS == 'failed' or SPECTYPE in ('GALAXY',)") == [False, False, True, True]
    assert where("SPECTYPE not in ['QSO'] and isfinite(Z)") == [False, False, True, False]
    assert where("isnan(Z)") == [False, False, False, True]
    assert where("-Z < -3") == where("abs(Z) > 3") == [False, False, True, False]
    for expr, words in (("FOO > 1", "unknown column FOO; the catalog's columns: Z, ZWARN, STATUS, SPECTYPE"),
                        ("__import__('os').system('true')", "may be called"), ("Z.real > 1", "not allowed"),
                        ("Z + 1 > 2", "not allowed"), ("(lambda: 1)()", "may be called"),
                        ("STATUS == 1", "quote strings"), ("Z = 2", "use == to compare"),
                        ("STATUS", "text"), ("Z & 1", "integers"), ("[Z]", "only allowed after 'in'")):
        with pytest.raises(WhereError, match="--where") as info:
            evaluate_where(expr, cols, n)
        assert words in str(info.value), (expr, str(info.value))


def test_bad_where_and_unsafe_outputs_are_refused_naming_the_file(run, tmp_path):
    _, catalog, _ = run
    runner = CliRunner()
    result = runner.invoke(report_command, [str(catalog), "-o", str(tmp_path / "r.html"), "--where", "NOPE < 1"])
    assert result.exit_code == 2 and str(catalog) in result.output and "SN_MEDIAN" in result.output
    result = runner.invoke(report_command, [str(catalog), "-o", str(catalog)])
    assert result.exit_code == 2 and "HTML" in result.output
    precious = tmp_path / "notes.html"
    precious.write_text("my notes")
    result = runner.invoke(report_command, [str(catalog), "-o", str(precious)])
    assert result.exit_code == 2 and "not an HTML page" in result.output and precious.read_text() == "my notes"
    result = runner.invoke(report_command, [str(tmp_path / "missing.fits"), "-o", str(tmp_path / "r.html")])
    assert result.exit_code == 2 and "missing.fits" in result.output
    for both in (["--all"], ["--flagged"]):
        result = runner.invoke(report_command, [str(catalog), "-o", str(tmp_path / "r.html"), *both, "--where", "Z>1"])
        assert result.exit_code == 2 and "one of --all, --flagged, --where" in result.output


def test_class_columns_and_catalogs_without_pdf(run, tmp_path):
    """SPECTYPE / P_QSO ... (added by another issue) are shown and filterable when present; no ZPDF: a note."""
    from astropy.table import Table

    _, catalog, cat = run
    table = Table(cat)
    table["SPECTYPE"] = np.where(np.asarray(cat["Z"]) > 2, "QSO", "GALAXY")
    table["P_QSO"] = np.linspace(0, 1, len(cat))
    path = tmp_path / "typed.csv"
    table.write(path, format="ascii.csv")
    text, dom = render(path, tmp_path / "typed.html", "--where", "SPECTYPE == 'QSO'")
    assert len(dom.figures) == (np.asarray(cat["Z"]) > 2).sum()
    assert {f["data-spectype"] for f in dom.figures} == {"QSO"} and "P_QSO" in text
    assert "not in this catalog" in text and 'class="pz"' not in text
    assert '<option value="QSO">' in text


def test_second_peak_smoothing_and_paths():
    centres = np.expm1(np.linspace(0, np.log(8), 1024))
    u = np.log1p(centres)
    pdf = np.exp(-0.5 * ((u - np.log1p(2.0)) / 0.002) ** 2) + 0.5 * np.exp(-0.5 * ((u - np.log1p(0.8)) / 0.002) ** 2)
    z2, mass = second_peak(pdf / pdf.sum(), centres, 2.0)
    assert abs(z2 - 0.8) < 0.01 and 0.25 < mass < 0.4
    single = np.exp(-0.5 * ((u - np.log1p(2.0)) / 0.002) ** 2)
    assert second_peak(single, centres, 2.0) is None
    weak = single + 0.01 * np.exp(-0.5 * ((u - np.log1p(0.8)) / 0.002) ** 2)
    assert second_peak(weak, centres, 2.0) is None  # under SECOND_PEAK_MIN_MASS
    flux, ivar, good = np.full(20, 2.0), np.full(20, 4.0), np.ones(20, bool)
    good[8:14] = False
    s, noise = smooth(flux, ivar, good, 3)
    assert np.allclose(s[np.isfinite(s)], 2.0) and np.isnan(s[10]) and np.allclose(noise[:5], 0.5)
    assert path_data(np.array([0.0, 1.0, np.nan, 3.0, 4.0]), np.array([5.0, 4.0, 1.0, 2.0, 2.5])) == \
        "M0 50l10-10M30 20l10 5"


def test_sources_resolve_under_a_root_by_dropping_leading_folders(tmp_path):
    (tmp_path / "new" / "b").mkdir(parents=True)
    target = tmp_path / "new" / "b" / "spec.fits"
    target.write_bytes(b"x")
    found, _ = resolve_source("/old/machine/a/b/spec.fits", tmp_path, tmp_path / "new")
    assert found == target
    found, tried = resolve_source("a/b/missing.fits", tmp_path, tmp_path / "new")
    assert found is None and tmp_path / "new" / "b" / "missing.fits" in tried


def test_build_report_api_counts(run, tmp_path):
    _, catalog, cat = run
    result = build_report(catalog, tmp_path / "api.html", mode="all")
    assert result.n_selected == result.n_rows == len(cat) and result.n_missing == 0
