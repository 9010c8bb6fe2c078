"""Calibration samples: random windows of a validation text, never of a test split."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..utils.errors import TritiumError
from ..utils.io import read_utf8
from .contamination import check_text
from .sources import DATASETS, load_text_rows


class CalibrationError(TritiumError, ValueError):
    """The calibration source or its size cannot work; the message says what to change."""


def calibration_text(source: str, path: str | os.PathLike | None = None) -> str:
    """``source`` is ``<dataset>-<split>`` (e.g. ``wikitext2-valid``) or a text file.

    Either way the text is compared with the splits tritium evaluates on, so a test split under
    another name or inside another file is refused too (:mod:`tritium.data.contamination`)."""
    text, what = _read_calibration_text(source, path)
    check_text(text, what, path, role="calibrating")
    return text


def _read_calibration_text(source: str, path) -> tuple[str, str]:
    """The text and how an error names it."""
    file = Path(source).expanduser()
    if file.is_file():
        return read_utf8(file, "calibration file"), f"the calibration file {file.resolve()}"
    name, _, split = source.rpartition("-")
    if name not in DATASETS:
        raise CalibrationError(
            f"calibration source {source!r} is neither a text file nor '<dataset>-<split>' "
            f"with a known data set ({', '.join(DATASETS)})"
        )
    if split == "test":
        raise CalibrationError(
            f"calibration source {source!r} is a test split: calibrating on the evaluation data inflates "
            f"every score. Use {name}-valid or a file of your own."
        )
    return "\n\n".join(load_text_rows(name, split, path)), f"calibration source {source!r}"


def calibration_samples(tokenizer, source: str = "wikitext2-valid", n_samples: int = 128, seqlen: int = 2048,
                        seed: int = 0, path: str | os.PathLike | None = None) -> torch.Tensor:
    """``[n_samples, seqlen]`` token windows drawn uniformly from the tokenized source (GPTQ's sampler)."""
    if n_samples < 1 or seqlen < 2:
        raise CalibrationError(f"need at least 1 sample of at least 2 tokens, got n_samples={n_samples}, seqlen={seqlen}")
    ids = tokenizer(calibration_text(source, path), return_tensors="pt").input_ids[0]
    if ids.numel() <= seqlen:
        raise CalibrationError(
            f"calibration source {source!r} has {ids.numel()} tokens, fewer than one sample of {seqlen}: "
            "use a longer text or a shorter --calib-seqlen"
        )
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, ids.numel() - seqlen, (n_samples,), generator=generator)
    return torch.stack([ids[s : s + seqlen] for s in starts.tolist()])
