"""Spectra's model family: one Llama-style definition with the linear layer as the only switch.

* FloatLM: float linears.
* TriLM: latent float weights, ternarized in every forward pass with one absmean scale per
  matrix (or per model-parallel shard), trained through a straight-through estimator.
  Embeddings, norms and the LM head stay float.
* BitNet b1.58: the same ternary weights, plus an RMSNorm before each linear and 8-bit
  absmax per-token activations, so the two ternary designs can be compared.

The backbone is transformers' ``LlamaForCausalLM`` (RMSNorm with a scale, SwiGLU, RoPE, no
biases, untied embeddings), so a trained TriLM unpacks to a plain Llama checkpoint whose
weights are exactly γ·T, the form Spectra releases its models in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.errors import TritiumError
from ..quant.grids import absmax_activation_ste, absmean_ternary, absmean_ternary_ste
from .adapters import decoder_layout

ARCHITECTURES = ("float", "trilm", "bitnet")
ARCH_ALIASES = {"floatlm": "float", "tri": "trilm", "bitnet158": "bitnet", "bitnet-b1.58": "bitnet"}
# Megatron's split: these linears shard their output rows, o_proj and down_proj their input columns.
COLUMN_PARALLEL = ("q_proj", "k_proj", "v_proj", "gate_proj", "up_proj")
CONFIG_KEY = "tritium_spectra"  # stored in config.json: which linear the checkpoint was trained with


class SpectraConfigError(TritiumError, ValueError):
    """An unknown size or architecture, or a setting the model cannot take."""


@dataclass(frozen=True)
class SizePreset:
    hidden: int
    glu: int  # SwiGLU's intermediate width
    heads: int
    layers: int


# Spectra's suite (hidden / GLU / heads / layers). Learning rates live in the YAML recipes
# (recipes/pretrain/spectra-*.yaml), one per size and family.
SPECTRA_SIZES: dict[str, SizePreset] = {
    "99m": SizePreset(512, 1280, 8, 16),
    "190m": SizePreset(768, 2048, 12, 16),
    "390m": SizePreset(1024, 2560, 16, 24),
    "560m": SizePreset(1280, 3072, 20, 24),
    "830m": SizePreset(1536, 4096, 24, 24),
    "1.1b": SizePreset(1792, 5120, 28, 24),
    "1.5b": SizePreset(2048, 6144, 32, 24),
    "2.4b": SizePreset(2304, 7680, 36, 30),
    "3.9b": SizePreset(3072, 9216, 24, 30),
}
# Miniatures that train on a 2-core CPU in minutes; head width 32, GLU ≈ 2.5 × hidden as above.
TINY_SIZES: dict[str, SizePreset] = {
    "tiny-xs": SizePreset(64, 160, 2, 2),
    "tiny-s": SizePreset(96, 256, 3, 3),
    "tiny-m": SizePreset(128, 320, 4, 4),
    "tiny-l": SizePreset(192, 512, 6, 6),
    "tiny-xl": SizePreset(256, 640, 8, 8),
    # Every width a multiple of 256, so llama.cpp's k-quant and TQ super-blocks fit every linear without a
    # fallback type (bench/bench_export.py); GLU 3 × hidden, as 2.5 × would not divide.
    "tiny-256": SizePreset(256, 768, 8, 4),
}
SIZES: dict[str, SizePreset] = {**TINY_SIZES, **SPECTRA_SIZES}


def canonical_arch(arch: str) -> str:
    name = ARCH_ALIASES.get(arch.lower(), arch.lower())
    if name not in ARCHITECTURES:
        raise SpectraConfigError(f"architecture {arch!r} is unknown: use one of {', '.join(ARCHITECTURES)}")
    return name


def size_preset(size: str) -> SizePreset:
    preset = SIZES.get(size.lower())
    if preset is None:
        raise SpectraConfigError(f"size {size!r} is unknown: use one of {', '.join(SIZES)}")
    return preset


# --------------------------------------------------------------------------- the linears


class TriLinear(nn.Linear):
    """TriLM's linear: ``F.linear(x, γ·T)`` with T = round(clip(W/γ, −1, 1)), γ = ε + mean|W|."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, shards: int = 1,
                 shard_dim: int = 0, device=None, dtype=None):
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.shards = shards
        self.shard_dim = shard_dim
        if (out_features, in_features)[shard_dim] % shards:
            raise SpectraConfigError(f"{shards} shards do not divide the {'output' if shard_dim == 0 else 'input'} "
                                     f"width of a {in_features}→{out_features} linear: choose a divisor")

    def quantized_weight(self) -> Tensor:
        return absmean_ternary_ste(self.weight, self.shards, self.shard_dim)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.quantized_weight(), self.bias)

    @torch.no_grad()
    def ternary(self) -> tuple[Tensor, Tensor]:
        """(codes in {−1, 0, 1}, γ per shard) of the current latent weight."""
        return absmean_ternary(self.weight, self.shards, self.shard_dim)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", shards={self.shards}"


