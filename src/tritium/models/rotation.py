"""Rotate a decoder's weights so that they quantize better, without changing what it computes.

QuaRot / SpinQuant's fused rotations, as a transform applied before any method:

* Each RMSNorm's scale is folded into the linears that read its output, leaving a norm of
  unit weight. A unit-weight RMSNorm commutes with any orthogonal Q, since ‖xQ‖ = ‖x‖.
* R1 rotates the residual stream by Q: the embedding becomes E·Q, every linear that reads
  the stream (q, k, v, gate, up and the head) W·Q, and every linear that writes to it
  (o, down) Qᵀ·W.
* R2 rotates each attention head's values by a head-sized orthogonal matrix between
  v_proj and o_proj, which attention's per-head weighted sum leaves alone.

The result is the same architecture with other weights: it saves, packs, exports and
loads like any model. A tied head cannot stay tied, because the head absorbs the final
norm's scale while the embedding must not: the head is untied (``tie_word_embeddings``
becomes false), which costs one more vocabulary × width matrix on disk and nothing at run time.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn

from ..quant.hadamard import orthogonal_matrix
from ..utils.errors import TritiumError
from .adapters import UnsupportedArchitectureError, decoder_layout

ROTATION_KINDS = ("hadamard", "random")
ROTATION_CONFIG_KEY = "tritium_rotation"
# Norms that sit *after* a sublayer (Gemma 2/3's sandwich norms) scale the stream in the
# unrotated basis, which no weight can absorb.
_SANDWICH_NORMS = ("pre_feedforward_layernorm", "post_feedforward_layernorm")


class RotationError(TritiumError, ValueError):
    """A rotate setting the rotation cannot take, or a model rotated otherwise already."""


@dataclass
class RotationSettings:
    seed: int = 0
    kind: str = "hadamard"  # "hadamard" where the width allows one, else a random orthogonal matrix
    heads: bool = True  # R2: rotate each head between v_proj and o_proj

    def __post_init__(self):
        if self.kind not in ROTATION_KINDS:
            raise RotationError(f"rotation kind {self.kind!r} is unknown: use one of {ROTATION_KINDS}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise RotationError(f"rotation seed must be an integer, not {self.seed!r}")
        if not isinstance(self.heads, bool):
            raise RotationError(f"rotation heads must be true or false, not {self.heads!r}")


def rotation_settings(value) -> RotationSettings | None:
    """Read a recipe's ``rotate`` value: false/None (off), true (defaults) or a mapping of settings."""
    if value is None or value is False:
        return None
    if value is True:
        return RotationSettings()
    if isinstance(value, RotationSettings):
        return value
    if isinstance(value, dict):
        unknown = set(value) - set(RotationSettings.__dataclass_fields__)
        if unknown:
            raise RotationError(f"rotate has unknown option(s) {sorted(unknown)}; allowed: "
                             f"{sorted(RotationSettings.__dataclass_fields__)}")
        return RotationSettings(**value)
    raise RotationError(f"rotate must be true, false or a mapping such as {{seed: 0, kind: hadamard}}, not {value!r}")


@dataclass
class RotationReport:
    hidden_size: int
    residual_rotation: str  # the construction used for R1: "hadamard" or "random"
    head_dim: int | None
    head_rotation: str | None
    untied_head: bool
    seed: int
    notes: list[str]

    def to_dict(self) -> dict:
        return asdict(self)


def saved_rotation(config) -> RotationSettings | None:
    """The rotation a model's weights carry (``tritium_rotation`` in its config), or None."""
    value = config.get(ROTATION_CONFIG_KEY) if isinstance(config, dict) else getattr(config, ROTATION_CONFIG_KEY, None)
    return rotation_settings(value) if value else None


def match_rotation_(model: nn.Module, settings: RotationSettings | None) -> bool:
    """Rotate ``model`` as ``settings`` say unless it already is; returns whether it rotated."""
    current = saved_rotation(model.config)
    if settings is None or current == settings:
        return False
    if current is not None:
        raise RotationError(f"the model is already rotated with {current}, not {settings}: start from the unrotated model")
    rotate_model_(model, settings)
    return True


def check_rotatable(model: nn.Module) -> None:
    """Raise before any work when ``model``'s layout cannot absorb the rotations."""
    layout = decoder_layout(model)
    block = layout.blocks[0]
    sandwich = [n for n in _SANDWICH_NORMS if hasattr(block, n)]
    if sandwich:
        raise UnsupportedArchitectureError(
            f"{layout.model_type!r} normalises sublayer outputs ({', '.join(sandwich)}) before adding them to the "
            "residual stream, so a residual rotation cannot be folded into its weights; quantize it without --rotate")
    for name in ("input_layernorm", "post_attention_layernorm"):
        norm = getattr(block, name, None)
        if norm is None or getattr(norm, "weight", None) is None:
            raise UnsupportedArchitectureError(
                f"{layout.model_type!r} blocks have no {name} with a weight to fold; quantize it without --rotate")
    if layout.final_norm is None or getattr(layout.final_norm, "weight", None) is None:
        raise UnsupportedArchitectureError(f"{layout.model_type!r} has no final norm with a weight to fold into the "
                                           "head; quantize it without --rotate")
    if layout.lm_head is None:
        raise UnsupportedArchitectureError(f"{layout.model_type!r} has no output head; quantize it without --rotate")


