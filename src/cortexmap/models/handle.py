"""``ModelHandle``: a causal LM, its tokenizer and its head geometry, used the way TransformerLens is.

``handle("text")`` returns logits, ``handle.to_tokens(...)`` token ids and ``handle.generate(...)``
text, and every :func:`~cortexmap.intervene` block active around them applies (interventions are
hooks on the Hugging Face modules, which these methods run). Conventions fixed here:

* **BOS**: prompts are encoded with the tokenizer's default special tokens, as the task battery
  does: a BOS is prepended where the tokenizer adds one by default (Gemma, Llama 2), not where it
  does not (GPT-2, SmolLM2). ``add_special_tokens=False`` never adds one. (TransformerLens
  prepends BOS by default; cortexmap follows the tokenizer so a prompt means what it means to HF.)
* **Padding**: none. Several prompts form one batch only if they tokenize to the same length;
  otherwise a one-line error asks for prompts of one length or one call per prompt. Padding
  would shift positions and give the padded rows different head outputs, which is why the task
  battery groups prompts by length instead.
* Gradients follow torch's mode: wrap calls in ``torch.no_grad()`` when none are needed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from cortexmap.errors import CortexmapError
from cortexmap.heads import HeadId, HeadLike, as_head, check_head
from cortexmap.models.geometry import HeadGeometry, geometry_for, head_counts, kv_head_of


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
        tokenizer: its tokenizer (``None``: only token ids can be given).
        spec: the spec it was loaded from (recorded in manifests).
        geometry: the architecture's :class:`HeadGeometry` row.
        model_hash: SHA-256 of the weights file it came from (or of the config for random models).
        pruned_heads: heads removed by pruning, for the dense view of a pruned model
            (:mod:`cortexmap.models.pruned`): they exist on the grid with zero output weights.
    """

    model: Any
    tokenizer: Any
    spec: str
    geometry: HeadGeometry
    model_hash: str = ""
    pruned_heads: tuple[HeadId, ...] = ()
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
        """Every query head of the grid, layer-major (pruned heads of a dense view included)."""
        return [HeadId(layer, head) for layer in range(self.n_layers) for head in range(self.n_heads)]

    def head(self, value: HeadLike) -> HeadId:
        """Coerce and range-check a head (raises ``UnknownHeadError`` outside the grid)."""
        return check_head(as_head(value), self.n_layers, self.n_heads, self.spec)

    def kv_head(self, head: int) -> int:
        """The key/value head query head ``head`` shares with its group (GQA)."""
        return kv_head_of(head, self.n_heads, self.n_kv_heads)

    def describe(self) -> dict[str, Any]:
        """Facts printed by ``cortexmap info`` and written to manifests."""
        facts = {
            "spec": self.spec, "hash": self.model_hash, "model_type": self.model_type,
            "n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
            "d_head": self.d_head, "n_params": self.n_params, "dtype": str(self.dtype).replace("torch.", ""),
            "device": str(self.device), **({"device_map": self.device_map} if self.device_map else {}),
        }
        if self.pruned_heads:
            result = self.model.config.cortexmap_pruning.get("result", {})
            facts["pruned_heads"] = [str(h) for h in self.pruned_heads]
            facts["n_params_pruned"] = result.get("total_params_after")  # the compact model's count
        return facts

    def to_tokens(self, inputs: Any, add_special_tokens: bool = True) -> torch.Tensor:
        """Token ids ``[batch, seq]`` on the model's device.

        Args:
            inputs: a prompt, a list of prompts of one token length, token ids (``[seq]`` or
                ``[batch, seq]``), or a tokenizer output with ``input_ids``.
            add_special_tokens: ``True`` (default) encodes as the tokenizer does by default
                (BOS where it adds one); ``False`` adds none. Ignored for token ids.

        Returns:
            ``[batch, seq]`` long tensor; one prompt gives ``batch = 1``.

        Raises:
            CortexmapError: prompts of different token lengths (cortexmap never pads), or text
                without a tokenizer.
        """
        if isinstance(inputs, Mapping):
            inputs = inputs["input_ids"]
        if isinstance(inputs, torch.Tensor):
            return (inputs if inputs.dim() == 2 else inputs[None]).to(self.device)
        if self.tokenizer is None:
            raise CortexmapError(f"{self.spec} has no tokenizer: pass token ids, or load it with load_model(model, tokenizer=...)")
        texts = [inputs] if isinstance(inputs, str) else list(inputs)
        if not texts:
            raise CortexmapError("no prompt given")
        options = {} if add_special_tokens else {"add_special_tokens": False}
        encoded = [torch.as_tensor(self.tokenizer(t, return_tensors="pt", **options)["input_ids"])[0] for t in texts]
        lengths = {len(e) for e in encoded}
        if len(lengths) != 1:
            raise CortexmapError(
                f"prompts tokenize to different lengths {sorted(lengths)}; give prompts of one length "
                "(cortexmap does not pad) or pass them one at a time"
            )
        return torch.stack(encoded).to(self.device)

    def __call__(self, inputs: Any, **kwargs: Any) -> torch.Tensor:
        """Logits ``[batch, seq, vocab]`` of one forward pass, with any active interventions applied.

        Args:
            inputs: what :meth:`to_tokens` takes (prompts of one token length, or token ids).
            **kwargs: passed to the model's forward (e.g. ``attention_mask``).

        Returns:
            The logits at every position.
        """
        kwargs.setdefault("use_cache", False)
        return self.model(input_ids=self.to_tokens(inputs), **kwargs).logits

    def generate(self, prompt: Any, max_new_tokens: int = 20, **kwargs: Any) -> str | list[str]:
        """Continue a prompt, greedily unless told otherwise, with any active interventions applied.

        Args:
            prompt: a prompt, or token ids ``[seq]`` / ``[1, seq]``; a list of prompts (or ids
                ``[batch, seq]``) is generated one prompt at a time (no padding) and gives a list.
            max_new_tokens: tokens to generate at most.
            **kwargs: passed to ``model.generate`` (e.g. ``do_sample=True, temperature=0.7``);
                ``do_sample`` defaults to False.

        Returns:
            The generated continuation as text, without the prompt (special tokens skipped);
            a list for several prompts.
        """
        if self.tokenizer is None:
            raise CortexmapError(f"{self.spec} has no tokenizer to decode with: load it with load_model(model, tokenizer=...)")
        if isinstance(prompt, torch.Tensor) and prompt.dim() == 2 and prompt.shape[0] > 1:
            return [self.generate(row, max_new_tokens, **kwargs) for row in prompt]  # type: ignore[misc]
        if not isinstance(prompt, (str, torch.Tensor, Mapping)):
            return [self.generate(p, max_new_tokens, **kwargs) for p in prompt]  # type: ignore[misc]
        ids = self.to_tokens(prompt)
        kwargs.setdefault("do_sample", False)
        if kwargs.get("pad_token_id") is None and getattr(self.tokenizer, "pad_token_id", None) is None:
            kwargs["pad_token_id"] = getattr(self.tokenizer, "eos_token_id", None)
        out = self.model.generate(input_ids=ids, attention_mask=torch.ones_like(ids),
                                  max_new_tokens=max_new_tokens, **kwargs)
        return self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def wrap_model(model: Any, tokenizer: Any = None, spec: str = "in-memory", model_hash: str = "") -> ModelHandle:
    """Wrap an already-built HF causal LM of stock shapes (e.g. a tiny random model in tests) in a handle.

    The model is put in eval mode. :func:`~cortexmap.models.load_model` also takes a model object
    and turns a pruned one into its dense view; use it for models you did not build yourself.
    """
    model.eval()
    return ModelHandle(model, tokenizer, spec, geometry_for(model.config), model_hash)
