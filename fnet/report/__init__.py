"""fnet-report: one self-contained HTML page to visually inspect what fnet-run flagged (torch-free).

select.py picks rows (--all, --flagged, a safe --where expression), analysis.py re-reads and smooths the spectra
and finds the second P(z) peak, render.py draws inline SVG with numpy, html.py is the page, command.py the command.
"""

from fnet.report.command import ReportResult, build_report, report_command

__all__ = ["ReportResult", "build_report", "report_command"]
