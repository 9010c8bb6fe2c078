"""Zero-shot multiple choice, scored as lm-evaluation-harness scores it.

Every choice is a (context, continuation) pair; its score is the summed
log-probability of the continuation's tokens. ``acc`` picks the highest score,
``acc_norm`` the highest score per character of the choice text. Prompts and
tokenization follow lm-eval's task definitions, so numbers are comparable.
Requests from all documents are sorted by length and run in padded batches.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..data.sources import require_data_file
from ..utils.errors import TritiumError
from ..utils.progress import progress_bar


class ZeroShotTaskError(TritiumError, ValueError):
    """A zero-shot task tritium does not know, or cannot score with the model's tokenizer."""


@dataclass
class Doc:
    """One question: a (context, continuation) pair per choice and the index of the right one."""

    contexts: list[str]
    continuations: list[str]
    gold: int
    choice_texts: list[str] = field(default_factory=list)  # lengths used by acc_norm


@dataclass
class TaskSpec:
    name: str
    load: Callable[[str | None], list[Doc]]
    metrics: tuple[str, ...] = ("acc", "acc_norm")


def _read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _same_context(context: str, choices: list[str], gold: int) -> Doc:
    return Doc([context] * len(choices), [" " + c for c in choices], gold, choices)


def _load_piqa(path):
    docs = _read_jsonl(require_data_file("piqa", "valid", path))
    labels = require_data_file("piqa", "valid-labels", path).read_text().split()
    return [_same_context(f"Question: {d['goal']}\nAnswer:", [d["sol1"], d["sol2"]], int(y)) for d, y in zip(docs, labels)]


def _arc_loader(name):
    def load(path):
        docs = []
        for d in _read_jsonl(require_data_file(name, "test", path)):
            choices = d["question"]["choices"]
            labels = [c["label"] for c in choices]
            docs.append(_same_context(f"Question: {d['question']['stem']}\nAnswer:", [c["text"] for c in choices],
                                      labels.index(d["answerKey"])))
        return docs
    return load


def _hellaswag_clean(text: str) -> str:
    text = text.strip().replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def _load_hellaswag(path):
    docs = []
    for d in _read_jsonl(require_data_file("hellaswag", "valid", path)):
        ctx = d["ctx_a"] + " " + d["ctx_b"].capitalize()
        query = _hellaswag_clean(d["activity_label"] + ": " + ctx)
        docs.append(_same_context(query, [_hellaswag_clean(e) for e in d["endings"]], int(d["label"])))
    return docs


def _load_winogrande(path):
    docs = []
    for d in _read_jsonl(require_data_file("winogrande", "valid", path)):
        # The choices change the context; the shared continuation is what follows the blank.
        blank = d["sentence"].index("_")
        target = d["sentence"][blank + 1 :].strip()
        options = [d["option1"], d["option2"]]
        contexts = [d["sentence"][:blank] + option for option in options]
        docs.append(Doc(contexts, [" " + target] * 2, int(d["answer"]) - 1, options))
    return docs


def _load_boolq(path):
    # lm-eval reads SuperGLUE's BoolQ, whose passage is Google's "<title> -- <passage>"
    return [
        _same_context(f"{d['title']} -- {d['passage']}\nQuestion: {d['question']}?\nAnswer:", ["no", "yes"],
                      int(bool(d["answer"])))
        for d in _read_jsonl(require_data_file("boolq", "valid", path))
    ]


def _load_openbookqa(path):
    docs = []
    for d in _read_jsonl(require_data_file("openbookqa", "test", path)):
        choices = d["question"]["choices"]
        labels = [c["label"] for c in choices]
        docs.append(_same_context(d["question"]["stem"], [c["text"] for c in choices],
                                  labels.index(d["answerKey"].lstrip())))
    return docs


def _load_lambada(path):
    docs = []
    for d in _read_jsonl(require_data_file("lambada_openai", "test", path)):
        context, word = d["text"].rsplit(" ", 1)
        docs.append(Doc([context], [" " + word], 0, [word]))
    return docs


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in [
        TaskSpec("piqa", _load_piqa),
        TaskSpec("arc_easy", _arc_loader("arc_easy")),
        TaskSpec("arc_challenge", _arc_loader("arc_challenge")),
        TaskSpec("hellaswag", _load_hellaswag),
        TaskSpec("winogrande", _load_winogrande, ("acc",)),
        TaskSpec("boolq", _load_boolq, ("acc",)),
        TaskSpec("openbookqa", _load_openbookqa),
        TaskSpec("lambada_openai", _load_lambada, ("acc", "ppl")),
    ]
}


