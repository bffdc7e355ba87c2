"""Commands over finished runs and uses of the map: analyze, compare, report, figures, prune, edit, monitor."""

from __future__ import annotations