class BitLinear(TriLinear):
    """BitNet b1.58's linear: RMSNorm, 8-bit absmax per-token activations, then TriLM's ternary weight."""

    def __init__(self, in_features: int, out_features: int, bias: bool = False, shards: int = 1,
                 shard_dim: int = 0, activation_bits: int = 8, norm_eps: float = 1e-5, device=None, dtype=None):
        super().__init__(in_features, out_features, bias, shards, shard_dim, device=device, dtype=dtype)
        self.activation_bits = activation_bits
        self.norm = nn.RMSNorm(in_features, eps=norm_eps, device=device, dtype=dtype)

    def forward(self, x: Tensor) -> Tensor:
        x = absmax_activation_ste(self.norm(x), self.activation_bits)
        return F.linear(x, self.quantized_weight(), self.bias)


# --------------------------------------------------------------------------- whole models


@dataclass
class SpectraSpec:
    """What a checkpoint needs to be rebuilt: stored in ``config.json`` under ``tritium_spectra``."""

    arch: str
    size: str
    shards: int = 1

    def __post_init__(self):
        self.arch = canonical_arch(self.arch)
        size_preset(self.size)


def spectra_config(size: str, vocab_size: int, context: int = 2048, **overrides):
    """The ``LlamaConfig`` of a size preset (untied embeddings, no biases, RMSNorm ε 1e-5, RoPE θ 10⁴)."""
    from transformers import LlamaConfig

    preset = size_preset(size)
    if vocab_size < 2:
        raise SpectraConfigError(f"vocab_size must be at least 2, got {vocab_size}")
    settings = dict(vocab_size=vocab_size, hidden_size=preset.hidden, intermediate_size=preset.glu,
                    num_attention_heads=preset.heads, num_key_value_heads=preset.heads,
                    num_hidden_layers=preset.layers, max_position_embeddings=context, rms_norm_eps=1e-5,
                    rope_theta=10000.0, tie_word_embeddings=False, attention_bias=False, mlp_bias=False,
                    hidden_act="silu", initializer_range=0.02)
    settings.update(overrides)
    return LlamaConfig(**settings)


def _swap_linears_(model: nn.Module, spec: SpectraSpec) -> None:
    if spec.arch == "float":
        return
    cls = BitLinear if spec.arch == "bitnet" else TriLinear
    for name, linear in decoder_layout(model).quantizable_linears().items():
        shard_dim = 0 if name.rsplit(".", 1)[-1] in COLUMN_PARALLEL else 1
        module = cls(linear.in_features, linear.out_features, linear.bias is not None, spec.shards, shard_dim,
                     device=linear.weight.device, dtype=linear.weight.dtype)
        with torch.no_grad():
            module.weight.copy_(linear.weight)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, module)


def build_model(arch: str, size: str, vocab_size: int, context: int = 2048, shards: int = 1, seed: int = 0,
                **config_overrides):
    """A freshly initialised FloatLM, TriLM or BitNet b1.58 of ``size`` (in train mode)."""
    from transformers import LlamaForCausalLM

    spec = SpectraSpec(arch, size, shards)
    config = spectra_config(size, vocab_size, context, **config_overrides)
    setattr(config, CONFIG_KEY, asdict(spec))
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    _swap_linears_(model, spec)
    return model.train()


def spectra_spec(model) -> SpectraSpec:
    values = getattr(model.config, CONFIG_KEY, None)
    if values is None:
        return SpectraSpec("float", _nearest_size(model.config), 1)
    return SpectraSpec(**values)


