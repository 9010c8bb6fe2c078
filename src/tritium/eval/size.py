"""Model size in bits, counted the way Spectra counts it.

Quantized linears cost their packed codes plus 16-bit scales (and zero points or
shifts); total model bits = linear bits + 16·(embedding + LM head parameters). A
tied LM head shares the embedding's parameters and is counted once.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass

from torch import nn

from ..models.adapters import decoder_layout
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

    @property
    def linear_bits_per_weight(self) -> float:
        return self.linear_bits / self.linear_params

    @property
    def total_bits(self) -> float:
        return self.linear_bits + FLOAT_BITS * (self.embedding_params + self.lm_head_params)

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
    embedding = layout.embed_tokens.weight
    head = layout.lm_head.weight if layout.lm_head is not None else None
    head_params = 0 if head is None or head is embedding else head.numel()
    counted = {id(p) for m in linears.values() for p in m.parameters()} | {id(embedding), id(head)}
    other = sum(p.numel() for p in model.parameters() if id(p) not in counted)
    return SizeReport(linear_params, linear_bits, embedding.numel(), head_params, other, len(quantized))
