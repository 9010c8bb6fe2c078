"""lm-evaluation-harness as a second zero-shot scorer, beside tritium's own (:mod:`tritium.eval.zeroshot`).

The model tritium loaded (float, fake-quantized or packed) is wrapped in lm-eval's ``HFLM`` and scored
on lm-eval's own task definitions, shipped in ``harness_tasks/``: each YAML is lm-eval's (prompt, choices,
target, metrics, lm-eval's own preprocessing functions), except that the documents come from the local
copies tritium reads (an explicit data folder, then ``$TRITIUM_DATA``) turned into the HF datasets' rows.
Nothing is fetched: the hub is switched off while lm-eval runs.

Install with ``pip install tritium[harness]`` (lm-eval is also in the ``test`` extra).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import logging
import os
from contextlib import contextmanager
from pathlib import Path

from ..data.sources import require_data_file
from ..utils.errors import TritiumError

TASKS_DIR = Path(__file__).parent / "harness_tasks"
SCORERS = ("tritium", "lm-eval")
DATA_PATH_KEY = "tritium_data_path"  # lm-eval hands task metadata to local_dataset under this name


class HarnessError(TritiumError, ValueError):
    """The lm-eval scorer cannot run as asked; the message says what to change."""


def harness_tasks() -> list[str]:
    """The tasks lm-eval can score here: those tritium ships a local task config for."""
    return sorted(p.stem for p in TASKS_DIR.glob("*.yaml"))


def check_scorers(scorers, tasks) -> None:
    """Fail before any model loads on an unknown scorer, a missing lm-eval, or a task it cannot score."""
    unknown = [s for s in scorers or () if s not in SCORERS]
    if unknown:
        raise HarnessError(f"unknown scorer {unknown[0]!r} for --harness: choose from {', '.join(SCORERS)} "
                           "(comma separated for both)")
    if "lm-eval" not in (scorers or ()):
        return
    if importlib.util.find_spec("lm_eval") is None:
        raise HarnessError("--harness lm-eval needs lm-evaluation-harness: run `pip install 'tritium[harness]'` "
                           "(or `pip install lm-eval`)")
    missing = [t for t in tasks or () if t not in harness_tasks()]
    if missing:
        raise HarnessError(f"lm-eval has no local task config for {', '.join(missing)} here: tritium ships "
                           f"{', '.join(harness_tasks())} (in {TASKS_DIR})")
    if not tasks:
        raise HarnessError("--harness lm-eval scores zero-shot tasks: pass --zeroshot (e.g. piqa,arc_easy,hellaswag)")


# --------------------------------------------------------------------------- the local documents, in HF's rows


def _jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _arc_rows(name: str, data_path) -> list[dict]:
    # AI2's release nests the stem and choices; HF ai2_arc flattens them (question, choices.text/label)
    return [{"id": d["id"], "question": d["question"]["stem"],
             "choices": {"text": [c["text"] for c in d["question"]["choices"]],
                         "label": [c["label"] for c in d["question"]["choices"]]},
             "answerKey": d["answerKey"]}
            for d in _jsonl(require_data_file(name, "test", data_path))]


def _piqa_rows(data_path) -> list[dict]:
    docs = _jsonl(require_data_file("piqa", "valid", data_path))
    labels = require_data_file("piqa", "valid-labels", data_path).read_text().split()
    if len(labels) != len(docs):
        raise HarnessError(f"piqa: {len(docs)} questions but {len(labels)} labels: the local copy is damaged")
    return [{"goal": d["goal"], "sol1": d["sol1"], "sol2": d["sol2"], "label": int(y)} for d, y in zip(docs, labels)]


def _hellaswag_rows(data_path) -> list[dict]:
    # HF Rowan/hellaswag holds the label as a string
    return [d | {"label": str(d["label"])} for d in _jsonl(require_data_file("hellaswag", "valid", data_path))]


def _winogrande_rows(data_path) -> list[dict]:
    return [{"sentence": d["sentence"], "option1": d["option1"], "option2": d["option2"], "answer": str(d["answer"])}
            for d in _jsonl(require_data_file("winogrande", "valid", data_path))]


def _boolq_rows(data_path) -> list[dict]:
    # lm-eval reads SuperGLUE's BoolQ, whose passage is "<title> -- <passage>" of Google's release
    return [{"question": d["question"], "passage": f"{d['title']} -- {d['passage']}", "idx": i,
             "label": int(bool(d["answer"]))}
            for i, d in enumerate(_jsonl(require_data_file("boolq", "valid", data_path)))]


def _openbookqa_rows(data_path) -> list[dict]:
    return [{"id": d["id"], "question_stem": d["question"]["stem"],
             "choices": {"text": [c["text"] for c in d["question"]["choices"]],
                         "label": [c["label"] for c in d["question"]["choices"]]},
             "answerKey": d["answerKey"]}
            for d in _jsonl(require_data_file("openbookqa", "test", data_path))]


def _lambada_rows(data_path) -> list[dict]:
    return [{"text": d["text"]} for d in _jsonl(require_data_file("lambada_openai", "test", data_path))]


# task -> (HF split name its YAML evaluates, rows)
_ROWS = {
    "piqa": ("validation", _piqa_rows),
    "arc_easy": ("test", lambda p: _arc_rows("arc_easy", p)),
    "arc_challenge": ("test", lambda p: _arc_rows("arc_challenge", p)),
    "hellaswag": ("validation", _hellaswag_rows),
    "winogrande": ("validation", _winogrande_rows),
    "boolq": ("validation", _boolq_rows),
    "openbookqa": ("test", _openbookqa_rows),
    "lambada_openai": ("test", _lambada_rows),
}


def local_rows(task: str, data_path=None) -> tuple[str, list[dict]]:
    """(split, rows): the local copy of ``task``'s evaluation split in the HF dataset's layout."""
    if task not in _ROWS:
        raise HarnessError(f"no local documents for lm-eval task {task!r}: known ones are {', '.join(_ROWS)}")
    split, rows = _ROWS[task]
    return split, rows(data_path)


def local_dataset(tritium_task: str, **metadata):
    """lm-eval's ``custom_dataset`` hook: a ``DatasetDict`` of the local rows (called with the task's
    metadata, where tritium puts the data folder, and its ``dataset_kwargs``)."""
    import datasets

    split, rows = local_rows(tritium_task, metadata.get(DATA_PATH_KEY))
    return datasets.DatasetDict({split: datasets.Dataset.from_list(rows)})


# --------------------------------------------------------------------------- scoring


@contextmanager
def _offline():
    """No hub access while lm-eval runs: every document is local, and the model is already loaded."""
    keys = ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def harness_version() -> str:
    from importlib.metadata import version

    return version("lm_eval")


def evaluate_with_harness(model, tokenizer, tasks: list[str], limit: int | None = None, data_path=None,
                          batch_size: int = 16, progress: bool = True, log_samples: bool = False) -> dict:
    """Score ``model`` with lm-eval on ``tasks``; returns ``{task: {metric: value, ..., "n_docs": n}}``
    (with ``log_samples``, also ``"samples"``: lm-eval's per-document records, for comparisons)."""
    check_scorers(["lm-eval"], tasks)
    if limit is not None and limit < 1:
        raise HarnessError(f"--zeroshot-limit must be a positive number of documents, got {limit}")
    with _offline():
        from lm_eval import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager

        from ..utils.progress import LM_EVAL_MODULES, direct_library_bars_follow_switch

        if not progress:
            logging.getLogger("lm-eval").setLevel(logging.WARNING)
            logging.getLogger("lm_eval").setLevel(logging.WARNING)
        # lm-eval sets a pad token on the tokenizer it is given: keep the caller's untouched
        lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
        folder = str(Path(data_path).expanduser().resolve()) if data_path is not None else None
        manager = TaskManager(include_path=str(TASKS_DIR), include_defaults=False,
                              metadata={DATA_PATH_KEY: folder})
        was_training = model.training
        try:
            # lm-eval's request loops call tqdm directly, past every switch
            with direct_library_bars_follow_switch(LM_EVAL_MODULES, enabled=progress):
                results = simple_evaluate(model=lm, tasks=list(tasks), task_manager=manager, limit=limit,
                                          bootstrap_iters=0, log_samples=log_samples, num_fewshot=0)
        finally:
            model.train(was_training)
    out = {}
    for task in tasks:
        metrics = results["results"][task]
        entry = {name.split(",")[0]: float(value) for name, value in metrics.items()
                 if "," in name and "_stderr" not in name and isinstance(value, (int, float))}
        if "perplexity" in entry:  # tritium's scorer calls LAMBADA's perplexity ppl
            entry["ppl"] = entry.pop("perplexity")
        entry["n_docs"] = int(results["n-samples"][task]["effective"])
        if log_samples:
            entry["samples"] = results["samples"][task]
        out[task] = entry
    return out
