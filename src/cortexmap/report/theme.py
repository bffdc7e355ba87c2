"""Colours, fonts and the shared plotly layout of the report.

Conventions fixed here:

* Categories (functional groups, task levels) take colours from an HCL palette: equal lightness
  and chroma, hues evenly spaced, so no category looks more important than another. Levels keep
  one colour each across every figure; inert heads and "no important task" are neutral grey.
* Signed effects use RdBu centred at zero: red = the intervention hurts the task (negative
  effect), blue = it helps.
* Every figure starts from :func:`base_layout` (system fonts, transparent background, light grid).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

FONT = ('-apple-system, BlinkMacSystemFont, "Segoe UI", Roboto, "Helvetica Neue", Arial, '
        '"Noto Sans", sans-serif')
INK = "#1f2937"
MUTED = "#6b7280"
GRID = "#e5e7eb"
NEUTRAL = "#d1d5db"
ACCENT = "#4f46e5"
EFFECT_SCALE = "RdBu"
# The task levels in battery order (cortexmap.tasks.core.LEVELS; repeated here so the report needs no torch).
LEVEL_ORDER = ("lexical", "syntactic", "semantic", "pragmatic", "knowledge", "reasoning", "custom")


def _srgb(linear: float) -> int:
    value = 12.92 * linear if linear <= 0.0031308 else 1.055 * linear ** (1 / 2.4) - 0.055
    return round(255 * min(1.0, max(0.0, value)))


def hcl_color(hue: float, chroma: float = 50.0, lightness: float = 62.0) -> str:
    """The sRGB hex colour of a polar CIE-LUV (HCL) colour, D65 white, clipped to the gamut.

    Args:
        hue: hue angle in degrees.
        chroma: colourfulness.
        lightness: perceived lightness, 0-100.

    Returns:
        ``"#rrggbb"``.
    """
    u, v = chroma * math.cos(math.radians(hue)), chroma * math.sin(math.radians(hue))
    xn, yn, zn = 0.95047, 1.0, 1.08883
    un, vn = 4 * xn / (xn + 15 * yn + 3 * zn), 9 * yn / (xn + 15 * yn + 3 * zn)
    y = ((lightness + 16) / 116) ** 3 if lightness > 8 else lightness / 903.3
    if lightness == 0:
        return "#000000"
    up, vp = u / (13 * lightness) + un, v / (13 * lightness) + vn
    x = y * 9 * up / (4 * vp)
    z = y * (12 - 3 * up - 20 * vp) / (4 * vp)
    r = 3.2404542 * x - 1.5371385 * y - 0.4985314 * z
    g = -0.9692660 * x + 1.8760108 * y + 0.0415560 * z
    b = 0.0556434 * x - 0.2040259 * y + 1.0572252 * z
    return f"#{_srgb(r):02x}{_srgb(g):02x}{_srgb(b):02x}"


def hcl_palette(n: int, *, start: float = 15.0, span: float = 360.0, chroma: float = 50.0,
                lightness: float = 62.0) -> list[str]:
    """``n`` qualitative colours of equal lightness and chroma.

    Args:
        n: number of colours.
        start: first hue in degrees.
        span: hue range covered; 360 spreads hues around the circle.
        chroma: colourfulness of every colour.
        lightness: lightness of every colour.

    Returns:
        Hex colours, hues evenly spaced.
    """
    if n <= 0:
        return []
    step = span / n if span >= 360 else span / max(n - 1, 1)
    return [hcl_color(start + i * step, chroma, lightness) for i in range(n)]


LEVEL_COLORS: dict[str, str] = dict(zip(LEVEL_ORDER, hcl_palette(len(LEVEL_ORDER), start=10, chroma=55, lightness=60)))


def level_color(level: str | None) -> str:
    """The fixed colour of a task level (grey for None or an unknown level)."""
    return LEVEL_COLORS.get(str(level), NEUTRAL) if level else NEUTRAL


def group_colors(groups: Sequence[int]) -> dict[int, str]:
    """Colours of functional groups: group 0 (inert) grey, the others from a palette offset from the levels'."""
    active = sorted(g for g in {int(g) for g in groups} if g != 0)
    colors = dict(zip(active, hcl_palette(max(len(active), 1), start=255, chroma=55, lightness=66)))
    colors[0] = "#eceef1"
    return colors


def text_color(background: str) -> str:
    """Black or white, whichever reads better on ``background`` (``"#rrggbb"``)."""
    r, g, b = (int(background[i:i + 2], 16) / 255 for i in (1, 3, 5))
    return INK if 0.299 * r + 0.587 * g + 0.114 * b > 0.55 else "#ffffff"


def base_layout(**overrides: Any) -> dict[str, Any]:
    """The layout every report figure starts from; ``overrides`` replace top-level keys."""
    axis = {"gridcolor": GRID, "zerolinecolor": GRID, "linecolor": GRID, "ticks": "", "title": {"font": {"size": 12}}}
    layout: dict[str, Any] = {
        "font": {"family": FONT, "size": 12, "color": INK},
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        "margin": {"l": 60, "r": 20, "t": 30, "b": 50},
        "hoverlabel": {"font": {"family": FONT, "size": 12}, "bgcolor": "#ffffff", "bordercolor": GRID, "align": "left"},
        "legend": {"orientation": "h", "yanchor": "bottom", "y": 1.02, "x": 0, "font": {"size": 11}},
        "xaxis": dict(axis),
        "yaxis": dict(axis),
        "colorway": hcl_palette(8, start=250, chroma=55, lightness=55),
        "modebar": {"bgcolor": "rgba(255,255,255,0)", "color": "#b6bcc6", "activecolor": ACCENT},
    }
    layout.update(overrides)
    return layout
