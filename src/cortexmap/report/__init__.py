"""Results -> a self-contained HTML atlas and paper figures (no torch)."""

from cortexmap.report.html import ensure_atlas, export_figures, render_report, screenshot

__all__ = ["ensure_atlas", "export_figures", "render_report", "screenshot"]
