"""Run reports: metrics.json -> report.md (terminal / pull requests) and report.html (self-contained)."""
from netcompress.report.render import summary_rows, write_report, markdown_table

__all__ = ["summary_rows", "write_report", "markdown_table"]