def _nearest_size(config) -> str:
    for name, p in SIZES.items():
        if (p.hidden, p.glu, p.layers) == (config.hidden_size, config.intermediate_size, config.num_hidden_layers):
            return name
    raise SpectraConfigError(f"the model (hidden {config.hidden_size}, {config.num_hidden_layers} layers) matches "
                             "no size preset")


@torch.no_grad()
def to_plain_llama(model):
    """A plain ``LlamaForCausalLM`` computing what ``model`` computes: each TriLM linear becomes an
    ``nn.Linear`` holding exactly γ·T. BitNet's quantized activations have no plain-Llama form."""
    import copy

    from transformers import LlamaForCausalLM

    if any(isinstance(m, BitLinear) for m in model.modules()):
        raise SpectraConfigError("a BitNet b1.58 model quantizes its activations, which a plain LlamaForCausalLM "
                                 "cannot do: save it with save_spectra_model and reload with load_spectra_model")
    config = copy.deepcopy(model.config)
    if hasattr(config, CONFIG_KEY):
        spec = dict(getattr(config, CONFIG_KEY))
        spec["unpacked"] = spec["arch"] == "trilm"  # the weights are already ternary × scale
        setattr(config, CONFIG_KEY, spec)
    plain = LlamaForCausalLM(config).to(model.dtype)
    state = {}
    for name, module in model.named_modules():
        if isinstance(module, TriLinear):
            state[name + ".weight"] = module.quantized_weight().detach()
    full = model.state_dict()
    full.update(state)
    plain.load_state_dict(full, strict=True)
    return plain.eval()


def count_parameters(model) -> dict[str, int]:
    """Total parameters, the decoder linears' (Spectra's "non-embedding" count), embeddings and head."""
    layout = decoder_layout(model)
    linear = sum(m.weight.numel() for m in layout.quantizable_linears().values())
    embedding = layout.embed_tokens.weight.numel()
    head = layout.lm_head.weight.numel() if layout.lm_head is not None else 0
    total = sum(p.numel() for p in model.parameters())
    return {"total": total, "linear": linear, "embedding": embedding, "lm_head": head}


def save_spectra_model(model, folder, tokenizer=None) -> None:
    """Save atomically as an HF folder: a TriLM unpacked to plain Llama (γ·T weights), a FloatLM
    as is, a BitNet with its latent weights and norms (reload with ``load_spectra_model``)."""
    from ..utils.integrity import write_manifest
    from ..utils.io import atomic_directory
    from .loader import save_tokenizer

    spec = spectra_spec(model)
    to_save = to_plain_llama(model) if spec.arch == "trilm" else model
    with atomic_directory(folder) as tmp:
        to_save.save_pretrained(tmp)
        if tokenizer is not None:
            save_tokenizer(tokenizer, tmp)
        write_manifest(tmp)  # last: it seals every file written above


def load_spectra_model(folder, dtype=torch.float32):
    """Load what ``save_spectra_model`` wrote: a plain Llama for FloatLM/TriLM, the BitNet modules otherwise."""
    from pathlib import Path

    from transformers import AutoConfig, LlamaForCausalLM

    from ..utils.integrity import verify_folder, warn_unsealed

    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} holds no config.json: pass the folder `tritium pretrain` wrote")
    if verify_folder(folder) is None:  # damaged files are refused before anything loads
        warn_unsealed(folder)
    config = AutoConfig.from_pretrained(folder)
    values = getattr(config, CONFIG_KEY, None) or {}
    if values.get("arch") != "bitnet":
        from .loader import _check_loading_info

        model, info = LlamaForCausalLM.from_pretrained(folder, dtype=dtype, output_loading_info=True)
        _check_loading_info(str(folder), info)  # a weight missing from the file must not load as random
        return model.eval()
    from safetensors.torch import load_file

    spec = SpectraSpec(values["arch"], values["size"], values.get("shards", 1))
    model = LlamaForCausalLM(config).to(dtype)
    _swap_linears_(model, spec)
    state = {}
    for path in sorted(folder.glob("*.safetensors")):
        state.update(load_file(path))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SpectraConfigError(f"{folder} does not match a BitNet {spec.size}: missing {missing[:3]}, unexpected "
                                 f"{unexpected[:3]}; pass the BitNet folder `tritium pretrain` saved, whole")
    return model.eval()
