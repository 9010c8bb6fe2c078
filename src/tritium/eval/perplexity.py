"""Perplexity under the GPTQ protocol.

Join the split's rows with "\\n\\n", tokenize once, cut non-overlapping chunks of
``seqlen`` tokens (dropping the tail), take each chunk's mean next-token NLL, and
report exp of their average. This is the number GPTQ, AWQ, OmniQuant and TesseraQ
print for WikiText-2 and PTB.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..utils.errors import TritiumError
from ..utils.progress import progress_bar


class EvalInputError(TritiumError, ValueError):
    """Evaluation settings that cannot work for this model or text."""


@dataclass
class PerplexityResult:
    dataset: str
    seqlen: int
    chunk_nll: list[float]  # mean NLL of each evaluated chunk, in order
    available_chunks: int
    seconds: float

    @property
    def n_chunks(self) -> int:
        return len(self.chunk_nll)

    @property
    def ppl(self) -> float:
        return math.exp(sum(self.chunk_nll) / self.n_chunks)

    def ppl_first(self, k: int) -> float:
        """Perplexity over the first ``k`` chunks: the same number a run with ``--limit k`` reports."""
        head = self.chunk_nll[:k]
        return math.exp(sum(head) / len(head))

    @property
    def tokens_per_second(self) -> float:
        return self.n_chunks * self.seqlen / self.seconds if self.seconds > 0 else float("nan")

    def to_dict(self) -> dict:
        return asdict(self) | {"ppl": self.ppl, "n_chunks": self.n_chunks, "tokens_per_second": self.tokens_per_second}


def model_context_length(model) -> int | None:
    config = getattr(model, "config", None)
    return getattr(config, "max_position_embeddings", None)


def tokenize_eval_text(tokenizer, text: str) -> torch.Tensor:
    """Tokenize the whole text once, as the protocol does. Returns ``[1, n_tokens]``."""
    return tokenizer(text, return_tensors="pt").input_ids


def chunk_nll(model, chunk: torch.Tensor) -> torch.Tensor:
    """Mean next-token NLL of each row of ``chunk`` ``[batch, seqlen]``; returns ``[batch]``."""
    logits = model(chunk, use_cache=False).logits
    losses = F.cross_entropy(
        logits[:, :-1].flatten(0, 1).float(), chunk[:, 1:].flatten(), reduction="none"
    )
    return losses.view(chunk.shape[0], -1).mean(dim=1)


@torch.inference_mode()
def perplexity(model, input_ids: torch.Tensor, seqlen: int = 2048, limit: int | None = None, batch_size: int = 1,
               dataset: str = "text", progress: bool = True) -> PerplexityResult:
    if input_ids.dim() == 1:
        input_ids = input_ids.unsqueeze(0)
    context = model_context_length(model)
    if context is not None and seqlen > context:
        raise EvalInputError(
            f"seqlen {seqlen} exceeds the model's context of {context} tokens: pass --seqlen {context} or less"
        )
    if seqlen < 2:
        raise EvalInputError(f"seqlen must be at least 2 tokens, got {seqlen}")
    if limit is not None and limit < 1:
        raise EvalInputError(f"--limit must be a positive number of chunks, got {limit}")
    available = input_ids.shape[1] // seqlen
    if available == 0:
        raise EvalInputError(
            f"the text has {input_ids.shape[1]} tokens, fewer than one chunk of {seqlen}: use a longer text or a "
            "smaller --seqlen"
        )
    n_chunks = min(available, limit) if limit else available
    chunks = input_ids[0, : n_chunks * seqlen].view(n_chunks, seqlen)
    device = next(model.parameters()).device
    nlls: list[float] = []
    start = time.perf_counter()
    bar = progress_bar(total=n_chunks, desc=f"ppl {dataset}", unit="chunk", enabled=progress, leave=False)
    for i in range(0, n_chunks, batch_size):
        batch_nll = chunk_nll(model, chunks[i : i + batch_size].to(device))
        if not torch.isfinite(batch_nll).all():
            raise FloatingPointError(f"non-finite loss on chunk {i} of {dataset}: the model produces NaN/Inf logits")
        nlls.extend(batch_nll.tolist())
        bar.update(batch_nll.numel())
    bar.close()
    return PerplexityResult(dataset, seqlen, nlls, available, time.perf_counter() - start)
