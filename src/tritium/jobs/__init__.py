"""The jobs: each command of the CLI as a plain function taking a job description (a dataclass) and
returning its result. The CLI (:mod:`tritium.cli`) only parses flags into a description, calls the job
and prints; Python code calls the same functions::

    from tritium.jobs import QuantizeJob, quantize
    result = quantize(QuantizeJob(model="smollm2-135m", recipe="w4g128-rtn", eval=["wikitext2"], limit=4))

Every job runs its preflight (:mod:`tritium.jobs.preflight`) before any evaluation, calibration or
training. Importing a job registers tritium's plug-ins (:mod:`tritium.jobs.plugins`).
"""

from __future__ import annotations

from . import plugins  # noqa: F401  (registers method "dlt" and the transformers quantizer)
from .evaluate import EvalJob, EvalResult, evaluate_model
from .info import InfoJob, model_info
from .preflight import PreflightError
from .quantize import QuantizeJob, QuantizeResult, quantize

__all__ = ["EvalJob", "EvalResult", "InfoJob", "PreflightError", "QuantizeJob", "QuantizeResult", "evaluate_model",
           "model_info", "quantize"]
