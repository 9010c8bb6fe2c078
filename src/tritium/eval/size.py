"""Model size in bits, counted the way Spectra counts it.

Quantized linears cost their packed codes plus 16-bit scales (and zero points or
shifts); total model bits = linear bits + 16·(embedding + LM head parameters). A
tied LM head shares the embedding's parameters and is counted once. An embedding or head stored in
q8_0 / q4_0 blocks (``--head-type``) counts its real bits: 8.5 or 4.5 a weight, its fp16 scales included.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from torch import nn

from ..models.adapters import decoder_layout
from ..pack.blocks import BITS_PER_WEIGHT
from ..quant.grids import Grid, GroupLayout, storage_bits

FLOAT_BITS = 16


@dataclass
class SizeReport:
    linear_params: int
    linear_bits: float
    embedding_params: int
    lm_head_params: int  # 0 when tied to the embedding
    other_params: int  # norms and anything else outside the Spectra count
    quantized_linears: int
    # bits per weight of the embedding and the LM head: 16 for a float head, 8.5 / 4.5 for q8_0 / q4_0 blocks
    embedding_bits_per_weight: float = FLOAT_BITS
    lm_head_bits_per_weight: float = FLOAT_BITS

    @property
    def linear_bits_per_weight(self) -> float:
        return self.linear_bits / self.linear_params

    @property
    def total_bits(self) -> float:
        return (self.linear_bits + self.embedding_bits_per_weight * self.embedding_params
                + self.lm_head_bits_per_weight * self.lm_head_params)

    def to_dict(self) -> dict:
        return asdict(self) | {
            "linear_bits_per_weight": self.linear_bits_per_weight,
            "total_bits": self.total_bits,
            "total_megabytes": self.total_bits / 8e6,
        }


def size_report(model: nn.Module, grid: Grid | None = None, quantized: Iterable[str] = (),
                grid_overrides: dict[str, Grid] | None = None) -> SizeReport:
    """Size of ``model`` with the linears named in ``quantized`` stored on ``grid`` (or on their own grid in
    ``grid_overrides``, mixed precision), the rest at 16 bits."""
    quantized = set(quantized)
    layout = decoder_layout(model)
    linears = layout.quantizable_linears()
    unknown = quantized - set(linears)
    if unknown:
        raise ValueError(f"quantized layers the model does not have: {sorted(unknown)[:3]}")
    if quantized and grid is None:
        raise ValueError("size_report needs the grid the quantized layers use")
    linear_params, linear_bits = 0, 0.0
    for name, module in linears.items():
        n_bias = module.bias.numel() if module.bias is not None else 0
        n_weight = module.out_features * module.in_features  # packed linears have no .weight
        linear_params += n_weight + n_bias
        if name in quantized:
            own = (grid_overrides or {}).get(name, grid)
            group_layout = GroupLayout.for_weight((module.out_features, module.in_features), own.group,
                                                  own.ragged_groups, name)
            linear_bits += storage_bits(group_layout, own) + FLOAT_BITS * n_bias
        else:
            linear_bits += FLOAT_BITS * (n_weight + n_bias)
    embed_module, head_module = layout.embed_tokens, layout.lm_head
    embedding_bits = block_head_bits(embed_module)
    if embedding_bits is not None:  # block tables hold buffers, no parameters
        embedding, embedding_params = None, embed_module.num_embeddings * embed_module.embedding_dim
    else:
        embedding = embed_module.weight
        embedding_params, embedding_bits = embedding.numel(), FLOAT_BITS
    head_bits = block_head_bits(head_module) if head_module is not None else None
    if head_bits is not None:
        head, head_params = None, 0 if head_module.tied else head_module.in_features * head_module.out_features
    else:
        head = head_module.weight if head_module is not None else None
        head_params, head_bits = (0 if head is None or head is embedding else head.numel()), FLOAT_BITS
    counted = {id(p) for m in linears.values() for p in m.parameters()} | {id(embedding), id(head)}
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return SizeReport(linear_params, linear_bits, embedding_params, head_params, other, len(quantized),
                      embedding_bits, head_bits)


def block_head_bits(module: nn.Module) -> float | None:
    """Bits per weight of a block-quantized embedding or head (tritium.nn.block_head); None for a float one."""
    return BITS_PER_WEIGHT[module.kind] if getattr(module, "is_block_head", False) else None
