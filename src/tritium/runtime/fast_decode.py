"""Greedy decoding with a lean forward pass for Llama-family models (Llama, Mistral, Qwen2).

At batch 1 on a CPU, a decode step of a small model is dominated by framework overhead
once the linears are packed: the Hugging Face forward runs ~40 small torch calls and
several Python layers per block. This loop runs the *same weights* (packed
or float linears alike) with about 20 torch calls per block: fused RMSNorm, q/k/v and
gate/up each as one matmul, one rotary pass for queries and keys together, a
preallocated KV cache written in place, and SDPA with grouped KV heads. Float and packed
models both run through it, so comparisons stay fair. Its tokens equal
``model.generate(do_sample=False)``'s (tested); models it does not cover go through
``generate``.

Quantized activations (an A8 or A4 folder's input quantizers) are kept: where the projections
that share an input all run ``tritium::packed_linear_a8`` (8-bit per-token codes the kernel
computes itself) they are fused into one such call; any other quantized input goes through its
module, so the quantizer's hook runs as it does in the model's own forward. Whatever else the
loop would skip (online rotations, a quantized KV cache, any other hook or attention
implementation) makes it refuse the model.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.errors import TritiumError
from ..kernels.head_ops import linear_16bit

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class UnsupportedForFastDecode(TritiumError, ValueError):
    """The model needs the generic Hugging Face ``generate`` path."""


class ContextLimitError(TritiumError, ValueError):
    """The prompt leaves no room in the model's context for a new token."""


def context_limit(model: nn.Module) -> int | None:
    """The longest sequence the model was made for (max_position_embeddings), None where it has none."""
    limit = getattr(model.config, "max_position_embeddings", None)
    return int(limit) if limit else None


def fit_to_limit(prompt_tokens: int, max_new_tokens: int, limit: int | None, what: str,
                 flag: str = "max_new_tokens") -> tuple[int, str | None]:
    """How many of ``max_new_tokens`` fit after a prompt of ``prompt_tokens`` within ``limit`` tokens
    (``what`` names the limit), and a warning when fewer than asked; generation stops at the limit rather
    than run on positions the model never saw. A prompt that fills the limit already is refused."""
    if limit is None or prompt_tokens + max_new_tokens <= limit:
        return max_new_tokens, None
    room = limit - prompt_tokens
    if room < 1:
        raise ContextLimitError(f"the prompt is {prompt_tokens} tokens and {what} is {limit}: no room is left for "
                                "a new token; shorten the prompt")
    return room, (f"the prompt ({prompt_tokens} tokens) plus {flag} {max_new_tokens} exceeds {what} of {limit} "
                  f"tokens: generation stops at the limit, after at most {room} new tokens")


def new_tokens_within_context(model: nn.Module, prompt_tokens: int, max_new_tokens: int,
                              flag: str = "max_new_tokens") -> tuple[int, str | None]:
    """:func:`fit_to_limit` against the model's context (max_position_embeddings)."""
    return fit_to_limit(prompt_tokens, max_new_tokens, context_limit(model),
                        "the model's context (max_position_embeddings)", flag)


