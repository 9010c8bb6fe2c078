"""Distillation losses: OFF (cosine on block outputs), KL on logits, and next-token cross-entropy.

OFF (TernaryLLM's Outlier-Friendly Feature distillation) compares the student's and the
teacher's hidden state after every decoder block by 1 − cosine similarity per token: a
cosine ignores each token's scale, so a few outlier channels with huge magnitudes cannot
dominate the loss the way they dominate an MSE.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..utils.errors import TritiumError


class DistillationInputError(TritiumError, ValueError):
    """Teacher and student that cannot be distilled into each other."""


@dataclass
class LossConfig:
    """Weights of each term (0 turns a term off) and the KL temperature."""

    off_weight: float = 1.0
    kl_weight: float = 1.0
    ce_weight: float = 0.0
    temperature: float = 1.0

    def __post_init__(self):
        for name in ("off_weight", "kl_weight", "ce_weight"):
            if getattr(self, name) < 0:
                raise DistillationInputError(f"{name} must be ≥ 0, got {getattr(self, name)}")
        if self.off_weight == self.kl_weight == self.ce_weight == 0:
            raise DistillationInputError("every loss weight is 0: set off_weight, kl_weight or ce_weight above 0")
        if self.temperature <= 0:
            raise DistillationInputError(f"temperature must be positive, got {self.temperature}")

    @property
    def needs_teacher(self) -> bool:
        return self.off_weight > 0 or self.kl_weight > 0


def off_loss(student_hidden: Sequence[Tensor], teacher_hidden: Sequence[Tensor], eps: float = 1e-8) -> Tensor:
    """Σ over blocks of the mean over tokens of (1 − cos(student, teacher)) along the hidden axis."""
    if len(student_hidden) != len(teacher_hidden):
        raise DistillationInputError(
            f"the student has {len(student_hidden)} hidden states and the teacher {len(teacher_hidden)}: "
            "OFF needs the same number of decoder blocks"
        )
    total = student_hidden[0].new_zeros((), dtype=torch.float32)
    for s, t in zip(student_hidden, teacher_hidden):
        if s.shape != t.shape:
            raise DistillationInputError(f"hidden shapes differ: student {tuple(s.shape)}, teacher {tuple(t.shape)}")
        total = total + (1 - F.cosine_similarity(s.float(), t.float(), dim=-1, eps=eps)).mean()
    return total


def kl_logits(student_logits: Tensor, teacher_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(teacher ‖ student) of the softened next-token distributions, mean over tokens, times T² (Hinton)."""
    if student_logits.shape != teacher_logits.shape:
        raise DistillationInputError(f"logit shapes differ: student {tuple(student_logits.shape)}, "
                                     f"teacher {tuple(teacher_logits.shape)}")
    vocab = student_logits.shape[-1]
    return ChunkedLogitKL.apply(student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab).detach(),
                                float(temperature))


# Logits per chunk: 2^18 float32 values (1 MB, a few rows of a large vocabulary) keep each chunk's temporaries in
# a core's L2 cache; on SmolLM2 logits that took the KL's forward from 0.78 s to 0.29 s against 2^23.
KL_CHUNK_VALUES = 1 << 18


class ChunkedLogitKL(torch.autograd.Function):
    """T²·KL(softmax(t/T) ‖ softmax(s/T)), mean over rows, computed a chunk of rows at a time in float32.

    The gradient to the student's logits, (softmax(s/T) − softmax(t/T))·T/rows, is formed in the same pass and
    kept in the logits' dtype (what autograd would hand them): the whole-vocabulary float32 copies, log-softmaxes
    and their backward (a SmolLM2 batch of 2048 tokens × 49152 entries is 400 MB per copy) cost about 1.6 s of a
    CPU distillation step that this does in a fraction (BENCHMARKS.md, eighth session)."""

    @staticmethod
    def forward(ctx, student, teacher, temperature):
        rows, vocab = student.shape
        step = max(1, KL_CHUNK_VALUES // vocab)
        total = torch.zeros((), dtype=torch.float64, device=student.device)
        grad = torch.empty_like(student) if ctx.needs_input_grad[0] else None
        for start in range(0, rows, step):
            s = student[start : start + step].float()
            t = teacher[start : start + step].float()
            if temperature != 1.0:
                s.div_(temperature), t.div_(temperature)
            log_s, log_t = F.log_softmax(s, dim=-1), F.log_softmax(t, dim=-1)
            p_t = log_t.exp()
            total += (p_t * (log_t - log_s)).sum(dtype=torch.float64)
            if grad is not None:
                grad[start : start + step] = log_s.exp_().sub_(p_t).mul_(temperature / rows)
        ctx.save_for_backward(grad)
        return (total * (temperature**2 / rows)).float()

    @staticmethod
    def backward(ctx, grad_output):
        (grad,) = ctx.saved_tensors
        return grad * grad_output.to(grad.dtype), None, None


def next_token_ce(logits: Tensor, input_ids: Tensor) -> Tensor:
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]).float(), input_ids[:, 1:].reshape(-1))


