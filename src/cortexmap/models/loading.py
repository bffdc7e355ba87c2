"""Load a causal LM into a :class:`~cortexmap.models.ModelHandle` that knows its heads.

``load_model(spec)`` accepts a bundled name (``smollm2-135m``, ``gemma3-270m``), a path to a
``.gguf`` file, a local Hugging Face model directory (one written by ``save_pruned`` included),
a hub id (reachable hub or local HF cache), or a model object the caller already holds
(``load_model(model, tokenizer=tok)``). GGUF files are dequantized once by transformers and
cached as safetensors under ``$CORTEXMAP_CACHE/converted/<sha256[:16]>``, so later loads take
seconds. A pruned model (directory or object) loads as its dense view
(:mod:`cortexmap.models.pruned`): the same function at the original shapes, so it can be mapped.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable

import torch

from cortexmap.atomic import atomic_path
from cortexmap.errors import ModelLoadError
from cortexmap.models.bundled import BUNDLED, DEFAULT_MODEL, cache_dir, ensure_gguf, sha256_file
from cortexmap.models.geometry import geometry_for, head_counts
from cortexmap.models.handle import ModelHandle
from cortexmap.models.pruned import dense_model, dir_is_pruned, is_pruned, load_dense, pruned_heads

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype or torch.float32
    if dtype not in _DTYPES:
        raise ModelLoadError(f"unknown dtype {dtype!r}: use one of {', '.join(_DTYPES)}")
    return _DTYPES[dtype]


def _check_gguf(path: Path) -> None:
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != b"GGUF":
        raise ModelLoadError(f"{path} is not a GGUF file (bad magic bytes); check the path or re-download it")
    try:
        import gguf

        gguf.GGUFReader(str(path))
    except Exception as exc:  # the reader raises many kinds on truncation
        raise ModelLoadError(f"{path} is a corrupt or truncated GGUF file ({type(exc).__name__}); re-download it") from None


def _convert_gguf(path: Path, progress: Callable[[str], None]) -> Path:
    """Dequantize a GGUF once into a safetensors directory in the cache; return that directory."""
    digest = sha256_file(path)
    target = cache_dir() / "converted" / digest[:16]
    if (target / ".complete").exists():
        return target
    _check_gguf(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    progress(f"converting {path.name} to a safetensors cache (once; 20-80 s) ...")
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path.parent), gguf_file=path.name)
        model = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name, dtype=torch.float32)
    except ModelLoadError:
        raise
    except Exception as exc:
        raise ModelLoadError(f"transformers could not load {path} ({type(exc).__name__}: {exc})".split("\n")[0]) from None
    # A dequantized model is plain fp32; drop the GGUF quantizer so it saves as safetensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    with atomic_path(target) as tmp:  # a directory: the cache entry appears whole or not at all
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / "source.txt").write_text(f"{path}\nsha256 {digest}\n")
        (tmp / ".complete").write_text("ok\n")
    return target


def _load_pretrained(source: str, dtype: torch.dtype, device: str, attn: str | None,
                     device_map: str | dict[str, Any] | None = None) -> tuple[Any, Any]:
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    offline = not Path(source).is_dir() and not _hub_reachable()
    try:
        config = AutoConfig.from_pretrained(source, local_files_only=offline)
    except Exception:
        raise ModelLoadError(
            f"unknown model spec {source!r}: not a bundled model ({', '.join(BUNDLED)}), a .gguf file, "
            "a local model directory, or a hub id that is reachable or in the local HF cache"
        ) from None
    geometry_for(config)  # unsupported architectures fail before weights load
    kwargs: dict[str, Any] = {"dtype": dtype, "local_files_only": offline}
    if attn:
        kwargs["attn_implementation"] = attn
    if device_map is not None:  # accelerate places (and moves activations between) the shards
        kwargs["device_map"] = device_map
        if isinstance(device_map, dict) and "disk" in map(str, device_map.values()):
            kwargs["offload_folder"] = str(cache_dir() / "offload" / Path(source).name)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except ValueError as exc:
        if "Unrecognized configuration class" in str(exc):
            raise ModelLoadError(
                f"{source} is a {config.model_type} model, not a causal language model; cortexmap maps decoder LMs"
            ) from None
        raise
    tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=offline)
    return (model if device_map is not None else model.to(device)), tokenizer


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub answers (checked once, so offline specs fail fast, not after retries)."""
    if os.environ.get("HF_HUB_OFFLINE") == "1":
        return False
    import socket
    from urllib.parse import urlparse

    from huggingface_hub import constants

    url = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((url.hostname, url.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_model(
    spec: str | os.PathLike[str] | Any = DEFAULT_MODEL,
    device: str | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    progress: Callable[[str], None] | None = None,
    device_map: str | dict[str, Any] | None = None,
    tokenizer: Any = None,
) -> ModelHandle:
    """Load a causal LM and its head geometry.

    Args:
        spec: bundled name, path to a ``.gguf`` file, local HF directory (a ``save_pruned``
            directory loads as its dense view), hub id, or a Hugging Face ``PreTrainedModel``
            object already in memory (wrapped as it is; a compact pruned model becomes its dense
            view, a new model).
        device: torch device (``cpu``, ``cuda``, ``cuda:1``...), or ``auto``: shard the layers
            over every visible GPU with accelerate (``device_map="auto"``), for a model larger
            than one GPU; the sweep runs the shards in turn, with one GPU's throughput. Default:
            ``cpu`` for a spec, where it already is for a model object.
        dtype: ``float32``, ``bfloat16`` or ``float16``. Default: ``float32`` for a spec, the
            model's own for a model object.
        attn_implementation: passed to transformers (``eager`` for attention weights).
        progress: called with one-line messages during first-use fetching and conversion.
        device_map: an explicit accelerate placement (module -> device, ``"disk"`` offloads to
            the cache); overrides ``device``. Not for pruned models or model objects.
        tokenizer: the tokenizer to use (needed with a model object for text input; replaces
            the loaded one for a spec).

    Returns:
        A :class:`ModelHandle`.

    Raises:
        ModelLoadError: the spec cannot be resolved or loaded.
        UnsupportedArchitectureError: the model type has no geometry row.
    """
    if not isinstance(spec, (str, os.PathLike)):
        return _from_object(spec, tokenizer, device, dtype, attn_implementation, device_map)
    spec = str(spec)
    say = progress or log.info
    torch_dtype = _dtype(dtype)
    path = Path(spec).expanduser()
    if spec in BUNDLED:
        path = ensure_gguf(spec, say)
    if path.suffix == ".gguf":
        if not path.exists():
            raise ModelLoadError(f"no GGUF file at {path}; check the path")
        source, digest = _convert_gguf(path, say), sha256_file(path)
    elif path.is_dir():
        if not (path / "config.json").exists():
            raise ModelLoadError(f"{path} is a directory without config.json, not a Hugging Face model directory")
        if dir_is_pruned(path):
            return _pruned_dir(path, spec, tokenizer, device, torch_dtype, attn_implementation, device_map)
        source, digest = path, _dir_hash(path)
    else:
        source, digest = Path(spec), ""
    device = device or "cpu"
    if device_map is None and device == "auto":
        device_map = "auto"
    model, loaded_tokenizer = _load_pretrained(str(source), torch_dtype, device, attn_implementation, device_map)
    model.eval()
    return ModelHandle(model, tokenizer or loaded_tokenizer, spec, geometry_for(model.config), digest)


def _no_device_map(device: str | None, device_map: Any, what: str) -> None:
    if device_map is not None or device == "auto":
        raise ModelLoadError(f"{what} cannot be sharded with a device_map; pass one device, e.g. device='cuda'")


def _pruned_dir(path: Path, spec: str, tokenizer: Any, device: str | None, dtype: torch.dtype,
                attn: str | None, device_map: Any) -> ModelHandle:
    """The dense view of a directory written by ``save_pruned`` (nothing in it is executed)."""
    _no_device_map(device, device_map, f"the pruned model {path}")
    model, loaded_tokenizer = load_dense(path, dtype)
    model = model.to(device or "cpu")
    if attn:
        model.set_attn_implementation(attn)
    return ModelHandle(model, tokenizer or loaded_tokenizer, spec, geometry_for(model.config), _dir_hash(path),
                       pruned_heads(model.config))


def _is_compact(model: Any) -> bool:
    """Whether a pruned model still has its per-layer head counts (not yet a dense view)."""
    geometry = geometry_for(model.config)
    n_layers, n_heads, _, d_head = head_counts(model.config, geometry)
    handle = ModelHandle(model, None, "", geometry)
    axis = 0 if geometry.out_proj_is_conv1d else 1
    return any(handle.out_proj(layer).weight.shape[axis] != n_heads * d_head for layer in range(n_layers))


def _from_object(model: Any, tokenizer: Any, device: str | None, dtype: str | torch.dtype | None,
                 attn: str | None, device_map: Any) -> ModelHandle:
    """A handle on a model object the caller holds (moved only when ``device`` / ``dtype`` are given)."""
    if not hasattr(model, "config") or not hasattr(model, "get_input_embeddings"):
        raise ModelLoadError(
            f"load_model takes a spec string or a Hugging Face causal LM, not {type(model).__name__}"
        )
    _no_device_map(device, device_map, "a model object")
    geometry = geometry_for(model.config)
    spec = str(getattr(model.config, "_name_or_path", "") or "in-memory")
    heads = pruned_heads(model.config) if is_pruned(model.config) else ()
    if heads and _is_compact(model):
        reference = next(model.parameters())
        model = dense_model(model.config, model.state_dict(), reference.dtype).to(reference.device)
    if dtype is not None:
        model = model.to(_dtype(dtype))
    if device is not None:
        model = model.to(device)
    if attn:
        model.set_attn_implementation(attn)
    model.eval()
    return ModelHandle(model, tokenizer, spec, geometry, "", heads)


def _dir_hash(path: Path) -> str:
    weights = sorted(path.glob("*.safetensors")) or sorted(path.glob("*.bin"))
    if not weights:
        return ""
    return sha256_file(weights[0]) if len(weights) == 1 else "+".join(sha256_file(w)[:16] for w in weights)


def load_tokenizer(spec: str = DEFAULT_MODEL, progress: Callable[[str], None] | None = None) -> Any:
    """Load only the tokenizer of a model spec (converting a GGUF once if needed)."""
    from transformers import AutoTokenizer

    path = Path(spec).expanduser()
    if spec in BUNDLED:
        path = ensure_gguf(spec, progress or log.info)
    if path.suffix == ".gguf":
        path = _convert_gguf(path, progress or log.info)
    try:
        return AutoTokenizer.from_pretrained(str(path))
    except Exception:
        raise ModelLoadError(f"no tokenizer could be loaded for {spec!r}") from None
