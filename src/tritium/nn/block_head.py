"""A block-quantized embedding and LM head (q8_0 / q4_0, :mod:`tritium.pack.blocks`).

In a small model the vocabulary matrix is a large share of the weights (SmolLM2-135M: 28M of 135M
parameters, tied), so once the decoder linears are packed it dominates the folder. ``quantize_head_``
replaces the embedding and the LM head by :class:`BlockEmbedding` and :class:`BlockLMHead`:

* the embedding decodes only the rows it looks up;
* the head multiplies with the blocks directly (``tritium::block_linear``: the C++ kernel on the CPU).

A tied pair stays one matrix: the head reads the embedding's blocks. transformers knows nothing of
that tie (it ties parameters by name), so the model's config says ``tie_word_embeddings: false`` and
the packed folder's ``quantization_config.head`` records ``tied: true``; its loader ties them again.
"""

from __future__ import annotations

import zlib

import torch
from torch import Tensor, nn

from ..kernels.head_ops import block_linear
from ..pack.blocks import (
    BLOCK_SIZE,
    BLOCK_TYPES,
    CODE_BYTES,
    KIND_BITS,
    BlockWeight,
    HeadTypeError,
    check_block_width,
    check_head_type,
    quantize_blocks,
)


def _empty_blocks(rows: int, cols: int, kind: str, device=None) -> tuple[Tensor, Tensor]:
    dtype = torch.int8 if kind == "q8_0" else torch.uint8
    blocks = cols // BLOCK_SIZE
    return (torch.zeros(rows, blocks, CODE_BYTES[kind], dtype=dtype, device=device),
            torch.zeros(rows, blocks, dtype=torch.float16, device=device))


class _KeepsBlockDtypes(nn.Module):
    """``model.to(bfloat16)`` must not round the fp16 scales: they follow device moves only. The module's
    output dtype (``compute_dtype``) follows dtype casts as a float weight would."""

    compute_dtype: torch.dtype = torch.float32

    def _apply(self, fn, recurse=True):
        kept = {k: b for k, b in self._buffers.items() if b is not None and b.is_floating_point()}
        super()._apply(fn, recurse)
        for key, before in kept.items():
            after = self._buffers[key]
            if after.dtype != before.dtype:
                self._buffers[key] = before.to(device=after.device)
        # what a float weight of this module would have become
        self.compute_dtype = fn(torch.empty(0, dtype=self.compute_dtype)).dtype
        return self


