"""``export_figures``: the report's figures as SVG / PNG / PDF files for papers, or interactive HTML.

HTML files keep the figures interactive and share one ``plotly.min.js`` written beside them
(no network, no browser needed to write them). Static images come from plotly's kaleido engine (``kaleido>=1``), which drives a Chrome or
Chromium it finds on the machine (Debian's ``chromium`` works; ``plotly_get_chrome`` downloads
one). All figures are written in one browser session. Interactive parts (dropdowns, buttons) do
not exist in a static image: each figure is exported as first shown (first task, functional
groups), and the effect heatmaps are also exported once per task.

``write_figure`` writes one figure (e.g. ``cortexmap explain --out``) to one file, atomically;
its HTML inlines plotly.js instead, so the single file opens offline.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import plotly.graph_objects as go
import plotly.io as pio

from cortexmap.atomic import write_with
from cortexmap.errors import CortexmapError
from cortexmap.report.data import load_report_data
from cortexmap.report.render import build_figures

FORMATS = ("svg", "png", "pdf", "html")
STATIC = ("svg", "png", "pdf")
WIDTH = 1100
SCALE = 2  # PNG pixel density


@contextmanager
def _quiet_browser_driver() -> Iterator[None]:
    """Silence choreographer (kaleido's browser driver), which logs harmless tracebacks at shutdown."""
    logger = logging.getLogger("choreographer")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _static(fig: go.Figure) -> go.Figure:
    """A copy without interactive menus, on a white background."""
    out = copy.deepcopy(fig)
    had_menus = bool(out.layout.updatemenus)
    out.layout.updatemenus = ()  # update_layout would merge, not clear
    out.update_layout(paper_bgcolor="#ffffff", plot_bgcolor="#ffffff")
    if had_menus:  # the menus' room at the top is no longer needed
        out.update_layout(margin={"t": min(out.layout.margin.t or 50, 50)})
    return out


def _per_task(name: str, fig: go.Figure) -> dict[str, go.Figure]:
    """One static figure per dropdown entry of an effect heatmap (``NAME__TASK``)."""
    out = {}
    menus = fig.layout.updatemenus
    if not menus or not name.startswith("effects_"):
        return out
    for button in menus[0].buttons:
        update, _ = button.args
        single = _static(fig)
        single.update_traces(**{k: v[0] for k, v in update.items()}, selector=0)
        task = re.sub(r"[^A-Za-z0-9_.-]+", "_", button.label.split(" · ")[0])
        single.update_layout(title={"text": button.label, "x": 0, "font": {"size": 13}}, margin={"t": 50})
        out[f"{name}__{task}"] = single
    return out


def export_figures(run_dir: str | Path, out_dir: str | Path, formats: Sequence[str] = ("svg", "png"),
                   compare: Sequence[str | Path] = (), names: Sequence[str] | None = None) -> list[Path]:
    """Write every report figure of a run as image (or interactive HTML) files.

    Args:
        run_dir: a run directory (its atlas is built first when missing).
        out_dir: directory for the files (created); names are the report's figure names, e.g.
            ``cortex_map.svg``, ``bands.png``, ``effects_patch_exact__ioi.svg``.
        formats: any of ``"svg"``, ``"png"``, ``"pdf"`` (kaleido + Chromium) and ``"html"`` (no browser
            needed; one interactive file per figure, dropdowns kept, sharing ``plotly.min.js``).
        compare: other runs, for the cross-model figures.
        names: export only these report figures (e.g. ``["cortex_map", "bands"]``); None: all.

    Returns:
        The written paths.

    Raises:
        ResultsError: ``run_dir`` is not a finished run.
        CortexmapError: an unknown format or figure name, kaleido missing, or no Chrome/Chromium for kaleido.
    """
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise CortexmapError(f"unknown figure format(s) {unknown}: use any of {list(FORMATS)}")
    static = [fmt for fmt in formats if fmt in STATIC]
    if static:
        _need_kaleido("export formats=('html',)")
    data = load_report_data(run_dir, compare)
    built = build_figures(data)
    missing = sorted(set(names or ()) - set(built))
    if missing:
        raise CortexmapError(f"no figure named {missing} in this run's report: choose from {sorted(built)}")
    chosen = {name: fig for name, fig in built.items() if names is None or name in names}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    if "html" in formats:
        for name, fig in chosen.items():
            fig.write_html(out / f"{name}.html", include_plotlyjs="directory", full_html=True,
                           config={"displaylogo": False, "responsive": True})
            written.append(out / f"{name}.html")
    if not static:
        return written
    figures: dict[str, go.Figure] = {}
    for name, fig in chosen.items():
        figures[name] = _static(fig)
        figures.update(_per_task(name, fig))
    paths = [out / f"{name}.{fmt}" for fmt in static for name in figures]
    figs = [figures[p.stem] for p in paths]
    heights = [int(f.layout.height or 500) for f in figs]
    try:
        with _quiet_browser_driver():
            pio.write_images(figs, paths, width=WIDTH, height=heights, scale=SCALE)
    except Exception as err:  # noqa: BLE001 - kaleido raises several types when no browser starts
        raise _kaleido_failed(err) from None
    return written + paths


def figure_format(path: str | Path) -> str:
    """The format of a figure file, from its suffix (one of :data:`FORMATS`).

    Raises:
        CortexmapError: any other suffix.
    """
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in FORMATS:
        raise CortexmapError(f"cannot write a figure to {Path(path).name!r}: give a path ending in "
                             + ", ".join(f".{f}" for f in FORMATS))
    return fmt


def write_figure(fig: go.Figure, path: str | Path) -> Path:
    """Write one figure atomically, in the format its suffix names.

    Args:
        fig: the plotly figure.
        path: ``.html`` (self-contained and interactive: plotly.js inlined, opens offline) or
            ``.svg`` / ``.png`` / ``.pdf`` (static, kaleido + Chromium; menus dropped, white background).

    Returns:
        ``path``.

    Raises:
        CortexmapError: another suffix, kaleido missing, or no Chrome/Chromium for kaleido.
    """
    fmt = figure_format(path)
    if fmt == "html":
        return write_with(path, lambda tmp: fig.write_html(tmp, include_plotlyjs=True, full_html=True,
                                                           config={"displaylogo": False, "responsive": True}))
    _need_kaleido("write a .html file")
    image = _static(fig)
    try:
        with _quiet_browser_driver():
            return write_with(path, lambda tmp: pio.write_image(image, tmp, format=fmt, width=WIDTH,
                                                                height=int(image.layout.height or 500), scale=SCALE))
    except Exception as err:  # noqa: BLE001 - kaleido raises several types when no browser starts
        raise _kaleido_failed(err) from None


def _need_kaleido(instead: str) -> None:
    try:
        import kaleido  # noqa: F401  (plotly's static-image engine)
    except ImportError:
        raise CortexmapError("SVG/PNG/PDF export needs kaleido: `pip install 'kaleido>=1'` (it uses the system "
                             f"Chromium), or {instead}") from None


def _kaleido_failed(err: Exception) -> CortexmapError:
    return CortexmapError(f"kaleido could not render figures ({type(err).__name__}: {str(err)[:160]}): install "
                          "Chromium (`apt-get install chromium`) or run `plotly_get_chrome`")
