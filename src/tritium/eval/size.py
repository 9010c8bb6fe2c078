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


def packed_storage(model: nn.Module) -> tuple[float, str]:
    """Bits per weight the decoder linears of a model holding packed modules really take on disk (codes with
    their layout's padding, scales, zero points, shifts; float linears at 16 bits), and a one-line description
    such as "packed ternary base3 in 14 linears, 1.75 bits/weight". The Spectra count of :func:`size_report`
    counts the grid's dense width instead, as the bit budget does."""
    from ..nn.convert import packed_modules
    from ..nn.packed_linear import TernaryLinear
    from ..pack.packed import bits_per_weight

    linears = decoder_layout(model).quantizable_linears()
    packed = {name: m for name, m in packed_modules(model).items() if name in linears}
    weights, bits = 0, 0.0
    kinds: dict[str, int] = {}
    for name, module in linears.items():
        n_weight = module.out_features * module.in_features
        weights += n_weight
        if name in packed:
            bits += bits_per_weight(packed[name].packed_weight())["bits_per_weight"] * n_weight
            radix = packed[name].radix
            label = (f"ternary {'base3' if radix == 3 else '2-bit'}" if isinstance(packed[name], TernaryLinear)
                     else f"{radix.bit_length() - 1}-bit")
            kinds[label] = kinds.get(label, 0) + 1
        else:
            bits += FLOAT_BITS * n_weight
    per_weight = bits / max(weights, 1)
    left = len(linears) - len(packed)
    return per_weight, (f"packed {'/'.join(sorted(kinds, key=lambda k: -kinds[k]))} in {len(packed)} linears"
                        + (f", {left} float" if left else "") + f", {per_weight:.2f} bits/weight")


GGUF_LINEAR_NAMES = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


def gguf_size_report(path) -> tuple[SizeReport, dict[str, int], str]:
    """Size of a GGUF file's model from the types its tensors are stored in: (report, decoder-linear
    type -> count, description such as "gguf TQ1_0/Q4_0 mix, 1.69 bits/weight").

    The decoder linears are counted at their real bits (GGUF blocks with their scales); the embedding
    and LM head at 16 bits as in the Spectra count, whatever their GGUF type."""
    from ..utils.gguf_file import read_gguf_layout

    layout = read_gguf_layout(path)
    linear_params, linear_bits, embedding, head, other = 0, 0.0, 0, 0, 0
    types: dict[str, int] = {}
    for tensor in layout.tensors:
        parts = tensor.name.split(".")
        if len(parts) == 4 and parts[0] == "blk" and parts[2] in GGUF_LINEAR_NAMES:
            linear_params += tensor.n_elements
            linear_bits += 8 * tensor.nbytes
            if parts[3] == "weight":
                types[tensor.type_name] = types.get(tensor.type_name, 0) + 1
        elif tensor.name == "token_embd.weight":
            embedding += tensor.n_elements
        elif tensor.name == "output.weight":
            head += tensor.n_elements
        else:
            other += tensor.n_elements
    if not linear_params:
        from ..models.loader import ModelSourceError

        raise ModelSourceError(f"{path} holds no decoder linears (blk.N.attn_q.weight, ...): it is not a decoder "
                               "model tritium can size")
    quantized = sum(n for qtype, n in types.items() if qtype not in ("F32", "F16", "BF16", "F64"))
    report = SizeReport(linear_params, linear_bits, embedding, head, other, quantized)
    label = "/".join(sorted(types, key=lambda t: (-types[t], t)))
    return report, types, f"gguf {label}{' mix' if len(types) > 1 else ''}, {report.linear_bits_per_weight:.2f} bits/weight"
