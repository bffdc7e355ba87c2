"""A run directory: its file names and schema version (:mod:`~cortexmap.results.layout`), writing
(:mod:`~cortexmap.results.store`), reading (:mod:`~cortexmap.results.load`) and its Hugging Face
dataset card (:mod:`~cortexmap.results.card`). Pandas only, below every layer that writes a run.
"""

from cortexmap.atomic import write_json, write_parquet
from cortexmap.results.card import write_card
from cortexmap.results.load import Results, check_schema, load_results, read_manifest
from cortexmap.results.store import RunStore, unit_key

__all__ = ["Results", "RunStore", "check_schema", "load_results", "read_manifest", "unit_key", "write_card",
           "write_json", "write_parquet"]
