"""Greedy decoding with a lean forward pass for Llama-family models (Llama, Mistral, Qwen2).

At batch 1 on a CPU, a decode step of a small model is dominated by framework overhead
once the linears are packed: the Hugging Face forward runs ~40 small torch calls and
several Python layers per block. This loop runs the *same modules and weights* (packed
or float linears alike) with about 15 torch calls per block: fused RMSNorm, one rotary
pass for queries and keys together, a preallocated KV cache written in place, and SDPA
with grouped KV heads. Float and packed models both run through it, so comparisons stay
fair. Its tokens equal ``model.generate(do_sample=False)``'s (tested); models it does
not cover go through ``generate``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..kernels import linear_half_weight

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


class UnsupportedForFastDecode(ValueError):
    """The model needs the generic Hugging Face ``generate`` path."""


def fast_decode_unsupported_reason(model: nn.Module) -> str | None:
    """Why the lean loop cannot run ``model`` (None when it can)."""
    config = model.config
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {config.model_type!r} (the fast loop covers {', '.join(SUPPORTED_MODEL_TYPES)})"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} (the fast loop implements SiLU-gated MLPs)"
    if not hasattr(getattr(model, "model", None), "rotary_emb"):
        return "no rotary embedding module at model.model.rotary_emb"
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
        self.max_length = max_length or config.max_position_embeddings
        window = getattr(config, "sliding_window", None) if getattr(config, "use_sliding_window", True) else None
        if window is not None and self.max_length > window:
            self.max_length = window  # past the window the attention pattern changes: stop there
        self.eps = [(b.input_layernorm.variance_epsilon, b.post_attention_layernorm.variance_epsilon)
                    for b in self.blocks]
        self.final_eps = model.model.norm.variance_epsilon
        # The LM head reads the whole vocabulary matrix every token. head_dtype=float16 keeps an fp16 copy and
        # multiplies it in fp32 arithmetic (tritium::linear_half_weight): half the traffic, and exact when the
        # weights are fp16 values already, as in a packed folder (which stores them in fp16).
        # "auto": only where that changes nothing, i.e. the head's values are fp16 values already.
        head = model.lm_head
        self.head_weight = None
        if head_dtype == "auto":
            weight = head.weight.detach()
            exact = weight.dtype == torch.float32 and getattr(head, "bias", None) is None and bool(
                torch.equal(weight, weight.half().float()))
            head_dtype = torch.float16 if exact else None
        if head_dtype is not None and head_dtype != head.weight.dtype:
            if head_dtype != torch.float16:
                raise UnsupportedForFastDecode(f"head_dtype must be torch.float16 or None, not {head_dtype}")
            if getattr(head, "bias", None) is not None:
                raise UnsupportedForFastDecode("an fp16 LM head copy is not supported for heads with a bias")
            self.head_weight = head.weight.detach().to(torch.float16)
        self._cache: tuple[Tensor, Tensor] | None = None
        self._rotary: tuple[Tensor, Tensor] | None = None

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
            attn = block.self_attn
            h = self._rms_norm(x, block.input_layernorm, eps_in)
            q = attn.q_proj(h).view(length, n_heads, head_dim)
            k = attn.k_proj(h).view(length, n_kv, head_dim)
            v = attn.v_proj(h).view(length, n_kv, head_dim)
            qk = torch.cat((q, k), dim=1)  # one rotary pass for both: [T, heads + kv heads, head_dim]
            rotated = torch.cat((-qk[..., half:], qk[..., :half]), dim=-1)
            qk = qk * cos[:, None] + rotated * sin[:, None]
            q = qk[:, :n_heads].transpose(0, 1)[None]
            keys[index, 0, :, position:end] = qk[:, n_heads:].transpose(0, 1)
            values[index, 0, :, position:end] = v.transpose(0, 1)
            out = F.scaled_dot_product_attention(q, keys[index, :, :, :end], values[index, :, :, :end],
                                                 is_causal=length > 1 and position == 0,
                                                 scale=getattr(attn, "scaling", None), enable_gqa=n_kv != n_heads)
            x = x + attn.o_proj(out[0].transpose(0, 1).reshape(1, length, n_heads * head_dim))
            h = self._rms_norm(x, block.post_attention_layernorm, eps_post)
            mlp = block.mlp
            x = x + mlp.down_proj(F.silu(mlp.gate_proj(h)) * mlp.up_proj(h))
        x = self._rms_norm(x[:, -1:], model.model.norm, self.final_eps)
        if self.head_weight is not None:
            return linear_half_weight(x, self.head_weight)[:, -1]
        return model.lm_head(x)[:, -1]

    @torch.no_grad()
    def generate(self, ids: Tensor, max_new_tokens: int, eos_token_id: int | list[int] | None = None,
                 time_steps: bool = False) -> DecodeResult:
        if ids.dim() != 2 or ids.shape[0] != 1:
            raise ValueError(f"the fast decode loop takes one prompt [1, T]; got shape {tuple(ids.shape)}")
        if max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        stop = set() if eos_token_id is None else {eos_token_id} if isinstance(eos_token_id, int) else set(eos_token_id)
        device = self.model.model.embed_tokens.weight.device
        dtype = self.model.model.embed_tokens.weight.dtype
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
