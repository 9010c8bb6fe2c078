"""Refuse calibration and training text that holds an evaluation split, whatever its file is called.

The name checks (``wikitext2-test``, ``.../wikitext-2-raw-v1/wiki.test.raw``) miss a renamed copy, a
relative path or a test split pasted into another file. This module compares the text itself with
every split tritium evaluates on (WikiText-2 and PTB test, LAMBADA, the zero-shot tasks' evaluation
splits), by word n-grams:

* normalization: lowercase, keep only the words (``\\w+``), so WikiText's spaced punctuation
  (`` , `` `` @-@ ``), re-wrapped lines or a detokenized copy still match;
* every run of :data:`NGRAM` consecutive words is hashed to 64 bits (the hashes of the split files are
  built once and cached on disk, keyed by the files' paths, sizes and modification times);
* text is refused when it shares a verbatim passage with a split (:data:`MIN_RUN` consecutive
  matching n-grams, about 32 words) or when many scattered n-grams match (at least
  :data:`MIN_MATCHES` and :data:`MIN_SHARE` of its n-grams: e.g. a list of HellaSwag contexts).

N-grams that the sanctioned splits of the same data sets also hold (WikiText-2 and PTB validation,
the ARC dev sets) are left out of the fingerprints: PTB's validation split repeats a block of WSJ
boilerplate from its test split, and using the validation split is what the refusal recommends.

Without any evaluation split on this machine (no ``$TRITIUM_DATA``) the check has nothing to compare
with and passes; the name checks still apply.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import numpy as np

from ..utils.errors import TritiumError
from ..utils.io import atomic_write_bytes, read_utf8
from .sources import DATASETS, find_data_file

NGRAM = 13  # words per n-gram: long enough that independent texts share none (0 in WikiText-2 valid vs test)
MIN_RUN = 20  # consecutive matching n-grams: a verbatim passage of NGRAM + MIN_RUN - 1 = 32 words
MIN_MATCHES = 100  # scattered matches count only when there are this many ...
MIN_SHARE = 0.01  # ... and they are this share of the text's n-grams
FORMAT_VERSION = 1  # bump when the normalization or hashing changes: older caches are then ignored
CACHE_ENV = "TRITIUM_CACHE"

# The split each data set is evaluated on, by tritium's perplexity (wikitext2, ptb) and zero-shot scorers.
EVALUATED_SPLITS: dict[str, str] = {
    "wikitext2": "test",
    "ptb": "test",
    "lambada_openai": "test",
    "piqa": "valid",
    "arc_easy": "test",
    "arc_challenge": "test",
    "hellaswag": "valid",
    "winogrande": "valid",
    "boolq": "valid",
    "openbookqa": "test",
}

assert len(EVALUATED_SPLITS) <= 32, "a hash's split mask is 32 bits"

_WORD = re.compile(r"\w+")
_MULTIPLIER = np.uint64(0x100000001B3)  # odd: the polynomial hash of n word hashes stays a bijection per word
_PIECE_CHARS = 1 << 22  # a long text is scanned in pieces of about this many characters (bounded memory)


class EvalSplitOverlapError(TritiumError, ValueError):
    """Calibration or training text holds (part of) a split that tritium evaluates on."""


# --------------------------------------------------------------------------- hashing


_word_hashes: dict[str, int] = {}


def _word_hash(word: str) -> int:
    value = _word_hashes.get(word)
    if value is None:
        if len(_word_hashes) > 2_000_000:  # a huge corpus's vocabulary: keep the memo bounded
            _word_hashes.clear()
        value = int.from_bytes(hashlib.blake2b(word.encode("utf-8"), digest_size=8).digest(), "little")
        _word_hashes[word] = value
    return value


def normalized_words(text: str) -> list[str]:
    """The words the comparison sees: lowercased ``\\w+`` runs, punctuation and spacing dropped."""
    return _WORD.findall(text.lower())


def ngram_hashes(words: list[str], n: int = NGRAM) -> np.ndarray:
    """64-bit hash of every run of ``n`` consecutive words (``len(words) - n + 1`` of them)."""
    count = len(words) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    per_word = np.fromiter((_word_hash(w) for w in words), dtype=np.uint64, count=len(words))
    hashes = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):  # arithmetic modulo 2**64 is the point
        for offset in range(n):
            hashes = hashes * _MULTIPLIER + per_word[offset : offset + count]
    return hashes


def text_ngram_hashes(text: str, n: int = NGRAM) -> np.ndarray:
    return ngram_hashes(normalized_words(text), n)


# --------------------------------------------------------------------------- the evaluation splits


@dataclass(frozen=True)
class SplitFile:
    dataset: str
    split: str
    path: str

    @property
    def label(self) -> str:
        return f"{self.dataset} {self.split} split"

    def identity(self) -> dict:
        stat = os.stat(self.path)
        return {"dataset": self.dataset, "split": self.split, "path": self.path, "size": stat.st_size,
                "mtime_ns": stat.st_mtime_ns}


def _json_strings(value) -> Iterable[str]:
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from _json_strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from _json_strings(item)


def split_segments(path: str | os.PathLike) -> Iterable[str]:
    """The texts of one split file: a text file whole, or every string value of every jsonl record
    (each field on its own, so no n-gram joins a question to its answer)."""
    path = Path(path)
    if path.suffix == ".jsonl":
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield from _json_strings(json.loads(line))
    else:
        yield read_utf8(path, "evaluation split file")


def segments_ngram_hashes(segments: Iterable[str], n: int = NGRAM) -> np.ndarray:
    """The n-gram hashes of many short texts at once; no n-gram spans two of them."""
    words: list[str] = []
    segment_ids: list[int] = []
    for index, segment in enumerate(segments):
        found = normalized_words(segment)
        if len(found) >= n:
            words += found
            segment_ids += [index] * len(found)
    hashes = ngram_hashes(words, n)
    if hashes.size == 0:
        return hashes
    ids = np.asarray(segment_ids)
    return hashes[ids[: hashes.size] == ids[n - 1 :]]  # first and last word in the same segment


def _file_hashes(path: str) -> np.ndarray:
    return np.unique(segments_ngram_hashes(split_segments(path)))


def _local_splits(data_path) -> tuple[list[SplitFile], list[SplitFile]]:
    """(evaluated, sanctioned) split files found locally; sanctioned ones are the data sets' other text splits."""
    folder = data_path if data_path is not None and Path(data_path).is_dir() else None
    evaluated, sanctioned = [], []
    for name, eval_split in EVALUATED_SPLITS.items():
        for split in DATASETS[name].files:
            if split.endswith("-labels"):
                continue
            found = find_data_file(name, split, folder)
            if found is not None:
                entry = SplitFile(name, split, str(found.resolve()))
                (evaluated if split == eval_split else sanctioned).append(entry)
    return evaluated, sanctioned


