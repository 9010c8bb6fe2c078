"""The jobs: each command of the CLI as a plain function taking a job description (a dataclass) and
returning its result. The CLI (:mod:`tritium.cli`) only parses flags into a description, calls the job
and prints; Python code calls the same functions::

    from tritium.jobs import QuantizeJob, quantize
    result = quantize(QuantizeJob(model="smollm2-135m", recipe="w4g128-rtn", eval=["wikitext2"], limit=4))

quantize, evaluate_model (eval), model_info (info), distill_model, pack_folder (pack), run_model (run),
export_folder (export), ingest_corpus (data ingest), pretrain_model (pretrain) and pretrain_suite (suite).

Every job runs its preflight (:mod:`tritium.jobs.preflight`) before any evaluation, calibration or
training. Importing a job registers tritium's plug-ins (:mod:`tritium.jobs.plugins`).
"""

from __future__ import annotations

from . import plugins  # noqa: F401  (registers method "dlt" and the transformers quantizer)
from .distill import DistillJob, DistillResult, distill_model
from .evaluate import EvalJob, EvalResult, evaluate_model
from .info import InfoJob, model_info
from .ingest import IngestJob, IngestResult, ingest_corpus
from .pack import ExportJob, PackJob, PackResult, RunJob, RunResult, export_folder, pack_folder, run_model
from .preflight import PreflightError
from .pretraining import PretrainJob, PretrainResult, SuiteJob, SuiteResult, pretrain_model, pretrain_suite
from .quantize import QuantizeJob, QuantizeResult, quantize

__all__ = ["DistillJob", "DistillResult", "EvalJob", "EvalResult", "ExportJob", "IngestJob", "IngestResult", "InfoJob",
           "PackJob", "PackResult", "PreflightError", "PretrainJob", "PretrainResult", "QuantizeJob", "QuantizeResult",
           "RunJob", "RunResult", "SuiteJob", "SuiteResult", "distill_model", "evaluate_model", "export_folder",
           "ingest_corpus", "model_info", "pack_folder", "pretrain_model", "pretrain_suite", "quantize", "run_model"]
