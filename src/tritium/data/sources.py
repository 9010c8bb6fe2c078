"""Find evaluation and calibration data: explicit path, then $TRITIUM_DATA/<folder>/, then the HF hub.

Nothing is bundled: the data sets' licences differ from ours, and a run should read
the copy its user chose. When nothing is found, the error lists every place tried.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..utils.errors import TritiumError
from ..utils.io import read_utf8

DATA_ENV = "TRITIUM_DATA"


class DataNotFoundError(TritiumError, FileNotFoundError):
    """No copy of a data set was found; the message lists every place tried."""


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    folder: str  # the folder name under $TRITIUM_DATA
    files: dict[str, str]  # split -> file name inside the folder
    hub_path: str | None = None
    hub_config: str | None = None
    hub_splits: dict[str, str] = field(default_factory=dict)
    hub_text_field: str = "text"


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec("wikitext2", "wikitext-2-raw-v1", {"test": "wiki.test.raw", "valid": "wiki.valid.raw"},
                    "wikitext", "wikitext-2-raw-v1", {"test": "test", "valid": "validation"}),
        DatasetSpec("ptb", "ptb", {"test": "ptb.test.txt", "valid": "ptb.valid.txt"},
                    "ptb_text_only", "penn_treebank", {"test": "test", "valid": "validation"}, "sentence"),
        DatasetSpec("lambada_openai", "lambada_openai", {"test": "lambada_test.jsonl"}),
        DatasetSpec("piqa", "piqa", {"valid": "valid.jsonl", "valid-labels": "valid-labels.lst"}),
        DatasetSpec("arc_easy", "arc_easy", {"test": "ARC-Easy-Test.jsonl", "valid": "ARC-Easy-Dev.jsonl"}),
        DatasetSpec("arc_challenge", "arc_challenge",
                    {"test": "ARC-Challenge-Test.jsonl", "valid": "ARC-Challenge-Dev.jsonl"}),
        DatasetSpec("hellaswag", "hellaswag", {"valid": "hellaswag_val.jsonl"}),
        DatasetSpec("winogrande", "winogrande", {"valid": "dev.jsonl", "valid-labels": "dev-labels.lst"}),
        DatasetSpec("boolq", "boolq", {"valid": "dev.jsonl"}),
        DatasetSpec("openbookqa", "openbookqa", {"test": "test.jsonl"}),
    ]
}


def _spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DataNotFoundError(f"unknown data set {name!r}: known ones are {', '.join(DATASETS)}, or pass a file path")
    return DATASETS[name]


def find_data_file(name: str, split: str, path: str | os.PathLike | None = None) -> Path | None:
    """Path of ``name``'s ``split`` file from an explicit path or $TRITIUM_DATA, else ``None``.

    ``path`` may be the file itself or a folder that holds it.
    """
    return _search_local(_spec(name), split, path)[0]


def _search_local(spec: DatasetSpec, split: str, path) -> tuple[Path | None, list[str]]:
    if split not in spec.files:
        raise DataNotFoundError(f"{spec.name} has no split {split!r}; it has {', '.join(spec.files)}")
    filename = spec.files[split]
    tried: list[str] = []
    candidates: list[Path] = []
    if path is not None:
        p = Path(path).expanduser()
        candidates += [p] if p.is_file() else [p / filename, p / spec.folder / filename]
    env = os.environ.get(DATA_ENV)
    if env:
        candidates.append(Path(env).expanduser() / spec.folder / filename)
    for candidate in candidates:
        if candidate.is_file():
            return candidate, tried
        tried.append(str(candidate))
    if not env:
        tried.append(f"${DATA_ENV} (not set)")
    return None, tried


def _hub_rows(spec: DatasetSpec, split: str, tried: list[str]) -> list[str] | None:
    if not spec.hub_path or split not in spec.hub_splits:
        tried.append("the HF hub (no hub copy is known for this split)")
        return None
    where = f"the HF hub {spec.hub_path}/{spec.hub_config or ''} split {spec.hub_splits[split]}"
    if os.environ.get("HF_HUB_OFFLINE") == "1" or os.environ.get("HF_DATASETS_OFFLINE") == "1":
        tried.append(f"{where} (offline mode is set)")
        return None
    try:
        import datasets
    except ImportError:
        tried.append(f"{where} (needs `pip install datasets`)")
        return None
    from ..utils.progress import follow_progress_switch

    follow_progress_switch(datasets)  # --no-progress reaches its download bars
    try:
        rows = datasets.load_dataset(spec.hub_path, spec.hub_config, split=spec.hub_splits[split])
    except Exception as err:  # no network, or the hub refused: report and fall through
        tried.append(f"{where} ({type(err).__name__}: {str(err)[:120]})")
        return None
    return list(rows[spec.hub_text_field])


def _not_found(spec: DatasetSpec, split: str, tried: list[str]) -> DataNotFoundError:
    places = "\n  - ".join(tried)
    return DataNotFoundError(
        f"could not find {spec.name} ({split}). Tried:\n  - {places}\n"
        f"Fix: pass an explicit path, or set {DATA_ENV} to a folder holding {spec.folder}/{spec.files[split]}."
    )


def require_data_file(name: str, split: str, path: str | os.PathLike | None = None) -> Path:
    """Like :func:`find_data_file`, but raise an error that lists every place tried."""
    spec = _spec(name)
    found, tried = _search_local(spec, split, path)
    if found is None:
        tried.append("the HF hub (this data set is read from local files only)")
        raise _not_found(spec, split, tried)
    return found


def load_text_rows(name: str, split: str, path: str | os.PathLike | None = None) -> list[str]:
    """The rows of a text data set, exactly as its Hugging Face split holds them."""
    spec = _spec(name)
    found, tried = _search_local(spec, split, path)
    if found is not None:
        lines = read_utf8(found, f"{name} {split} split").splitlines(keepends=True)
        if name == "ptb":
            return [line.strip() for line in lines]  # the HF ptb_text_only loader strips each line
        # HF wikitext: one row per line, blank lines become "" and others keep their "\n".
        return [line if line.strip() else "" for line in lines]
    rows = _hub_rows(spec, split, tried)
    if rows is None:
        raise _not_found(spec, split, tried)
    return rows


def load_eval_text(source: str, path: str | os.PathLike | None = None) -> str:
    """Text for GPTQ-protocol perplexity: a data set name (its test split) or a text file.

    Data set rows are joined with "\\n\\n" as GPTQ/OmniQuant do; a file is read as-is.
    """
    check_eval_source(source)
    if source in DATASETS:
        return "\n\n".join(load_text_rows(source, "test", path))
    return read_utf8(Path(source).expanduser(), "evaluation text file")


def check_eval_source(source: str) -> None:
    """An evaluation source must be a known data set or an existing file (checked without reading it)."""
    file = Path(source).expanduser()
    if source not in DATASETS and not file.is_file():
        raise DataNotFoundError(
            f"{source!r} is neither a known data set ({', '.join(n for n in DATASETS if 'test' in DATASETS[n].files)}) "
            f"nor a readable text file ({file.resolve()} does not exist)"
        )
