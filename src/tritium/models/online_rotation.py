"""Online rotations (QuaRot's R3 and R4) and a fake-quantized 4/8-bit KV cache.

R1 and R2 (:mod:`tritium.models.rotation`) fold into the weights on both sides. Two more
rotations cannot, because something nonlinear sits on one side; QuaRot applies them at run
time with a fast Hadamard transform (:class:`~tritium.quant.hadamard.HadamardTransform`):

* **R4**, on down_proj's input act(gate)·up: its transpose folds into the weight (W → W·H) and
  H is applied to the input online, so y = (x·H)·(W·H)ᵀ = x·Wᵀ. Both down_proj's inputs and its
  weights lose their outlier channels, which matters once its inputs are quantized.
* **R3**, on queries and keys after RoPE, per head: the scores are unchanged, (q·H)(k·H)ᵀ = q·kᵀ,
  and the keys quantize better. It matters only with a quantized KV cache.

The KV cache is fake-quantized per head and per token (each head's key or value vector of
each token gets its own scale) with :mod:`tritium.quant.activations`'s grid. It is
asymmetric by default: keys after RoPE and values are not centred on zero (k/v biases, channel
offsets), and a [min, max] grid spends all 2^k levels on the range actually used, where a
symmetric one wastes up to half of them at 4 bits; QuaRot and KIVI quantize the cache this way.
Because the scale of a token depends on that token alone, quantizing the whole cache at each
step, as the attention function here does, gives what quantizing each token once on write would.

Attention goes through transformers' ``AttentionInterface``: the model's attention
implementation becomes ``tritium_online_sdpa`` (or ``_eager``), which applies R3 and the KV
quantizer and calls the inner one; R4 is a forward pre-hook on each down_proj, kept on whatever
module sits there (a packed linear swapped in later) by a pre-hook on its MLP.

A saved model records the settings in its config (``tritium_online_rotation``) and its attention
implementation in ``config.json`` (``attn_implementation``). :func:`tritium.models.load_model`
re-installs them. Plain transformers refuses the folder (the attention implementation is not
registered); with tritium imported but the rotations not installed, the first forward raises
rather than compute wrong logits.
"""

from __future__ import annotations

import sys
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

from ..quant.activations import ActivationGrid, fake_quantize_activations
from ..quant.hadamard import HadamardTransform
from ..utils.errors import TritiumError
from .adapters import ONLINE_INPUT_ROTATION_ATTRIBUTE, decoder_layout

ONLINE_ROTATIONS = ("down_proj", "qk", "all")
KV_CACHE_BITS = (4, 8)
ONLINE_ROTATION_CONFIG_KEY = "tritium_online_rotation"
INNER_ATTENTIONS = ("sdpa", "eager")
ATTENTION_PREFIX = "tritium_online_"
_ATTENTION_STATE = "tritium_online_attention"


class OnlineRotationError(TritiumError, ValueError):
    """An online-rotation or KV-cache setting the model cannot take."""


@dataclass(frozen=True)
class OnlineRotationSettings:
    """``online_rotation``: ``"down_proj"`` (R4), ``"qk"`` (R3), ``"all"`` (both) or None;
    ``kv_bits``: 4, 8 or None (a float cache)."""

    online_rotation: str | None = None
    kv_bits: int | None = None
    kv_symmetric: bool = False
    kv_clip_ratio: float = 1.0

    def __post_init__(self):
        if self.online_rotation not in (None, *ONLINE_ROTATIONS):
            raise OnlineRotationError(f"online_rotation={self.online_rotation!r} is unknown: use one of "
                                      f"{', '.join(ONLINE_ROTATIONS)} (or leave it off)")
        if self.kv_bits is not None and (isinstance(self.kv_bits, bool) or not isinstance(self.kv_bits, int)
                                         or self.kv_bits not in KV_CACHE_BITS):
            raise OnlineRotationError(f"kv_bits={self.kv_bits!r} is not supported: use one of "
                                      f"{', '.join(map(str, KV_CACHE_BITS))}, or leave it off for a float KV cache")
        if not isinstance(self.kv_symmetric, bool):
            raise OnlineRotationError(f"kv_symmetric must be true or false, not {self.kv_symmetric!r}")
        if isinstance(self.kv_clip_ratio, bool) or not isinstance(self.kv_clip_ratio, (int, float)) \
                or not 0.0 < float(self.kv_clip_ratio) <= 1.0:
            raise OnlineRotationError(f"kv_clip_ratio={self.kv_clip_ratio!r} must be in (0, 1]")

    @property
    def rotates_down_proj(self) -> bool:
        return self.online_rotation in ("down_proj", "all")

    @property
    def rotates_qk(self) -> bool:
        return self.online_rotation in ("qk", "all")

    @property
    def kv_grid(self) -> ActivationGrid | None:
        if self.kv_bits is None:
            return None
        return ActivationGrid(bits=self.kv_bits, symmetric=self.kv_symmetric, group="token",
                              clip_ratio=float(self.kv_clip_ratio))

    @property
    def active(self) -> bool:
        return self.online_rotation is not None or self.kv_bits is not None

    def describe(self) -> str:
        parts = [{"down_proj": "R4", "qk": "R3", "all": "R3+R4"}[self.online_rotation]] if self.online_rotation else []
        if self.kv_bits is not None:
            parts.append(f"KV{self.kv_bits}{'' if self.kv_symmetric else '-asym'}")
        return "+".join(parts) or "none"


