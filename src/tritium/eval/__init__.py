"""Evaluation: GPTQ-protocol perplexity, zero-shot accuracy and size in bits."""

from .perplexity import EvalInputError, PerplexityResult, perplexity, tokenize_eval_text  # noqa: F401
from .size import SizeReport, size_report  # noqa: F401
from .zeroshot import TASKS, Doc, evaluate_docs, evaluate_task, loglikelihoods  # noqa: F401