def cache_root() -> Path:
    """``$TRITIUM_CACHE/test-splits`` (default ``~/.cache/tritium/test-splits``)."""
    root = os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tritium"
    return Path(root).expanduser() / "test-splits"


@dataclass
class Fingerprints:
    """The n-gram hashes of the evaluation splits: sorted unique ``hashes``, and per hash a bit mask
    of the ``splits`` (bit i = ``splits[i]``) that hold it."""

    splits: list[SplitFile]
    hashes: np.ndarray
    masks: np.ndarray
    key: str
    cache_file: Path | None = None
    built: bool = False  # True when this process built them (False: read from the cache)

    def lookup(self, hashes: np.ndarray) -> np.ndarray:
        """The split mask of every hash (0 where no evaluation split has it)."""
        if self.hashes.size == 0 or hashes.size == 0:
            return np.zeros(hashes.shape, dtype=self.masks.dtype)
        index = np.minimum(np.searchsorted(self.hashes, hashes), self.hashes.size - 1)
        return np.where(self.hashes[index] == hashes, self.masks[index], 0).astype(self.masks.dtype)


def _build(evaluated: list[SplitFile], sanctioned: list[SplitFile], key: str) -> Fingerprints:
    per_split = [_file_hashes(s.path) for s in evaluated]
    allowed = np.unique(np.concatenate([_file_hashes(s.path) for s in sanctioned] or [np.empty(0, np.uint64)]))
    hashes = np.concatenate(per_split) if per_split else np.empty(0, dtype=np.uint64)
    bits = np.concatenate([np.full(h.size, 1 << i, dtype=np.uint32) for i, h in enumerate(per_split)]
                          or [np.empty(0, np.uint32)])
    keep = ~np.isin(hashes, allowed)
    hashes, bits = hashes[keep], bits[keep]
    order = np.argsort(hashes, kind="stable")
    hashes, bits = hashes[order], bits[order]
    if hashes.size:
        starts = np.flatnonzero(np.concatenate([[True], hashes[1:] != hashes[:-1]]))
        masks = np.bitwise_or.reduceat(bits, starts)
        hashes = hashes[starts]
    else:
        masks = bits
    return Fingerprints(evaluated, hashes, masks, key, built=True)