def online_rotation_settings(online_rotation=None, kv_bits=None, **options) -> OnlineRotationSettings | None:
    """Read a recipe's ``online_rotation`` and ``kv_bits`` (and optional ``kv_symmetric``,
    ``kv_clip_ratio``); None when both are off. ``online_rotation`` may be false for off."""
    unknown = set(options) - {"kv_symmetric", "kv_clip_ratio"}
    if unknown:
        raise OnlineRotationError(f"unknown online-rotation option(s) {sorted(unknown)}; allowed: online_rotation, "
                                  "kv_bits, kv_symmetric, kv_clip_ratio")
    if online_rotation is False:
        online_rotation = None
    if not isinstance(online_rotation, (str, type(None))):
        raise OnlineRotationError(f"online_rotation must be one of {', '.join(ONLINE_ROTATIONS)} or off, "
                                  f"not {online_rotation!r}")
    settings = OnlineRotationSettings(online_rotation=online_rotation, kv_bits=kv_bits, **options)
    return settings if settings.active else None


@dataclass
class OnlineRotationReport:
    settings: dict
    attention: str  # the registered attention implementation now in use
    down_proj_width: int | None = None
    down_proj_factors: tuple[int, ...] | None = None
    head_dim: int | None = None
    head_factors: tuple[int, ...] | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def saved_online_rotation(config) -> OnlineRotationSettings | None:
    """The online rotations a model's config records, or None."""
    value = config.get(ONLINE_ROTATION_CONFIG_KEY) if isinstance(config, dict) else \
        getattr(config, ONLINE_ROTATION_CONFIG_KEY, None)
    if not value:
        return None
    if not isinstance(value, dict):
        raise OnlineRotationError(f"the model config's {ONLINE_ROTATION_CONFIG_KEY} is {value!r}, not a mapping: "
                                  "the config.json is damaged; re-export the model with tritium")
    fields = {k: value[k] for k in OnlineRotationSettings.__dataclass_fields__ if k in value}
    return OnlineRotationSettings(**fields)


def _saved_inner_attention(config) -> str:
    record = getattr(config, ONLINE_ROTATION_CONFIG_KEY, None) or {}
    inner = record.get("attention", "sdpa")
    if inner not in INNER_ATTENTIONS:
        raise OnlineRotationError(f"the model config's {ONLINE_ROTATION_CONFIG_KEY} names attention {inner!r}, not "
                                  f"one of {', '.join(INNER_ATTENTIONS)}: the config.json is damaged")
    return inner


def attention_name(inner: str) -> str:
    return ATTENTION_PREFIX + inner


def _inner_attention(module: nn.Module, inner: str):
    if inner == "sdpa":
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward
    # each family's own eager attention (Gemma 2's soft-capping, ...), from the attention module's file
    own = getattr(sys.modules.get(type(module).__module__), "eager_attention_forward", None)
    if own is None:
        from transformers.models.llama.modeling_llama import eager_attention_forward as own
    return own


@dataclass
class _AttentionState:
    head_transform: HadamardTransform | None
    kv_grid: ActivationGrid | None