class BlockEmbedding(_KeepsBlockDtypes):
    """An embedding table in q8_0 / q4_0 blocks; a lookup decodes only the rows it reads."""

    is_block_head = True

    def __init__(self, num_embeddings: int, embedding_dim: int, kind: str, padding_idx: int | None = None,
                 compute_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if kind not in BLOCK_TYPES:
            raise HeadTypeError(f"block type {kind!r} is unknown: choose one of {BLOCK_TYPES}")
        check_block_width(embedding_dim, kind, "the embedding")
        self.num_embeddings, self.embedding_dim, self.kind = num_embeddings, embedding_dim, kind
        self.padding_idx = padding_idx
        self.compute_dtype = compute_dtype
        codes, scale = _empty_blocks(num_embeddings, embedding_dim, kind, device)
        self.register_buffer("codes", codes)
        self.register_buffer("scale", scale)

    @classmethod
    def from_embedding(cls, embedding: nn.Embedding, kind: str) -> "BlockEmbedding":
        weight = embedding.weight
        module = cls(embedding.num_embeddings, embedding.embedding_dim, kind, embedding.padding_idx, weight.dtype,
                     device=weight.device)
        blocks = quantize_blocks(weight, kind, "the embedding")
        module.codes.data, module.scale.data = blocks.codes, blocks.scale
        return module

    def block_weight(self) -> BlockWeight:
        return BlockWeight(self.codes, self.scale, self.kind)

    def forward(self, ids: Tensor) -> Tensor:
        return self.block_weight().dequantize_rows(ids, self.compute_dtype)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, kind={self.kind}"


class BlockLMHead(_KeepsBlockDtypes):
    """y = x·Wᵀ with W in q8_0 / q4_0 blocks: its own, or a tied embedding's."""

    is_block_head = True

    def __init__(self, in_features: int, out_features: int, kind: str, tied_to: BlockEmbedding | None = None,
                 compute_dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        if kind not in BLOCK_TYPES:
            raise HeadTypeError(f"block type {kind!r} is unknown: choose one of {BLOCK_TYPES}")
        check_block_width(in_features, kind, "the LM head")
        self.in_features, self.out_features, self.kind = in_features, out_features, kind
        self.compute_dtype = compute_dtype
        if tied_to is not None:
            if (tied_to.num_embeddings, tied_to.embedding_dim, tied_to.kind) != (out_features, in_features, kind):
                raise HeadTypeError(f"a tied {kind} head of {out_features}x{in_features} cannot read a "
                                    f"{tied_to.kind} embedding of {tied_to.num_embeddings}x{tied_to.embedding_dim}")
            # A plain attribute, not a submodule: the blocks belong to (and are saved with) the embedding.
            object.__setattr__(self, "_tied_to", tied_to)
        else:
            object.__setattr__(self, "_tied_to", None)
            codes, scale = _empty_blocks(out_features, in_features, kind, device)
            self.register_buffer("codes", codes)
            self.register_buffer("scale", scale)

    @classmethod
    def from_linear(cls, linear: nn.Linear, kind: str) -> "BlockLMHead":
        weight = linear.weight
        module = cls(linear.in_features, linear.out_features, kind, compute_dtype=weight.dtype, device=weight.device)
        blocks = quantize_blocks(weight, kind, "the LM head")
        module.codes.data, module.scale.data = blocks.codes, blocks.scale
        return module

    @property
    def tied(self) -> bool:
        return self._tied_to is not None

    @property
    def tied_to(self) -> BlockEmbedding | None:
        return self._tied_to

    def block_weight(self) -> BlockWeight:
        source = self._tied_to if self._tied_to is not None else self
        return BlockWeight(source.codes, source.scale, self.kind)

    def forward(self, x: Tensor) -> Tensor:
        weight = self.block_weight()
        return block_linear(x, weight.codes, weight.scale, KIND_BITS[self.kind])

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, kind={self.kind}"
                + (", tied to the embedding" if self.tied else ""))


# ---------------------------------------------------------------------------------- whole-model helpers


def _named(model: nn.Module, module: nn.Module | None) -> str | None:
    if module is None:
        return None
    for name, candidate in model.named_modules(remove_duplicate=False):
        if candidate is module:
            return name
    return None


def head_type_of(model: nn.Module) -> str:
    """``q8_0`` / ``q4_0`` when the model's embedding is block-quantized, else ``f16`` (a float head)."""
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    return embed.kind if isinstance(embed, BlockEmbedding) else "f16"


def check_head_quantizable(model: nn.Module, head_type: str) -> None:
    """Raise a :class:`HeadTypeError` naming the reason when ``model``'s embedding and LM head cannot be
    stored as ``head_type``; cheap (reads shapes only), so commands call it before any real work."""
    check_head_type(head_type)
    current = head_type_of(model)
    if current != "f16":
        if current != head_type:
            raise HeadTypeError(f"the model's embedding and LM head are already {current}: --head-type {head_type} "
                                f"would {'need their float values back' if head_type == 'f16' else 'quantize them twice'}"
                                f"; keep --head-type {current} (or leave it unset), or start from the float model")
        return
    if head_type == "f16":
        return
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if type(embed) is not nn.Embedding:
        raise HeadTypeError(f"--head-type {head_type}: the input embedding is a {type(embed).__name__}, not a plain "
                            "nn.Embedding (it may scale or otherwise change its output, which a block table would "
                            "drop); keep --head-type f16 for this model")
    if embed.max_norm is not None:
        raise HeadTypeError(f"--head-type {head_type}: the embedding renormalises rows (max_norm), which a block table "
                            "cannot; keep --head-type f16")
    check_block_width(embed.embedding_dim, head_type, "the embedding")
    if head is None:
        raise HeadTypeError(f"--head-type {head_type}: the model has no LM head (get_output_embeddings() is None); "
                            "keep --head-type f16")
    if type(head) is not nn.Linear:
        raise HeadTypeError(f"--head-type {head_type}: the LM head is a {type(head).__name__}, not an nn.Linear; keep "
                            "--head-type f16")
    if head.bias is not None:
        raise HeadTypeError(f"--head-type {head_type}: the LM head has a bias, which the block kernel does not add; "
                            "keep --head-type f16 for this model")
    check_block_width(head.in_features, head_type, "the LM head")


@torch.no_grad()
def quantize_head_(model: nn.Module, head_type: str) -> dict:
    """Store ``model``'s embedding and LM head as ``head_type`` blocks, in place; ``f16`` changes nothing.

    Returns the record a packed folder keeps (:func:`head_record`). A tied pair becomes one block table.
    """
    check_head_quantizable(model, head_type)
    if head_type == "f16" or head_type_of(model) == head_type:
        return head_record(model)
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    embed_name, head_name = _named(model, embed), _named(model, head)
    tied = head.weight is embed.weight
    block_embed = BlockEmbedding.from_embedding(embed, head_type)
    if tied:
        block_head = BlockLMHead(head.in_features, head.out_features, head_type, tied_to=block_embed,
                                 compute_dtype=head.weight.dtype)
    else:
        block_head = BlockLMHead.from_linear(head, head_type)
    model.set_submodule(embed_name, block_embed)
    model.set_submodule(head_name, block_head)
    if tied:
        _untie_in_config(model, embed_name, head_name)
    return head_record(model)


def _untie_in_config(model: nn.Module, embed_name: str, head_name: str) -> None:
    # transformers ties parameters by name (lm_head.weight <- embed_tokens.weight); the block modules have no
    # such parameters, and their tie is ours: transformers must not try it.
    for config in (getattr(model, "config", None), getattr(getattr(model, "config", None), "text_config", None)):
        if config is not None and hasattr(config, "tie_word_embeddings"):
            config.tie_word_embeddings = False
    tied_keys = getattr(model, "all_tied_weights_keys", None)
    if isinstance(tied_keys, dict):
        model.all_tied_weights_keys = {k: v for k, v in tied_keys.items()
                                       if not k.startswith(head_name + ".") and not v.startswith(embed_name + ".")}


def block_checksum(module: BlockEmbedding | BlockLMHead) -> str:
    """CRC-32 of a block module's codes and scales (a tied head has none of its own: the embedding's)."""
    weight = module.block_weight()
    crc = 0
    for t in (weight.codes, weight.scale):
        crc = zlib.crc32(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes(), crc)
    return f"{crc:08x}"


def head_record(model: nn.Module) -> dict:
    """What a packed folder records of the head: its type, and for block heads the module names, whether
    the pair is tied, and checksums. ``{"type": "f16"}`` for a float head."""
    kind = head_type_of(model)
    if kind == "f16":
        return {"type": "f16"}
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    return {"type": kind, "embedding": _named(model, embed), "lm_head": _named(model, head),
            "tied": isinstance(head, BlockLMHead) and head.tied_to is embed,
            "checksums": {"embedding": block_checksum(embed), "lm_head": block_checksum(head)}}


def replace_with_empty_head(model: nn.Module, record: dict) -> None:
    """Swap the embedding and head named in ``record`` for empty block modules (before a state dict loads)."""
    kind = check_head_type(record.get("type", "f16"))
    if kind == "f16":
        return
    try:
        embed, head = model.get_submodule(record["embedding"]), model.get_submodule(record["lm_head"])
    except (KeyError, AttributeError) as err:
        raise HeadTypeError(f"the packed checkpoint's head record {record} names modules this model does not have: "
                            "the config.json is damaged or from another model") from err
    if not isinstance(embed, nn.Embedding) or not isinstance(head, nn.Linear):
        raise HeadTypeError(f"the packed checkpoint's {kind} head replaces {record['embedding']} and "
                            f"{record['lm_head']}, but they are a {type(embed).__name__} and a {type(head).__name__}")
    device, dtype = embed.weight.device, embed.weight.dtype
    block_embed = BlockEmbedding(embed.num_embeddings, embed.embedding_dim, kind, embed.padding_idx, dtype, device)
    if record.get("tied"):
        block_head = BlockLMHead(head.in_features, head.out_features, kind, tied_to=block_embed, compute_dtype=dtype)
    else:
        block_head = BlockLMHead(head.in_features, head.out_features, kind, compute_dtype=dtype, device=device)
    model.set_submodule(record["embedding"], block_embed)
    model.set_submodule(record["lm_head"], block_head)


def verify_head(model: nn.Module, record: dict) -> None:
    """Raise unless the loaded block head holds the values recorded when it was saved."""
    kind = record.get("type", "f16")
    if kind == "f16":
        return
    from ..pack.layouts import PackError

    if head_type_of(model) != kind:
        raise PackError(f"the checkpoint's {kind} embedding was not rebuilt in the model")
    saved = record.get("checksums") or {}
    for part, module in (("embedding", model.get_input_embeddings()), ("lm_head", model.get_output_embeddings())):
        module.block_weight().validate(part)
        if part in saved and block_checksum(module) != saved[part]:
            raise PackError(f"the loaded {kind} {part} does not match the checksum recorded when it was saved: the "
                            "file is corrupt, truncated or from another model. Re-export it.")


@torch.no_grad()
def dequantize_head_(model: nn.Module) -> None:
    """Replace block modules by float ``nn.Embedding`` / ``nn.Linear`` holding their decoded values (a tied
    pair shares one parameter again), for code that reads float tables, such as the GGUF writer."""
    embed, head = model.get_input_embeddings(), model.get_output_embeddings()
    if not isinstance(embed, BlockEmbedding):
        return
    dtype = embed.compute_dtype
    table = nn.Embedding(embed.num_embeddings, embed.embedding_dim, embed.padding_idx, device=embed.codes.device,
                         dtype=dtype)
    table.weight.copy_(embed.block_weight().dequantize(torch.float32))
    tied = isinstance(head, BlockLMHead) and head.tied_to is embed
    linear = nn.Linear(head.in_features, head.out_features, bias=False, device=embed.codes.device, dtype=dtype)
    if tied:
        linear.weight = table.weight
    else:
        linear.weight.copy_(head.block_weight().dequantize(torch.float32))
    embed_name, head_name = _named(model, embed), _named(model, head)
    model.set_submodule(embed_name, table)
    model.set_submodule(head_name, linear)
    if tied:
        for config in (getattr(model, "config", None), getattr(getattr(model, "config", None), "text_config", None)):
            if config is not None and hasattr(config, "tie_word_embeddings"):
                config.tie_word_embeddings = True

