"""The data ingest job: tokenize a corpus once into a token folder. ``tritium data ingest`` builds an
:class:`IngestJob` from its flags (:mod:`tritium.cli.data`) and calls :func:`ingest_corpus`; Python code
does the same::

    from tritium.jobs import IngestJob, ingest_corpus
    ingest_corpus(IngestJob(sources=["docs/"], out="tokens/docs", train_tokenizer=4096)).folder.summary()
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data.tokens import TokenFolder

DEFAULT_TOKENIZER = "smollm2-135m"


@dataclass(kw_only=True)
class IngestJob:
    """What to tokenize and how; the field names are the CLI's flags."""

    sources: list[str]  # files, folders, globs, .deb packages or hf: specs
    out: str  # the token folder to write (replaced whole if it is one already)
    tokenizer: str | None = None  # default DEFAULT_TOKENIZER
    train_tokenizer: int | None = None  # learn a byte-level BPE of this many tokens instead
    val_fraction: float = 0.01
    seed: int = 0
    text_field: str = "text"
    no_progress: bool = False


@dataclass
class IngestResult:
    folder: TokenFolder
    seconds: float
    tokenizer_seconds: float  # of those, loading or learning the tokenizer


def ingest_corpus(job: IngestJob) -> IngestResult:
    from ..data.tokens import ingest, load_tokenizer_spec, train_tokenizer, training_documents
    from ..utils.runs import claim_output
    from .preflight import preflight_ingest

    preflight_ingest(job)  # before any tokenizer is loaded or learnt
    # A lock beside --out stops a second ingest into the same folder (the later rename would silently win);
    # an existing token folder is replaced whole, as before, and ingest refuses any other folder.
    claim_output(job.out, "data ingest", overwrite=True)
    start = time.perf_counter()
    if job.train_tokenizer:
        print(f"tritium: learning a {job.train_tokenizer}-token byte-level BPE from the training documents",
              file=sys.stderr)
        tokenizer = train_tokenizer(training_documents(job.sources, job.val_fraction, job.seed, job.text_field),
                                    job.train_tokenizer, progress=not job.no_progress)
        name = tokenizer.name_or_path
    else:
        name = job.tokenizer or DEFAULT_TOKENIZER
        tokenizer = load_tokenizer_spec(name)
    tokenizer_seconds = time.perf_counter() - start
    folder = ingest(job.sources, job.out, tokenizer, val_fraction=job.val_fraction, seed=job.seed,
                    text_field=job.text_field, progress=not job.no_progress, tokenizer_name=name)
    return IngestResult(folder, time.perf_counter() - start, tokenizer_seconds)