def check_same_vocabulary(teacher: nn.Module, student: nn.Module, tokenizer=None) -> None:
    tv = getattr(getattr(teacher, "config", None), "vocab_size", None)
    sv = getattr(getattr(student, "config", None), "vocab_size", None)
    if tv is not None and sv is not None and tv != sv:
        raise DistillationInputError(
            f"the teacher's vocabulary has {tv} tokens and the student's {sv}: logit distillation needs the same "
            "tokenizer. Distill from a teacher of the student's own family (same tokenizer and vocab_size)."
        )
    if tokenizer is not None and sv is not None and len(tokenizer) > sv:
        raise DistillationInputError(
            f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary only {sv}: use the model's own tokenizer"
        )


class DistillationLoss:
    """``loss(student, input_ids) -> (total, parts)``: OFF + KL against a frozen teacher, plus optional CE.

    The teacher is frozen and runs under ``no_grad``; it shares the student's input batch.
    """

    def __init__(self, teacher: nn.Module | None, config: LossConfig, student: nn.Module | None = None):
        if config.needs_teacher and teacher is None:
            raise DistillationInputError("OFF and KL need a teacher: pass the float model, or set only ce_weight")
        if teacher is not None:
            teacher.eval().requires_grad_(False)
            if student is not None:
                check_same_vocabulary(teacher, student)
        self.teacher = teacher
        self.config = config

    def to(self, device) -> "DistillationLoss":
        if self.teacher is not None:
            self.teacher.to(device)
        return self

    def __call__(self, student: nn.Module, input_ids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        cfg = self.config
        want_hidden = cfg.off_weight > 0
        out = student(input_ids, output_hidden_states=want_hidden, use_cache=False)
        parts: dict[str, Tensor] = {}
        if cfg.needs_teacher:
            with torch.no_grad():
                t_out = self.teacher(input_ids, output_hidden_states=want_hidden, use_cache=False)
            if out.logits.shape[-1] != t_out.logits.shape[-1]:
                raise DistillationInputError(
                    f"teacher logits have {t_out.logits.shape[-1]} entries and the student's {out.logits.shape[-1]}: "
                    "the vocabularies differ"
                )
            if want_hidden:
                # hidden_states[0] is the embedding output, identical in float for both; [1:] follow each block.
                parts["off"] = off_loss(out.hidden_states[1:], t_out.hidden_states[1:])
            if cfg.kl_weight > 0:
                parts["kl"] = kl_logits(out.logits, t_out.logits, cfg.temperature)
            del t_out
        if cfg.ce_weight > 0:
            parts["ce"] = next_token_ce(out.logits, input_ids)
        weights = {"off": cfg.off_weight, "kl": cfg.kl_weight, "ce": cfg.ce_weight}
        total = sum(weights[k] * v for k, v in parts.items())
        return total, {k: v.detach() for k, v in parts.items()}


class LanguageModelLoss:
    """Plain next-token cross-entropy: the loss of pretraining and of the bare-float baseline."""

    def __call__(self, model: nn.Module, input_ids: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        logits = model(input_ids, use_cache=False).logits
        loss = next_token_ce(logits, input_ids)
        return loss, {"ce": loss.detach()}
