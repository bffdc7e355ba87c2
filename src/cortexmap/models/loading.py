"""Load a causal LM into a :class:`ModelHandle` that knows its heads.

``load_model(spec)`` accepts a bundled name (``smollm2-135m``, ``gemma3-270m``), a path to a
``.gguf`` file, a local Hugging Face model directory, or a hub id (reachable hub or local HF
cache). GGUF files are dequantized once by transformers and cached as safetensors under
``$CORTEXMAP_CACHE/converted/<sha256[:16]>``, so later loads take seconds.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from cortexmap.errors import ModelLoadError
from cortexmap.heads import HeadId, HeadLike, as_head, check_head
from cortexmap.models.bundled import BUNDLED, DEFAULT_MODEL, cache_dir, ensure_gguf, sha256_file
from cortexmap.models.geometry import HeadGeometry, geometry_for, head_counts, kv_head_of

log = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def _resolve(root: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        root = getattr(root, part, None)
        if root is None:
            return None
    return root


@dataclass
class ModelHandle:
    """A loaded causal LM with its tokenizer and head geometry.

    Attributes:
        model: the Hugging Face ``*ForCausalLM`` module, in eval mode.
        tokenizer: its tokenizer.
        spec: the spec it was loaded from (recorded in manifests).
        geometry: the architecture's :class:`HeadGeometry` row.
        model_hash: SHA-256 of the weights file it came from (or of the config for random models).
    """

    model: Any
    tokenizer: Any
    spec: str
    geometry: HeadGeometry
    model_hash: str = ""
    n_layers: int = field(init=False)
    n_heads: int = field(init=False)
    n_kv_heads: int = field(init=False)
    d_head: int = field(init=False)

    def __post_init__(self) -> None:
        self.n_layers, self.n_heads, self.n_kv_heads, self.d_head = head_counts(self.model.config, self.geometry)

    @property
    def model_type(self) -> str:
        return str(self.model.config.model_type)

    @property
    def device(self) -> torch.device:
        """Where input ids go: the input embeddings' device (the first shard of a ``device_map`` model)."""
        return self.model.get_input_embeddings().weight.device

    @property
    def device_map(self) -> dict[str, str] | None:
        """Module -> device of a model sharded by accelerate (``device="auto"``), else None."""
        placed = getattr(self.model, "hf_device_map", None)
        return {k: str(v) for k, v in placed.items()} if placed and len(set(map(str, placed.values()))) > 1 else None

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def n_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters())

    def blocks(self) -> Any:
        """The list of decoder blocks."""
        return _resolve(self.model, self.geometry.layers)

    def attention(self, layer: int) -> Any:
        return getattr(self.blocks()[layer], self.geometry.attn)

    def out_proj(self, layer: int) -> Any:
        """The attention output projection of ``layer``; its input is the concatenated head outputs."""
        return getattr(self.attention(layer), self.geometry.out_proj)

    def final_modules(self) -> list[Any]:
        """Modules mapping the last hidden state to logits, in order (final norm, ..., unembedding)."""
        norms = [m for m in (_resolve(self.model, p) for p in self.geometry.final_norm) if m is not None]
        return norms + [self.model.get_output_embeddings()]

    def logits_from_hidden(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits from last-layer hidden states (final norm, unembedding, Gemma's soft-capping)."""
        for module in self.final_modules():
            hidden = module(hidden)
        cap = getattr(self.model.config, "final_logit_softcapping", None)
        if cap:
            hidden = torch.tanh(hidden / cap) * cap
        return hidden

    def heads(self) -> list[HeadId]:
        """Every query head, layer-major."""
        return [HeadId(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]

    def head(self, value: HeadLike) -> HeadId:
        """Coerce and range-check a head (raises ``UnknownHeadError`` outside the grid)."""
        return check_head(as_head(value), self.n_layers, self.n_heads, self.spec)

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` shares with its group (GQA)."""
        return kv_head_of(head, self.n_heads, self.n_kv_heads)

    def describe(self) -> dict[str, Any]:
        """Facts printed by ``cortexmap info`` and written to manifests."""
        return {
            "spec": self.spec, "hash": self.model_hash, "model_type": self.model_type,
            "n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
            "d_head": self.d_head, "n_params": self.n_params, "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device), **({"device_map": self.device_map} if self.device_map else {}),
        }


def wrap_model(model: Any, tokenizer: Any = None, spec: str = "in-memory", model_hash: str = "") -> ModelHandle:
    """Wrap an already-built HF causal LM (e.g. a tiny random model in tests) in a handle."""
    model.eval()
    return ModelHandle(model, tokenizer, spec, geometry_for(model.config), model_hash)


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
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / "source.txt").write_text(f"{path}\nsha256 {digest}\n")
    (tmp / ".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    os.replace(tmp, target)
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
    spec: str = DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str | torch.dtype | None = "float32",
    attn_implementation: str | None = None,
    progress: Callable[[str], None] | None = None,
    device_map: str | dict[str, Any] | None = None,
) -> ModelHandle:
    """Load a causal LM and its head geometry.

    Args:
        spec: bundled name, path to a ``.gguf`` file, local HF directory, or hub id.
        device: torch device (``cpu``, ``cuda``, ``cuda:1``...), or ``auto``: shard the layers
            over every visible GPU with accelerate (``device_map="auto"``), for a model larger
            than one GPU; the sweep runs the shards in turn, with one GPU's throughput.
        dtype: ``float32`` (default), ``bfloat16`` or ``float16``.
        attn_implementation: passed to transformers (``eager`` for attention weights).
        progress: called with one-line messages during first-use fetching and conversion.
        device_map: an explicit accelerate placement (module -> device, ``"disk"`` offloads to
            the cache); overrides ``device``.

    Returns:
        A :class:`ModelHandle`.

    Raises:
        ModelLoadError: the spec cannot be resolved or loaded.
        UnsupportedArchitectureError: the model type has no geometry row.
    """
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
        source, digest = path, _dir_hash(path)
    else:
        source, digest = Path(spec), ""
    if device_map is None and device == "auto":
        device_map = "auto"
    model, tokenizer = _load_pretrained(str(source), torch_dtype, device, attn_implementation, device_map)
    model.eval()
    return ModelHandle(model, tokenizer, spec, geometry_for(model.config), digest)


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
