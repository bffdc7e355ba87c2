"""Results -> one self-contained HTML atlas, paper figures and screenshots (no torch).

``render_report`` writes the page (building the atlas in-process when ``cortexmap analyze`` was
not run), ``export_figures`` writes its figures as SVG/PNG files, ``screenshot`` captures a page
with headless Chromium, and ``ensure_atlas`` builds a run's atlas when it is missing or stale.
"""

from __future__ import annotations

from cortexmap.report.browser import screenshot
from cortexmap.report.data import ensure_atlas
from cortexmap.report.export import export_figures
from cortexmap.report.render import render_report

__all__ = ["ensure_atlas", "export_figures", "render_report", "screenshot"]