_loaded: dict[str, Fingerprints] = {}


def load_fingerprints(data_path=None) -> Fingerprints | None:
    """The fingerprints of every evaluation split found (an explicit data folder, then ``$TRITIUM_DATA``),
    read from the cache or built and cached; ``None`` when no evaluation split is on this machine."""
    evaluated, sanctioned = _local_splits(data_path)
    if not evaluated:
        return None
    identity = {"version": FORMAT_VERSION, "ngram": NGRAM,
                "evaluated": [s.identity() for s in evaluated], "sanctioned": [s.identity() for s in sanctioned]}
    key = hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:24]
    if key in _loaded:
        return _loaded[key]
    cache_file = cache_root() / f"fingerprints-{key}.npz"
    fingerprints = None
    if cache_file.is_file():
        try:
            with np.load(cache_file, allow_pickle=False) as stored:
                if json.loads(str(stored["identity"])) == identity:
                    fingerprints = Fingerprints(evaluated, stored["hashes"], stored["masks"], key, cache_file)
        except (OSError, ValueError, KeyError):  # a damaged cache file is rebuilt, never trusted
            fingerprints = None
    if fingerprints is None:
        fingerprints = _build(evaluated, sanctioned, key)
        buffer = io.BytesIO()
        np.savez(buffer, hashes=fingerprints.hashes, masks=fingerprints.masks, identity=json.dumps(identity))
        try:
            atomic_write_bytes(cache_file, buffer.getvalue())
            fingerprints.cache_file = cache_file
        except OSError:  # a read-only cache folder costs the rebuild next time, nothing else
            pass
    _loaded[key] = fingerprints
    return fingerprints


# --------------------------------------------------------------------------- scanning a text


@dataclass
class SplitOverlap:
    """How much of the scanned text one evaluation split holds."""

    split: SplitFile
    matched: int = 0  # n-grams of the text found in the split
    longest_run: int = 0  # most consecutive matching n-grams
    longest_at: int = 0  # word offset where that run starts
    excerpt: str = ""  # its first words
    total: int = 0  # n-grams scanned (set by the scanner)

    @property
    def share(self) -> float:
        return self.matched / self.total if self.total else 0.0

    @property
    def refused(self) -> bool:
        return self.longest_run >= MIN_RUN or (self.matched >= MIN_MATCHES and self.share >= MIN_SHARE)


@dataclass
class OverlapScan:
    """Feed texts (``feed`` pieces of one document, ``end_document`` between documents); read ``overlaps``."""

    fingerprints: Fingerprints
    total: int = 0
    _tail: list[str] = field(default_factory=list)  # the last NGRAM-1 words: n-grams span piece boundaries
    _position: int = 0  # word offset of the current piece's first n-gram
    _open: dict[int, tuple[int, int, str]] = field(default_factory=dict)  # split bit -> (run length, start, excerpt)
    _stats: dict[int, SplitOverlap] = field(default_factory=dict)

    def feed(self, text: str) -> None:
        words = self._tail + normalized_words(text)
        self._tail = words[-(NGRAM - 1):] if len(words) >= NGRAM - 1 else words
        hashes = ngram_hashes(words)
        if hashes.size == 0:
            return
        found = self.fingerprints.lookup(hashes)
        present = int(np.bitwise_or.reduce(found))
        for bit in list(self._open):  # a run open at the previous piece's end that this piece does not continue
            if not (present & (1 << bit)) or not found[0] & (1 << bit):
                self._close(bit)
        for bit in range(len(self.fingerprints.splits)):
            if present & (1 << bit):
                self._scan_split(bit, (found & (1 << bit)) != 0, words)
        self.total += hashes.size
        self._position += hashes.size

    def end_document(self) -> None:
        for bit in list(self._open):
            self._close(bit)
        self._tail = []

    def _stat(self, bit: int) -> SplitOverlap:
        if bit not in self._stats:
            self._stats[bit] = SplitOverlap(self.fingerprints.splits[bit])
        return self._stats[bit]

    def _scan_split(self, bit: int, hit: np.ndarray, words: list[str]) -> None:
        stat = self._stat(bit)
        stat.matched += int(hit.sum())
        edges = np.diff(np.concatenate([[0], hit.astype(np.int8), [0]]))
        starts, ends = np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)
        for k, (start, end) in enumerate(zip(starts.tolist(), ends.tolist())):
            length, origin, excerpt = end - start, self._position + start, " ".join(words[start : start + 12])
            if k == 0 and start == 0 and bit in self._open:  # continues the run open at the last piece's end
                previous, origin, excerpt = self._open.pop(bit)
                length += previous
            if end == hit.size:  # may go on in the next piece
                self._open[bit] = (length, origin, excerpt)
            else:
                self._record(stat, length, origin, excerpt)

    def _close(self, bit: int) -> None:
        length, origin, excerpt = self._open.pop(bit)
        self._record(self._stat(bit), length, origin, excerpt)

    @staticmethod
    def _record(stat: SplitOverlap, length: int, origin: int, excerpt: str) -> None:
        if length > stat.longest_run:
            stat.longest_run, stat.longest_at, stat.excerpt = length, origin, excerpt

    def overlaps(self) -> list[SplitOverlap]:
        """Every split with a match, most matched first (open runs count as closed here)."""
        for bit in list(self._open):
            self._close(bit)
        for stat in self._stats.values():
            stat.total = self.total
        return sorted(self._stats.values(), key=lambda s: (-s.longest_run, -s.matched))