# --------------------------------------------------------------------------- scoring


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """lm-eval's split: trailing spaces move to the continuation; continuation tokens are
    the tokens of context+continuation past those of the context alone."""
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    add_bos = bool(getattr(tokenizer, "add_bos_token", False))
    whole = tokenizer.encode(context + continuation, add_special_tokens=add_bos)
    context_ids = tokenizer.encode(context, add_special_tokens=add_bos)
    if not context:
        # An empty context is conditioned on the end-of-text token, as lm-eval does.
        prefix = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
        return [prefix], whole[len(context_ids):]
    return context_ids, whole[len(context_ids):]


@torch.inference_mode()
def loglikelihoods(model, tokenizer, pairs: list[tuple[str, str]], batch_size: int = 16,
                   max_length: int | None = None, progress: bool = True) -> list[tuple[float, bool]]:
    """(sum of continuation log-probs, whether greedy decoding yields the continuation) per pair."""
    max_length = max_length or getattr(model.config, "max_position_embeddings", 2048)
    device = next(model.parameters()).device
    encoded = []
    for context, continuation in pairs:
        ctx, cont = encode_pair(tokenizer, context, continuation)
        if not cont:
            raise ZeroShotTaskError(f"continuation {continuation!r} encodes to no tokens: the tokenizer cannot score "
                                    "this task; evaluate it with the model's own tokenizer")
        # Keep the last max_length+1 tokens; the final token is only ever a target.
        tokens = (ctx + cont)[-(max_length + 1):]
        # A continuation longer than the window is scored on the tokens the window predicts;
        # indexing its whole length would start before the window (a crash, or the wrong span).
        encoded.append((tokens[:-1], cont[-(len(tokens) - 1):]))
    order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0]))
    results: list[tuple[float, bool] | None] = [None] * len(encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    for start in progress_bar(range(0, len(order), batch_size), desc="loglikelihood", unit="batch", enabled=progress,
                              leave=False):
        batch = order[start : start + batch_size]
        width = max(len(encoded[i][0]) for i in batch)
        inputs = torch.full((len(batch), width), pad, dtype=torch.long)
        for row, i in enumerate(batch):
            inputs[row, : len(encoded[i][0])] = torch.tensor(encoded[i][0])
        # Right padding with a causal mask: real positions never attend to the pads.
        logprobs = F.log_softmax(model(inputs.to(device), use_cache=False).logits.float(), dim=-1).cpu()
        for row, i in enumerate(batch):
            n_input, cont = len(encoded[i][0]), encoded[i][1]
            span = logprobs[row, n_input - len(cont) : n_input]
            target = torch.tensor(cont)
            total = span.gather(1, target[:, None]).sum().item()
            greedy = bool((span.argmax(-1) == target).all())
            results[i] = (total, greedy)
    return results  # type: ignore[return-value]


@dataclass
class TaskResult:
    task: str
    n_docs: int
    metrics: dict[str, float]


def score_docs(docs: list[Doc], scores: list[tuple[float, bool]], metrics: tuple[str, ...]) -> dict[str, float]:
    """Turn per-choice scores (in document order) into lm-eval's metrics."""
    out: dict[str, list[float]] = {m: [] for m in metrics}
    cursor = 0
    for doc in docs:
        n = len(doc.continuations)
        chunk = scores[cursor : cursor + n]
        cursor += n
        logp = [s for s, _ in chunk]
        if "acc" in out:
            if n == 1:  # LAMBADA: correct when greedy decoding reproduces the word
                out["acc"].append(float(chunk[0][1]))
            else:
                out["acc"].append(float(max(range(n), key=lambda k: logp[k]) == doc.gold))
        if "acc_norm" in out:
            normed = [lp / len(text) for lp, text in zip(logp, doc.choice_texts)]
            out["acc_norm"].append(float(max(range(n), key=lambda k: normed[k]) == doc.gold))
        if "ppl" in out:
            out["ppl"].append(logp[doc.gold])
    result = {m: sum(v) / len(v) for m, v in out.items() if m != "ppl"}
    if "ppl" in out:
        result["ppl"] = math.exp(-sum(out["ppl"]) / len(out["ppl"]))
    return result


def evaluate_docs(model, tokenizer, docs: list[Doc], metrics=("acc", "acc_norm"), batch_size: int = 16,
                  progress: bool = True) -> dict[str, float]:
    pairs = [(c, k) for doc in docs for c, k in zip(doc.contexts, doc.continuations)]
    return score_docs(docs, loglikelihoods(model, tokenizer, pairs, batch_size, progress=progress), metrics)


def evaluate_task(model, tokenizer, task: str, limit: int | None = None, data_path=None, batch_size: int = 16,
                  progress: bool = True) -> TaskResult:
    check_task(task)
    spec = TASKS[task]
    docs = spec.load(data_path)
    if limit:
        docs = docs[:limit]
    return TaskResult(task, len(docs), evaluate_docs(model, tokenizer, docs, spec.metrics, batch_size, progress))


def check_task(task: str) -> None:
    if task not in TASKS:
        raise ZeroShotTaskError(f"unknown zero-shot task {task!r}: choose from {', '.join(TASKS)}")