def _online_attention(inner: str):
    def attention(module, query, key, value, attention_mask, **kwargs):
        state = getattr(module, _ATTENTION_STATE, None)
        if state is None:
            raise OnlineRotationError(
                f"this model's attention implementation is {attention_name(inner)!r} (tritium's online rotations) but "
                "they are not installed on it, so its logits would be wrong: load it with tritium.models.load_model, "
                "or call tritium.models.online_rotation.install_online_rotations(model) after from_pretrained")
        if state.head_transform is not None:
            # keys arrive with the whole cache: rotating them all each step equals rotating each once on write
            query, key = state.head_transform(query), state.head_transform(key)
        if state.kv_grid is not None:
            key = fake_quantize_activations(key, state.kv_grid)
            value = fake_quantize_activations(value, state.kv_grid)
        return _inner_attention(module, inner)(module, query, key, value, attention_mask, **kwargs)

    attention.__name__ = attention.__qualname__ = f"{ATTENTION_PREFIX}{inner}_attention"
    return attention


def register_online_attention() -> None:
    """Register ``tritium_online_sdpa`` / ``tritium_online_eager`` with transformers (idempotent), with
    the masks of their inner implementations (an unregistered mask would silently drop the mask)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface

    for inner in INNER_ATTENTIONS:
        name = attention_name(inner)
        if name not in AttentionInterface._global_mapping:
            AttentionInterface.register(name, _online_attention(inner))
        if name not in AttentionMaskInterface._global_mapping:
            AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[inner])


class _HadamardOnInput:
    """Forward pre-hook: the module's input x becomes x·H/√n."""

    def __init__(self, transform: HadamardTransform):
        self.transform = transform

    def __call__(self, module, args):
        return (self.transform(args[0]), *args[1:])


def _hook_down_proj(down_proj: nn.Module, transform: HadamardTransform) -> None:
    if not any(isinstance(h, _HadamardOnInput) for h in down_proj._forward_pre_hooks.values()):
        # first of the pre-hooks, so an input quantizer hooked on the same linear sees x·H, as the weights W·H need
        down_proj.register_forward_pre_hook(_HadamardOnInput(transform), prepend=True)


class _KeepDownProjRotated:
    """Forward pre-hook on an MLP: a down_proj swapped in since (packed, say) gets the Hadamard hook too;
    its weights came from the folded W·H, so it needs the online H as much as the linear it replaced."""

    def __call__(self, mlp, args):
        _hook_down_proj(mlp.down_proj, getattr(mlp, ONLINE_INPUT_ROTATION_ATTRIBUTE))


