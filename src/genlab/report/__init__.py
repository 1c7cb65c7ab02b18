"""`genlab report`: one self-contained HTML page (images embedded, no network) from Jinja2
templates, for one run, several runs side by side, a sweep or a detector matrix."""

from genlab.report.build import build_report, write_report

__all__ = ["build_report", "write_report"]
