"""Evaluation: GPTQ-protocol perplexity, zero-shot accuracy, size in bits and scaling-law reports."""

from .perplexity import EvalInputError, PerplexityResult, perplexity, tokenize_eval_text  # noqa: F401
from .scaling import PowerLawFit, SuiteEntry, fit_power_law, load_suite, write_suite_report  # noqa: F401
from .size import SizeReport, size_report  # noqa: F401
from .zeroshot import TASKS, Doc, evaluate_docs, evaluate_task, loglikelihoods  # noqa: F401