def _head_dim(model: nn.Module, attn: nn.Module) -> int:
    config = model.config
    head_dim = getattr(attn, "head_dim", None) or getattr(config, "head_dim", None)
    return int(head_dim or config.hidden_size // config.num_attention_heads)


def _current_attention(model: nn.Module) -> str | None:
    return getattr(model.config, "_attn_implementation", None)


def check_online_widths(settings: OnlineRotationSettings, intermediate_size: int | None, head_dim: int | None) -> None:
    """The width checks alone, from a config before any weights load: each rotated width needs a Hadamard
    construction (:class:`~tritium.quant.hadamard.HadamardOrderError` names the nearest that have one)."""
    if settings.rotates_down_proj and intermediate_size is not None:
        HadamardTransform(intermediate_size, "down_proj's input width (intermediate_size)")
    if settings.rotates_qk and head_dim is not None:
        HadamardTransform(head_dim, "the attention head size")


def check_online_rotatable(model: nn.Module, settings: OnlineRotationSettings) -> None:
    """Raise before any work when ``model`` cannot take ``settings``."""
    if not isinstance(settings, OnlineRotationSettings):
        raise OnlineRotationError(f"expected OnlineRotationSettings, got {type(settings).__name__}")
    if not settings.active:
        raise OnlineRotationError("no online rotation and no KV-cache bits are set: nothing to add")
    if saved_online_rotation(model.config) is not None:
        raise OnlineRotationError(f"the model already has online rotations ({saved_online_rotation(model.config)}): "
                                  "start from the model without them")
    layout = decoder_layout(model)
    current = _current_attention(model)
    if current not in INNER_ATTENTIONS:
        raise OnlineRotationError(f"the model's attention implementation is {current!r}; online rotations and the KV "
                                  f"quantizer wrap {' or '.join(INNER_ATTENTIONS)} only: load the model with "
                                  "attn_implementation='sdpa' (or call model.set_attn_implementation('sdpa'))")
    if settings.rotates_down_proj:
        for i, block in enumerate(layout.blocks):
            down = block.get_submodule("mlp.down_proj")
            if not isinstance(down, nn.Linear):
                raise OnlineRotationError(f"block {i}'s mlp.down_proj is a {type(down).__name__}, not a float "
                                          "nn.Linear: add online rotations before quantizing the model")
    check_online_widths(settings, layout.blocks[0].mlp.down_proj.in_features,
                        _head_dim(model, layout.blocks[0].self_attn))


def _install(model: nn.Module, settings: OnlineRotationSettings, inner: str) -> tuple[HadamardTransform | None,
                                                                                      HadamardTransform | None]:
    register_online_attention()
    layout = decoder_layout(model)
    down_transform = head_transform = None
    if settings.rotates_down_proj:
        down_transform = HadamardTransform(layout.blocks[0].mlp.down_proj.in_features,
                                           "down_proj's input width (intermediate_size)")
    if settings.rotates_qk:
        head_transform = HadamardTransform(_head_dim(model, layout.blocks[0].self_attn), "the attention head size")
    for block in layout.blocks:
        if down_transform is not None:
            mlp = block.mlp
            if getattr(mlp, ONLINE_INPUT_ROTATION_ATTRIBUTE, None) is None:
                setattr(mlp, ONLINE_INPUT_ROTATION_ATTRIBUTE, down_transform)
                mlp.register_forward_pre_hook(_KeepDownProjRotated())
            _hook_down_proj(mlp.down_proj, getattr(mlp, ONLINE_INPUT_ROTATION_ATTRIBUTE))
        setattr(block.self_attn, _ATTENTION_STATE, _AttentionState(head_transform, settings.kv_grid))
    name = attention_name(inner)
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(name)
    else:
        model.config._attn_implementation = name
    # config.json keeps it, so that transformers without tritium refuses the folder instead of loading
    # weights that need the online rotations into a model without them
    model.config.attn_implementation = name
    return down_transform, head_transform


def install_online_rotations(model: nn.Module) -> OnlineRotationSettings | None:
    """Install the online rotations ``model``'s config records (after loading a saved model); idempotent.

    Returns the settings installed, or None when the config records none."""
    settings = saved_online_rotation(model.config)
    if settings is None:
        return None
    _install(model, settings, _saved_inner_attention(model.config))
    return settings


@torch.no_grad()
def add_online_rotations_(model: nn.Module, settings: OnlineRotationSettings) -> OnlineRotationReport:
    """Fold R4's Hᵀ into every down_proj, install the online Hadamards and the KV quantizer, and record
    them in the config. The model computes the same function (up to the KV cache's quantization).

    Run it after :func:`~tritium.models.rotation.rotate_model_` (R1/R2) and before any weight
    quantization, which then quantizes down_proj's rotated weights W·H.
    """
    check_online_rotatable(model, settings)
    inner = _current_attention(model)
    layout = decoder_layout(model)
    notes: list[str] = []
    if settings.rotates_down_proj:
        transform = HadamardTransform(layout.blocks[0].mlp.down_proj.in_features)
        for block in layout.blocks:
            down = block.mlp.down_proj
            # W·H: each row of W is a vector over down_proj's inputs, rotated like an input
            down.weight.data = transform(down.weight.detach().double()).to(down.weight.dtype)
    if settings.rotates_qk and settings.kv_bits is None:
        notes.append("R3 (online_rotation qk) leaves the attention scores unchanged and helps only a quantized KV "
                     "cache: without kv_bits it costs time and changes nothing")
    setattr(model.config, ONLINE_ROTATION_CONFIG_KEY, {**asdict(settings), "attention": inner})
    down_transform, head_transform = _install(model, settings, inner)
    return OnlineRotationReport(
        settings=asdict(settings), attention=attention_name(inner),
        down_proj_width=down_transform.n if down_transform else None,
        down_proj_factors=down_transform.factors if down_transform else None,
        head_dim=head_transform.n if head_transform else None,
        head_factors=head_transform.factors if head_transform else None, notes=notes)
