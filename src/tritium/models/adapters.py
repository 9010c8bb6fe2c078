"""Architecture adapters: find the decoder blocks and their linear layers.

One structural mechanism serves every supported family. Llama, Mistral, Qwen2/3 and
Gemma 1/2/3 all stack blocks as ``<backbone>.layers`` with ``self_attn.{q,k,v,o}_proj``
and ``mlp.{gate,up,down}_proj``; what differs between them (norm placement, Gemma's
``1 + weight`` norm, q/k norms) is described as data here, not a class per family.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn

from ..utils.errors import TritiumError

ATTENTION_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj")
MLP_LINEARS = ("mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
BLOCK_LINEARS = ATTENTION_LINEARS + MLP_LINEARS
KNOWN_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text")
# Set on an MLP whose down_proj input gets an online Hadamard (tritium.models.online_rotation's R4).
ONLINE_INPUT_ROTATION_ATTRIBUTE = "tritium_online_hadamard"


class UnsupportedArchitectureError(TritiumError, ValueError):
    """The model's layout is not one tritium knows how to walk."""


@dataclass
class ScaleGroup:
    """Linears that read the same input, and the op that produces it.

    AWQ folds a per-channel scale into ``producer`` (a norm or a linear) and its
    inverse into ``consumers``; ``producer`` is ``None`` when no fold is possible.
    """

    producer: str | None
    consumers: tuple[str, ...]


@dataclass
class DecoderLayout:
    model_type: str
    blocks: nn.ModuleList
    blocks_path: str
    embed_tokens: nn.Module
    lm_head: nn.Module | None
    final_norm: nn.Module | None
    # Gemma's RMSNorm multiplies by (1 + weight): folding a scale must respect that offset.
    norm_weight_offset: float = 0.0
    scale_groups: list[ScaleGroup] = field(default_factory=list)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    def block_linears(self, index: int) -> dict[str, nn.Linear]:
        block = self.blocks[index]
        return {name: block.get_submodule(name) for name in BLOCK_LINEARS}

    def quantizable_linears(self) -> dict[str, nn.Linear]:
        """Every decoder linear, keyed by its full module name. Embeddings and the LM head stay float."""
        out = {}
        for i in range(self.num_blocks):
            for name, module in self.block_linears(i).items():
                out[f"{self.blocks_path}.{i}.{name}"] = module
        return out


def _expected_layout_message(model: nn.Module, detail: str) -> str:
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    return (
        f"unsupported architecture {model_type!r}: {detail}. tritium expects a decoder-only model whose "
        f"blocks sit in an nn.ModuleList of config.num_hidden_layers entries, each with the linears "
        f"{', '.join(BLOCK_LINEARS)} (the layout of {', '.join(KNOWN_FAMILIES)}). "
        "Convert the model to one of these families or add an adapter in tritium.models.adapters."
    )


def _find_block_list(model: nn.Module) -> tuple[str, nn.ModuleList]:
    n_layers = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    candidates = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) > 0 and (n_layers is None or len(module) == n_layers)
    ]
    for name, module in candidates:
        if all(_has_linear(module[0], path) for path in BLOCK_LINEARS):
            return name, module
    if not candidates:
        raise UnsupportedArchitectureError(_expected_layout_message(model, "no list of decoder blocks was found"))
    first_name, first = candidates[0]
    missing = [p for p in BLOCK_LINEARS if not _has_linear(first[0], p)]
    raise UnsupportedArchitectureError(
        _expected_layout_message(model, f"the blocks at {first_name!r} lack the linears {missing}")
    )


def _has_linear(block: nn.Module, path: str) -> bool:
    try:
        module = block.get_submodule(path)
        # tritium.nn's packed linears stand in for nn.Linear in packed models
        return isinstance(module, nn.Linear) or getattr(module, "is_packed_linear", False)
    except AttributeError:
        return False


def _scale_groups(block: nn.Module) -> list[ScaleGroup]:
    # Gemma 2/3 put the MLP behind pre_feedforward_layernorm; Llama/Qwen/Mistral/Gemma 1
    # behind post_attention_layernorm. A norm that *follows* the MLP/attention cannot take a fold.
    mlp_norm = "pre_feedforward_layernorm" if hasattr(block, "pre_feedforward_layernorm") else "post_attention_layernorm"
    attn = block.get_submodule("self_attn")
    v, o = attn.v_proj, attn.o_proj
    # v→o folds only without grouped-query attention, where v's outputs feed o's inputs one to one.
    v_to_o = v.out_features == o.in_features
    # An online Hadamard between up_proj and down_proj (R4) mixes all channels: no per-channel scale folds across it.
    up_to_down = getattr(block.get_submodule("mlp"), ONLINE_INPUT_ROTATION_ATTRIBUTE, None) is None
    return [
        ScaleGroup("input_layernorm", ATTENTION_LINEARS[:3]),
        ScaleGroup("self_attn.v_proj" if v_to_o else None, ("self_attn.o_proj",)),
        ScaleGroup(mlp_norm, ("mlp.gate_proj", "mlp.up_proj")),
        ScaleGroup("mlp.up_proj" if up_to_down else None, ("mlp.down_proj",)),
    ]


def decoder_layout(model: nn.Module) -> DecoderLayout:
    """Describe ``model`` as a stack of decoder blocks; raise a clear error if it is not one."""
    if sum(p.numel() for p in model.parameters()) == 0:
        raise UnsupportedArchitectureError("the model has no parameters: nothing to quantize")
    blocks_path, blocks = _find_block_list(model)
    model_type = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    lm_head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    embed = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if embed is None:
        raise UnsupportedArchitectureError(_expected_layout_message(model, "no input embedding was found"))
    backbone_path = blocks_path.rsplit(".", 1)[0] if "." in blocks_path else ""
    backbone = model.get_submodule(backbone_path) if backbone_path else model
    return DecoderLayout(
        model_type=model_type,
        blocks=blocks,
        blocks_path=blocks_path,
        embed_tokens=embed,
        lm_head=lm_head,
        final_norm=getattr(backbone, "norm", None),
        norm_weight_offset=1.0 if str(model_type).startswith("gemma") else 0.0,
        scale_groups=_scale_groups(blocks[0]),
    )