def _pieces(text: str) -> Iterable[str]:
    """A long text in pieces cut at line ends, so a big file is scanned in bounded memory."""
    start = 0
    while start < len(text):
        end = text.find("\n", start + _PIECE_CHARS)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


_ALTERNATIVES = {"wikitext2": "wikitext2-valid", "ptb": "ptb-valid"}


def _alternative(dataset: str) -> str:
    own = _ALTERNATIVES.get(dataset)
    general = "wikitext2-valid or ptb-valid (the validation splits) or text of your own"
    return f"{own}, or other text of your own" if own else general


def overlap_error(overlap: SplitOverlap, what: str, role: str) -> EvalSplitOverlapError:
    split = overlap.split
    passage = overlap.longest_run + NGRAM - 1 if overlap.longest_run else 0
    return EvalSplitOverlapError(
        f"{what} holds text of the {split.label} ({split.path}), which tritium evaluates on: "
        f"{overlap.matched:,} of its {overlap.total:,} {NGRAM}-word sequences ({overlap.share:.1%}) are in that split"
        + (f", the longest shared passage {passage:,} words from word {overlap.longest_at:,} "
           f"(\"{overlap.excerpt} ...\")" if passage else "")
        + f". {role.capitalize()} on an evaluation split inflates every score measured on it: "
          f"use {_alternative(split.dataset)} instead."
    )


_clean: set[tuple[str, str]] = set()  # (fingerprint key, memo key) of texts already found clean


def check_documents(documents: Iterable[str], what: str, data_path=None, role: str = "calibrating",
                    memo_key: str | None = None, continuous: bool = False) -> list[SplitOverlap]:
    """Refuse ``documents`` (an iterable of texts) that hold part of an evaluation split; return every
    overlap found below the thresholds. ``what`` names the source in the error ("calibration text x.txt"),
    ``role`` the use ("calibrating", "training"). A ``memo_key`` seen clean before skips the scan.
    ``continuous``: the texts are consecutive pieces of one stream (e.g. decoded token blocks)."""
    fingerprints = load_fingerprints(data_path)
    if fingerprints is None:
        return []
    if memo_key is not None and (fingerprints.key, memo_key) in _clean:
        return []
    scan = OverlapScan(fingerprints)
    for document in documents:
        for piece in _pieces(document):
            scan.feed(piece)
        if not continuous:
            scan.end_document()
    overlaps = scan.overlaps()
    for overlap in overlaps:
        if overlap.refused:
            raise overlap_error(overlap, what, role)
    if memo_key is not None:
        _clean.add((fingerprints.key, memo_key))
    return overlaps


def check_text(text: str, what: str, data_path=None, role: str = "calibrating") -> list[SplitOverlap]:
    """:func:`check_documents` for one text, remembered by its digest (a second check of it is free)."""
    digest = hashlib.blake2b(text.encode("utf-8", errors="surrogatepass"), digest_size=16).hexdigest()
    return check_documents([text], what, data_path, role, memo_key=f"text:{digest}")


def file_memo_key(path: str | os.PathLike, *extra) -> str:
    """A memo key for a file's content: its resolved path, size and modification time."""
    stat = os.stat(path)
    return ":".join(["file", str(Path(path).resolve()), str(stat.st_size), str(stat.st_mtime_ns), *map(str, extra)])


def checked_splits(data_path=None) -> list[dict]:
    """What a check against the local evaluation splits covers (recorded with a token folder)."""
    fingerprints = load_fingerprints(data_path)
    if fingerprints is None:
        return []
    return [{"dataset": s.dataset, "split": s.split, "size": os.stat(s.path).st_size} for s in fingerprints.splits]