def fast_decode_unsupported_reason(model: nn.Module) -> str | None:
    """Why the lean loop cannot run ``model`` (None when it can)."""
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {config.model_type!r} (the fast loop covers {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (the fast loop implements SiLU-gated MLPs)"
    if not hasattr(getattr(model, "model", None), "rotary_emb"):
        return "no rotary embedding module at model.model.rotary_emb"
    attention = getattr(config, "_attn_implementation", None)
    if attention not in PLAIN_ATTENTIONS:
        # tritium's online rotations (R3, a quantized KV cache) and any other registered attention change what
        # attention computes; the loop runs plain SDPA
        return (f"attention implementation {attention!r} (the fast loop computes plain attention; online rotations "
                "and a quantized KV cache need the model's own forward)")
    skipped = _hooks_the_loop_would_skip(model)
    if skipped:
        return skipped
    return None


# Attention implementations that compute softmax(q·kᵀ/√d)·v as the loop's SDPA does.
PLAIN_ATTENTIONS = (None, "eager", "sdpa", "flash_attention_2", "flash_attention_3")


def _hooks_the_loop_would_skip(model: nn.Module) -> str | None:
    """The first hook the loop would bypass: it reads the blocks' norms, attention and MLP modules' weights
    directly, and calls a linear's module only for a quantized input (so only activation quantizers are kept)."""
    from ..nn.activation_quant import ActivationQuantizer

    for where, module in (("the model", model), ("model.model", model.model)):  # forwards the loop never calls
        if module._forward_pre_hooks or module._forward_hooks:
            return f"hooks on {where}'s own forward (the fast loop would skip them)"
    roots = {"model.layers": model.model.layers, "model.norm": model.model.norm}
    for root, container in roots.items():
        for name, module in container.named_modules():
            hooks = [h for h in module._forward_pre_hooks.values() if not isinstance(h, ActivationQuantizer)]
            hooks += list(module._forward_hooks.values())
            if hooks:
                where = f"{root}.{name}" if name else root
                return (f"a {type(hooks[0]).__name__} hook on {where} (the fast loop would skip it; an online "
                        "rotation, say, needs the model's own forward)")
    return None


@dataclass
class DecodeResult:
    tokens: Tensor  # [1, prompt + new]
    prefill_seconds: float
    decode_seconds: float  # for the new tokens after the first
    new_tokens: int
    step_seconds: list[float] = field(default_factory=list)

    @property
    def decode_tokens_per_second(self) -> float:
        return (self.new_tokens - 1) / self.decode_seconds if self.new_tokens > 1 and self.decode_seconds > 0 else 0.0


def _packed_fusable(modules) -> bool:
    from ..nn.packed_linear import PackedLinear

    first = modules[0]
    return all(isinstance(m, PackedLinear) and type(m) is type(first) and m.in_features == first.in_features
               and m.radix == first.radix and m.group_size == first.group_size
               and m.implicit_zero == first.implicit_zero and m.scale.dtype == first.scale.dtype
               and (m.zero is None) == (first.zero is None) and (m.shift is None) == (first.shift is None)
               and (m.bias is None) == (first.bias is None) for m in modules)


def _cat(tensors):
    return None if tensors[0] is None else torch.cat(tensors)


def _fused_packed_weight(modules):
    """The rows of fusable packed linears as one packed weight, and their biases as one (or None)."""
    from ..pack.packed import PackedWeight

    first = modules[0]
    weight = PackedWeight(_cat([m.packed for m in modules]), _cat([m.scale for m in modules]), first.radix,
                          first.in_features, first.group_size, zero=_cat([m.zero for m in modules]),
                          shift=_cat([m.shift for m in modules]), implicit_zero=first.implicit_zero)
    return weight, _cat([m.bias for m in modules])


def _with_bias(call, bias):
    if bias is None:
        return call
    return lambda x: call(x) + bias.to(x.dtype)


def _integer_activation_linear(modules):
    """For packed linears whose inputs all run ``tritium::packed_linear_a8`` on one grid, one such call on their
    fused rows (the per-token int8 codes of the shared input are the same for every row); else None."""
    from ..kernels import a8_layout, load_cpu_kernel, packed_linear_a8

    if not _packed_fusable(modules):
        return None
    first = modules[0]
    probe = torch.empty(0, first.in_features, device=first.packed.device)  # the layers' own check, on their device
    grids = [m.integer_activation_grid(probe) for m in modules]
    if grids[0] is None or any(g != grids[0] for g in grids):
        return None
    weight, bias = _fused_packed_weight(modules)
    layout = a8_layout(weight.packed, weight.radix, weight.in_features, weight.group_size) if load_cpu_kernel() \
        else None
    args = (weight.packed, weight.scale, weight.zero, weight.shift, weight.radix, weight.in_features,
            weight.group_size, float(weight.implicit_zero), grids[0].clip_ratio, layout)
    return _with_bias(lambda x: packed_linear_a8(x, *args), bias)


def fused_linear(modules: list[nn.Module]):
    """One callable computing ``cat([m(x) for m in modules], -1)`` with a single matmul where it can.

    Projections that read the same input (q/k/v, gate/up) are fused row-wise: one packed-linear call
    (codes and group parameters concatenated) or one float matmul (the modules' weights become views
    of the fused matrix, so no memory is added). Packed calls go straight to the op with their CPU
    layout prepared once, skipping the module's per-call checks. Linears with an activation quantizer
    fuse only into one int8-activation call; otherwise each runs through its module, hook included.
    """
    from ..kernels import bit_planes, planes_available
    from ..kernels.ops import op
    from ..nn.activation_quant import activation_quantizer_of

    if any(activation_quantizer_of(m) is not None for m in modules):
        integer = _integer_activation_linear(modules)
        if integer is not None:
            return integer
        if len(modules) == 1:
            return modules[0]
        return lambda x: torch.cat([m(x) for m in modules], dim=-1)
    if _packed_fusable(modules):
        weight, bias = _fused_packed_weight(modules)
        layout = None
        if weight.packed.device.type == "cpu" and weight.radix <= 16 and planes_available():
            layout = bit_planes(weight.packed, weight.radix, weight.in_features, weight.group_size)
        args = (weight.packed, weight.scale, weight.zero, weight.shift, weight.radix, weight.in_features,
                weight.group_size, float(weight.implicit_zero), layout)
        packed_op = op()
        return _with_bias(lambda x: packed_op(x, *args), bias)
    if all(type(m) is nn.Linear for m in modules) and len({m.weight.dtype for m in modules}) == 1 and \
            len({m.bias is None for m in modules}) == 1:
        if len(modules) == 1:
            return modules[0]
        with torch.no_grad():
            weight = torch.cat([m.weight for m in modules])
            bias = _cat([m.bias for m in modules])
            start = 0
            for m in modules:  # the modules now read their rows of the fused matrix: no second copy
                rows = m.weight.shape[0]
                m.weight.data = weight[start:start + rows]
                if bias is not None:
                    m.bias.data = bias[start:start + rows]
                start += rows
        return lambda x: F.linear(x, weight, bias)
    if len(modules) == 1:
        return modules[0]
    return lambda x: torch.cat([m(x) for m in modules], dim=-1)


class FastDecoder:
    """Holds the KV cache and rotary tables for one model; ``generate`` runs greedy decoding."""

    def __init__(self, model: nn.Module, max_length: int | None = None, head_dtype: torch.dtype | str | None = None):
        reason = fast_decode_unsupported_reason(model)
        if reason:
            raise UnsupportedForFastDecode(f"the fast decode loop does not support {reason}; use model.generate")
        self.model = model
        config = model.config
        self.blocks = list(model.model.layers)
        self.n_heads = config.num_attention_heads
        self.n_kv_heads = getattr(config, "num_key_value_heads", None) or self.n_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.n_heads
        self.hidden = config.hidden_size
        # Generation stops at the model's context (and at a sliding window: past it the attention pattern
        # changes), whatever max_length asks: positions past it were never trained.
        self.limit, self.limit_name = context_limit(model), "the model's context (max_position_embeddings)"
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if window is not None and (self.limit is None or window < self.limit):
            self.limit, self.limit_name = int(window), "the model's sliding window"
        self.max_length = min(max_length or self.limit, self.limit) if self.limit else max_length
        if not self.max_length:
            raise UnsupportedForFastDecode("the model's config gives no max_position_embeddings: pass max_length")
        self.eps = [(b.input_layernorm.variance_epsilon, b.post_attention_layernorm.variance_epsilon)
                    for b in self.blocks]
        self.final_eps = model.model.norm.variance_epsilon
        # The LM head reads the whole vocabulary matrix every token, so its storage sets the step's memory traffic.
        # * A block head (q8_0 / q4_0, tritium.nn.block_head) multiplies its blocks directly (its own forward).
        # * A 16-bit matrix runs through tritium::linear_16bit: fp16/bf16 weights read as they are, products and
        #   sums in fp32 (torch has no fast fp16 matvec on AVX2-only CPUs). head_dtype=float16 keeps an fp16 copy
        #   of an fp32 head: half the traffic, and exact when the weights are fp16 values already, as in a packed
        #   folder (which stores them in fp16). "auto": on the CPU, a 16-bit head as it is, and the fp16 copy only
        #   where that changes nothing (fp32 weights that are fp16 values); elsewhere the module (cuBLAS).
        head = model.lm_head
        self.head_weight = None
        if getattr(head, "is_block_head", False):
            if head_dtype not in (None, "auto"):
                raise UnsupportedForFastDecode(f"head_dtype {head_dtype} applies to a float LM head; this one is "
                                               f"stored in {head.kind} blocks")
        else:
            weight = head.weight.detach()
            has_bias = getattr(head, "bias", None) is not None
            # a hooked head (an input quantizer, say) runs as its module: a copy of its weight would skip the hook
            hooked = bool(head._forward_pre_hooks or head._forward_hooks)
            if hooked and head_dtype not in (None, "auto"):
                raise UnsupportedForFastDecode(f"head_dtype {head_dtype}: the LM head has hooks (an input quantizer?) "
                                               "that a copy of its weight would skip; leave head_dtype unset")
            if head_dtype == "auto":
                head_dtype = None
                if weight.device.type == "cpu" and not has_bias and not hooked:
                    if weight.dtype in (torch.float16, torch.bfloat16):
                        head_dtype = weight.dtype
                    elif weight.dtype == torch.float32 and bool(torch.equal(weight, weight.half().float())):
                        head_dtype = torch.float16
            if head_dtype is not None:
                if head_dtype != weight.dtype and head_dtype != torch.float16:
                    raise UnsupportedForFastDecode(f"head_dtype must be torch.float16, \"auto\" or None, not "
                                                   f"{head_dtype}")
                if has_bias:
                    raise UnsupportedForFastDecode("a 16-bit LM head copy is not supported for heads with a bias")
                self.head_weight = weight if weight.dtype == head_dtype else weight.to(torch.float16)
        self._cache: tuple[Tensor, Tensor] | None = None
        self._rotary: tuple[Tensor, Tensor] | None = None
        # Per block: q/k/v in one call, gate/up in one call, then o and down.
        self.plans = [(fused_linear([b.self_attn.q_proj, b.self_attn.k_proj, b.self_attn.v_proj]),
                       fused_linear([b.self_attn.o_proj]), fused_linear([b.mlp.gate_proj, b.mlp.up_proj]),
                       fused_linear([b.mlp.down_proj]), b.mlp.gate_proj.out_features) for b in self.blocks]

    # ------------------------------------------------------------------ state

    def _allocate(self, device: torch.device, dtype: torch.dtype) -> None:
        shape = (len(self.blocks), 1, self.n_kv_heads, self.max_length, self.head_dim)
        if self._cache is None or self._cache[0].shape != shape or self._cache[0].dtype != dtype:
            self._cache = (torch.zeros(shape, device=device, dtype=dtype), torch.zeros(shape, device=device, dtype=dtype))
        if self._rotary is None or self._rotary[0].dtype != dtype:
            positions = torch.arange(self.max_length, device=device)[None]
            probe = torch.empty(1, device=device, dtype=dtype)
            cos, sin = self.model.model.rotary_emb(probe, positions)  # the model's own rotary (scaling included)
            self._rotary = (cos[0], sin[0])  # [max_length, head_dim]

    # ------------------------------------------------------------------ the forward

    def _rms_norm(self, x: Tensor, norm: nn.Module, eps: float) -> Tensor:
        return F.rms_norm(x, (x.shape[-1],), norm.weight, eps)

    def forward(self, ids: Tensor, position: int) -> Tensor:
        """Logits of the last position for ``ids`` [1, T] placed at ``position`` in the sequence."""
        model = self.model
        length = ids.shape[1]
        end = position + length
        if end > self.max_length:
            raise ValueError(f"the sequence would reach {end} tokens; this decoder holds {self.max_length}")
        x = model.model.embed_tokens(ids)
        cos = self._rotary[0][position:end]
        sin = self._rotary[1][position:end]
        half = self.head_dim // 2
        keys, values = self._cache
        n_heads, n_kv, head_dim = self.n_heads, self.n_kv_heads, self.head_dim
        for index, block in enumerate(self.blocks):
            eps_in, eps_post = self.eps[index]
            qkv_proj, o_proj, gate_up_proj, down_proj, intermediate = self.plans[index]
            h = self._rms_norm(x, block.input_layernorm, eps_in)
            qkv = qkv_proj(h).reshape(length, n_heads + 2 * n_kv, head_dim)
            qk = qkv[:, : n_heads + n_kv]  # queries and keys side by side: one rotary pass for both
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos[:, None] + rotated * sin[:, None]
            q = qk[:, :n_heads].transpose(0, 1)[None]
            keys[index, 0, :, position:end] = qk[:, n_heads:].transpose(0, 1)
            values[index, 0, :, position:end] = qkv[:, n_heads + n_kv:].transpose(0, 1)
            out = F.scaled_dot_product_attention(q, keys[index, :, :, :end], values[index, :, :, :end],
                                                 is_causal=length > 1 and position == 0,
                                                 scale=getattr(block.self_attn, "scaling", None),
                                                 enable_gqa=n_kv != n_heads)
            x = x + o_proj(out[0].transpose(0, 1).reshape(1, length, n_heads * head_dim))
            h = self._rms_norm(x, block.post_attention_layernorm, eps_post)
            gate_up = gate_up_proj(h)
            x = x + down_proj(F.silu(gate_up[..., :intermediate]) * gate_up[..., intermediate:])
        x = self._rms_norm(x[:, -1:], model.model.norm, self.final_eps)
        if self.head_weight is not None:
            return linear_16bit(x, self.head_weight)[:, -1]
        return model.lm_head(x)[:, -1]

    @torch.no_grad()
    def generate(self, ids: Tensor, max_new_tokens: int, eos_token_id: int | list[int] | None = None,
                 time_steps: bool = False) -> DecodeResult:
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"the fast decode loop takes one prompt [1, T]; got shape {tuple(ids.shape)}")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.max_length == self.limit:  # the model's own limit: stop there (a smaller max_length is the caller's)
            max_new_tokens, warning = fit_to_limit(ids.shape[1], max_new_tokens, self.limit, self.limit_name)
            if warning:
                warnings.warn(warning, RuntimeWarning, stacklevel=2)
        stop = set() if eos_token_id is None else {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
        embed = self.model.model.embed_tokens
        if hasattr(embed, "weight"):
            device, dtype = embed.weight.device, embed.weight.dtype
        else:  # a block table (tritium.nn.BlockEmbedding): integer codes, output in its compute dtype
            device, dtype = embed.codes.device, embed.compute_dtype
        self._allocate(device, dtype)
        ids = ids.to(device)
        start = time.perf_counter()
        logits = self.forward(ids, 0)
        token = logits.argmax(-1, keepdim=True)
        prefill = time.perf_counter() - start
        produced = [token]
        steps: list[float] = []
        position = ids.shape[1]
        decode_start = time.perf_counter()
        for _ in range(max_new_tokens - 1):
            if int(token) in stop:
                break
            step_start = time.perf_counter() if time_steps else 0.0
            token = self.forward(token, position).argmax(-1, keepdim=True)
            position += 1
            produced.append(token)
            if time_steps:
                steps.append(time.perf_counter() - step_start)
        decode = time.perf_counter() - decode_start
        tokens = torch.cat([ids, *produced], dim=1)
        return DecodeResult(tokens, prefill, decode, len(produced), steps)
