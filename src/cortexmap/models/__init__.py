"""Loading causal LMs and the per-architecture head geometry."""

from cortexmap.models.bundled import BUNDLED, DEFAULT_MODEL, cache_dir, ensure_gguf, is_fetched
from cortexmap.models.geometry import GEOMETRY, HeadGeometry, geometry_for, kv_head_of, register_geometry
from cortexmap.models.loading import ModelHandle, load_model, load_tokenizer, wrap_model

__all__ = [
    "BUNDLED", "DEFAULT_MODEL", "GEOMETRY", "HeadGeometry", "ModelHandle", "cache_dir", "ensure_gguf",
    "geometry_for", "is_fetched", "kv_head_of", "load_model", "load_tokenizer", "register_geometry", "wrap_model",
]