def _fold_norm(norm: nn.Module, readers: list[nn.Linear], offset: float) -> None:
    scale = norm.weight.detach().double() + offset
    for linear in readers:
        linear.weight.data = (linear.weight.detach().double() * scale).to(linear.weight.dtype)
    # unit scale: 1 for x·w norms, 0 for Gemma's x·(1 + w)
    norm.weight.data.fill_(1.0 - offset)


def _rotate_inputs(linear: nn.Module, q: torch.Tensor) -> None:
    linear.weight.data = (linear.weight.detach().double() @ q.to(linear.weight.device)).to(linear.weight.dtype)


def _rotate_outputs(linear: nn.Linear, q: torch.Tensor) -> None:
    q = q.to(linear.weight.device)
    linear.weight.data = (q.T @ linear.weight.detach().double()).to(linear.weight.dtype)
    if linear.bias is not None:
        linear.bias.data = (linear.bias.detach().double() @ q).to(linear.bias.dtype)


def _untie_head(model: nn.Module, head: nn.Module, embed: nn.Module) -> bool:
    if head.weight is not embed.weight and head.weight.data_ptr() != embed.weight.data_ptr():
        return False
    head.weight = nn.Parameter(embed.weight.detach().clone(), requires_grad=embed.weight.requires_grad)
    model.config.tie_word_embeddings = False
    text_config = getattr(model.config, "text_config", None)
    if text_config is not None and hasattr(text_config, "tie_word_embeddings"):
        text_config.tie_word_embeddings = False
    return True


def _head_dim(model: nn.Module, attn: nn.Module) -> int:
    config = model.config
    head_dim = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    return int(head_dim or config.hidden_size // config.num_attention_heads)


def _rotate_heads(attn: nn.Module, q2: torch.Tensor, head_dim: int) -> None:
    v, o = attn.v_proj, attn.o_proj
    q2 = q2.to(v.weight.device)
    w_v = v.weight.detach().double().reshape(-1, head_dim, v.in_features)
    v.weight.data = torch.einsum("dk,hdi->hki", q2, w_v).reshape(v.weight.shape).to(v.weight.dtype)
    if v.bias is not None:
        v.bias.data = (v.bias.detach().double().reshape(-1, head_dim) @ q2).reshape(-1).to(v.bias.dtype)
    w_o = o.weight.detach().double().reshape(o.out_features, -1, head_dim)
    o.weight.data = (w_o @ q2).reshape(o.weight.shape).to(o.weight.dtype)


@torch.no_grad()
def rotate_model_(model: nn.Module, settings: RotationSettings | None = None) -> RotationReport:
    """Fold the norms and apply R1 (and R2) in place; the model computes the same function."""
    settings = settings or RotationSettings()
    check_rotatable(model)
    layout = decoder_layout(model)
    offset = layout.norm_weight_offset
    hidden = layout.embed_tokens.weight.shape[1]
    notes: list[str] = []
    untied = _untie_head(model, layout.lm_head, layout.embed_tokens)
    if untied:
        notes.append("the tied head was untied: it absorbs the final norm's scale, which the embedding must not")

    for block in layout.blocks:
        attn, mlp = block.self_attn, block.mlp
        _fold_norm(block.input_layernorm, [attn.q_proj, attn.k_proj, attn.v_proj], offset)
        _fold_norm(block.post_attention_layernorm, [mlp.gate_proj, mlp.up_proj], offset)
    _fold_norm(layout.final_norm, [layout.lm_head], offset)

    q1, kind1 = orthogonal_matrix(hidden, settings.seed, settings.kind)
    if settings.kind == "hadamard" and kind1 != "hadamard":
        notes.append(f"no Hadamard matrix of order {hidden} is built here: the residual rotation is a seeded "
                     "random orthogonal matrix")
    embed = layout.embed_tokens
    embed.weight.data = (embed.weight.detach().double() @ q1.to(embed.weight.device)).to(embed.weight.dtype)
    _rotate_inputs(layout.lm_head, q1)
    for block in layout.blocks:
        attn, mlp = block.self_attn, block.mlp
        for reader in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _rotate_inputs(reader, q1)
        for writer in (attn.o_proj, mlp.down_proj):
            _rotate_outputs(writer, q1)

    head_dim, kind2 = None, None
    if settings.heads:
        head_dim = _head_dim(model, layout.blocks[0].self_attn)
        q2, kind2 = orthogonal_matrix(head_dim, settings.seed + 1, settings.kind)
        if settings.kind == "hadamard" and kind2 != "hadamard":
            notes.append(f"no Hadamard matrix of order {head_dim} is built here: the head rotation is a seeded "
                         "random orthogonal matrix")
        for block in layout.blocks:
            _rotate_heads(block.self_attn, q2, head_dim)
    # Saved with the config, so a run that starts from these weights (distillation) can rotate its own
    # float model the same way before copying them in.
    setattr(model.config, ROTATION_CONFIG_KEY, asdict(settings))
    return RotationReport(hidden, kind1, head_dim, kind2, untied, settings.seed, notes)
