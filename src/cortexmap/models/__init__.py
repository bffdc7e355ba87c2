"""Loading causal LMs, the handle that knows their heads, and the per-architecture head geometry."""

from cortexmap.models.bundled import BUNDLED, DEFAULT_MODEL, cache_dir, ensure_gguf, is_fetched
from cortexmap.models.geometry import GEOMETRY, HeadGeometry, geometry_for, kv_head_of, register_geometry
from cortexmap.models.handle import ModelHandle, wrap_model
from cortexmap.models.hooks import eager_attention, head_hooks, register_head_hooks
from cortexmap.models.loading import load_model, load_tokenizer

__all__ = [
    "BUNDLED", "DEFAULT_MODEL", "GEOMETRY", "HeadGeometry", "ModelHandle", "cache_dir", "eager_attention",
    "ensure_gguf", "geometry_for", "head_hooks", "is_fetched", "kv_head_of", "load_model", "load_tokenizer",
    "register_geometry", "register_head_hooks", "wrap_model",
]
