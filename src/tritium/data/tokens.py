"""Pretraining data: a corpus tokenized once into memory-mapped token files.

Documents come from text, reST, Markdown, HTML, jsonl and parquet files, folders and globs of
them, Debian documentation packages (``.deb``, read in Python) and ``hf:`` datasets. Each is
tokenized once, an end-of-text token after it, and whole documents go either to training or to
validation, by a seeded hash of their index (so the split does not depend on batch sizes or on
how far a run got, and no document is cut in two).

A token folder holds::

    train.bin, val.bin   raw little-endian token ids, uint16 when every id fits, else uint32
    tokens.json          format, dtype, vocabulary size, eos id, tokenizer, per-split counts and
                         sha256, the sources
    tokenizer/           the tokenizer that made them (save_pretrained): the folder stands alone

``TokenFolder.open`` maps the files without reading them, so a corpus larger than memory still
trains; only the sequences handed to the trainer are copied (to int64).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
from torch import Tensor

from ..utils.io import atomic_directory, atomic_write_json
from .contamination import check_documents, checked_splits, file_memo_key
from .documents import TrainDataError, eos_id as _eos_id, expand_sources, iter_documents  # noqa: F401  (expand_sources: public here before)

FORMAT = "tritium-tokens-1"
META_FILE = "tokens.json"
TOKENIZER_DIR = "tokenizer"
SPLITS = ("train", "val")
SPLIT_FILES = {"train": "train.bin", "val": "val.bin"}

_ENCODE_BATCH = 64  # documents per tokenizer call: fast tokenizers encode a batch on several threads


# --------------------------------------------------------------------------- the split


def _split_score(seed: int, index: int) -> float:
    """A uniform number in [0, 1) fixed by (seed, document index): below val_fraction means validation."""
    digest = hashlib.blake2b(f"{seed}:{index}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2**64


def check_val_fraction(val_fraction, name: str = "val_fraction") -> None:
    """The share of documents held out for validation; ``name`` is the setting's (or its flag's) in the error."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0 < val_fraction < 1:
        raise TrainDataError(f"{name} must be between 0 and 1 (exclusive), got {val_fraction!r}: it is the share of "
                             "documents held out for validation, e.g. 0.01")


def _numbered_documents(documents: Iterable[str]) -> Iterator[tuple[int, str]]:
    """(index, text) of the non-empty documents: empty ones get no index and no end-of-text token."""
    index = 0
    for doc in documents:
        if doc.strip():
            yield index, doc
            index += 1


def training_documents(sources: Iterable[str], val_fraction: float = 0.01, seed: int = 0,
                       text_field: str = "text", data_path=None) -> Iterator[str]:
    """The documents ``ingest`` puts in the training split (bar the rare one it moves to fill an empty
    validation split): what a tokenizer should learn from, so validation text stays unseen."""
    check_val_fraction(val_fraction)
    for index, doc in _numbered_documents(iter_documents(sources, text_field, data_path)):
        if _split_score(seed, index) >= val_fraction:
            yield doc


def train_tokenizer(documents: Iterable[str], vocab_size: int, progress: bool = False):
    """A byte-level BPE tokenizer of ``vocab_size`` tokens learnt from ``documents``; ``<|endoftext|>`` ends each."""
    from ..models.tiny import train_byte_level_bpe

    check_bpe_vocab_size(vocab_size)
    tokenizer = train_byte_level_bpe(documents, vocab_size, show_progress=progress)
    tokenizer.name_or_path = f"byte-level BPE, {len(tokenizer)} tokens, trained on the corpus"
    return tokenizer


def check_bpe_vocab_size(vocab_size, name: str = "vocab_size") -> None:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 300:
        raise TrainDataError(f"a byte-level BPE vocabulary needs more than its 256 bytes and end-of-text token: "
                             f"{name} {vocab_size!r}, use e.g. 8192")


# --------------------------------------------------------------------------- writing


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 while every id (0 .. vocab_size-1) fits in 16 bits, else uint32; little-endian either way."""
    return np.dtype("<u2") if vocab_size <= 2**16 else np.dtype("<u4")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()


def _move_last_document(folder: Path, last: dict, counts: dict, dtype: np.dtype) -> None:
    """Move the final document of one split to the end of the other (a truncate and an append)."""
    src, dst = folder / SPLIT_FILES[last["split"]], folder / SPLIT_FILES[last["to"]]
    with open(src, "r+b") as f:
        f.seek(last["start"] * dtype.itemsize)
        data = f.read()
        f.truncate(last["start"] * dtype.itemsize)
    with open(dst, "ab") as f:
        f.write(data)
    n = len(data) // dtype.itemsize
    counts[last["split"]]["tokens"] -= n
    counts[last["split"]]["documents"] -= 1
    counts[last["to"]]["tokens"] += n
    counts[last["to"]]["documents"] += 1


def _source_record(source: str) -> str:
    path = Path(os.path.expandvars(str(source))).expanduser()
    return str(path.resolve()) if path.exists() else str(source)


def ingest(sources: Iterable[str] | str, out_dir, tokenizer, val_fraction: float = 0.01, seed: int = 0,
           text_field: str = "text", progress: bool = True, tokenizer_name: str | None = None,
           data_path=None) -> "TokenFolder":
    """Tokenize every document of ``sources`` once into the token folder ``out_dir``; returns it opened.

    Documents are streamed; only one batch of them is in memory at a time. A document goes to
    validation when its seeded hash falls below ``val_fraction``. With two documents or more both
    splits get at least one: if the hash sent none to one split, the last document moves there.
    The folder appears whole or not at all. Text holding an evaluation split is refused before any
    tokenizing; ``tokens.json`` records which splits the documents were compared with (``data_path``: the
    folder of the evaluation data, default ``$TRITIUM_DATA``).
    """
    from ..utils.progress import progress_bar

    sources = [sources] if isinstance(sources, (str, os.PathLike)) else [str(s) for s in sources]
    check_val_fraction(val_fraction)
    expand_sources(sources)  # a missing file fails here, before the folder is touched
    out_dir = Path(out_dir).expanduser()
    check_token_output(out_dir)
    eos = _eos_id(tokenizer)
    vocab_size = len(tokenizer)
    dtype = token_dtype(vocab_size)
    counts = {s: {"tokens": 0, "documents": 0} for s in SPLITS}
    last = None  # where the latest document went, should a split end up empty
    with atomic_directory(out_dir) as tmp:
        files = {s: open(tmp / SPLIT_FILES[s], "wb") for s in SPLITS}
        bar = progress_bar(desc="tokenizing", unit="doc", enabled=progress)
        try:
            batch: list[tuple[int, str]] = []
            docs = _numbered_documents(iter_documents(sources, text_field, data_path))
            while True:
                batch = [pair for _, pair in zip(range(_ENCODE_BATCH), docs)]
                if not batch:
                    break
                encoded = tokenizer([doc for _, doc in batch], add_special_tokens=False, verbose=False).input_ids
                for (index, _), ids in zip(batch, encoded):
                    ids = np.asarray(ids + [eos], dtype=np.int64)
                    if int(ids.max()) >= vocab_size or int(ids.min()) < 0:
                        raise TrainDataError(f"the tokenizer produced id {int(ids.max())}, outside its own "
                                             f"{vocab_size} tokens: the tokenizer is inconsistent")
                    split = "val" if _split_score(seed, index) < val_fraction else "train"
                    last = {"split": split, "start": counts[split]["tokens"],
                            "to": "train" if split == "val" else "val"}
                    files[split].write(ids.astype(dtype).tobytes())
                    counts[split]["tokens"] += ids.size
                    counts[split]["documents"] += 1
                bar.update(len(batch))
                bar.set_postfix(tokens=counts["train"]["tokens"] + counts["val"]["tokens"])
        finally:
            bar.close()
            for f in files.values():
                f.close()
        n_docs = counts["train"]["documents"] + counts["val"]["documents"]
        if n_docs < 2:
            raise TrainDataError(f"the data holds {n_docs} non-empty document(s); a validation split needs at least "
                                 "2 whole documents: add text, or split a long text into several files or jsonl rows")
        if counts[last["to"]]["documents"] == 0:
            _move_last_document(tmp, last, counts, dtype)
        for split in SPLITS:
            counts[split]["sha256"] = _sha256(tmp / SPLIT_FILES[split])
        tokenizer.save_pretrained(tmp / TOKENIZER_DIR)
        meta = {"format": FORMAT, "dtype": dtype.name, "byte_order": "little", "vocab_size": vocab_size,
                "eos_id": eos, "tokenizer": tokenizer_name or getattr(tokenizer, "name_or_path", "") or
                type(tokenizer).__name__, "splits": counts, "val_fraction": val_fraction, "seed": seed,
                "text_field": text_field, "sources": [_source_record(s) for s in sources],
                "test_split_check": checked_splits(data_path)}
        atomic_write_json(tmp / META_FILE, meta)
    return TokenFolder.open(out_dir)


def check_token_output(out_dir) -> None:
    """A token folder is written new, or over an earlier token folder (replaced whole), never over other files."""
    out_dir = Path(out_dir).expanduser()
    if out_dir.exists() and not (out_dir / META_FILE).is_file() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise TrainDataError(f"{out_dir} exists and is not a token folder: choose a new or empty folder for --out")


# --------------------------------------------------------------------------- reading


@dataclass
class TokenFolder:
    """A token folder written by ``ingest``; the token files are memory-mapped, never read whole."""

    path: Path
    meta: dict

    @staticmethod
    def is_folder(path) -> bool:
        return (Path(os.path.expandvars(str(path))).expanduser() / META_FILE).is_file()

    @classmethod
    def open(cls, path) -> "TokenFolder":
        """Open and check a token folder: its tokens.json and that each file holds the tokens it announces."""
        path = Path(os.path.expandvars(str(path))).expanduser()
        meta_path = path / META_FILE
        if not meta_path.is_file():
            raise TrainDataError(f"{path} is not a token folder (no {META_FILE}): make one with `tritium data ingest`")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise TrainDataError(f"{meta_path} is corrupt ({err}): run `tritium data ingest` again") from err
        if not isinstance(meta, dict) or meta.get("format") != FORMAT:
            raise TrainDataError(f"{meta_path} is not a {FORMAT} description (format "
                                 f"{meta.get('format') if isinstance(meta, dict) else None!r}): ingest again")
        folder = cls(path, meta)
        for split in SPLITS:
            file = path / SPLIT_FILES[split]
            expected = folder.n_tokens(split) * folder.dtype.itemsize
            if not file.is_file():
                raise TrainDataError(f"{file} is missing from the token folder {path}: run `tritium data ingest` again")
            if file.stat().st_size != expected:
                raise TrainDataError(
                    f"{file} is corrupt or incomplete: {file.stat().st_size} bytes, but {META_FILE} announces "
                    f"{folder.n_tokens(split)} {folder.dtype.name} tokens ({expected} bytes); run `tritium data "
                    f"ingest` again")
        return folder

    @property
    def vocab_size(self) -> int:
        return int(self.meta["vocab_size"])

    @property
    def eos_id(self) -> int:
        return int(self.meta["eos_id"])

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.meta["dtype"]).newbyteorder("<")

    def n_tokens(self, split: str = "train") -> int:
        return int(self.meta["splits"][split]["tokens"])

    def n_documents(self, split: str = "train") -> int:
        return int(self.meta["splits"][split]["documents"])

    def tokenizer(self):
        from transformers import AutoTokenizer

        folder = self.path / TOKENIZER_DIR
        if not folder.is_dir():
            raise TrainDataError(f"{folder} is missing: the token folder lost its tokenizer; ingest again")
        return AutoTokenizer.from_pretrained(str(folder))

    def tokens(self, split: str = "train") -> Tensor:
        """The split as a 1-D uint16/uint32 tensor over the memory-mapped file (no copy).

        torch has few kernels for these types: take ``.long()`` of the slice you compute with.
        """
        if split not in SPLITS:
            raise TrainDataError(f"a token folder has the splits {SPLITS}, not {split!r}")
        if self.n_tokens(split) == 0:
            return torch.empty(0, dtype=torch.int64)
        # copy-on-write: a writable array (torch wants one) whose writes would never reach the file
        array = np.memmap(self.path / SPLIT_FILES[split], dtype=self.dtype, mode="c", shape=(self.n_tokens(split),))
        return torch.from_numpy(array)

    def train_tokens(self) -> Tensor:
        return self.tokens("train")

    def val_tokens(self) -> Tensor:
        return self.tokens("val")

    def sequences(self, seqlen: int, split: str = "train") -> Tensor:
        """``[n, seqlen]`` int64 windows of the split; the tail that fills none is dropped.

        This copies the windows into an int64 tensor, which the miniature corpora afford (a few
        million tokens); a large corpus would index the memory map batch by batch instead.
        """
        n = self.check_sequences(seqlen, split)
        array = np.memmap(self.path / SPLIT_FILES[split], dtype=self.dtype, mode="r", shape=(n * seqlen,))
        return torch.from_numpy(array.astype(np.int64).reshape(n, seqlen))

    def check_sequences(self, seqlen: int, split: str = "train") -> int:
        """How many whole sequences of ``seqlen`` the split holds; none is an error that says what to change."""
        if seqlen < 2:
            raise TrainDataError(f"seqlen must be at least 2 tokens, got {seqlen}")
        total = self.n_tokens(split)
        if total < seqlen:
            fix = "raise --val-fraction, " if split == "val" else ""
            raise TrainDataError(
                f"the {split} split of {self.path} has {total} tokens, fewer than one sequence of {seqlen}: "
                f"{fix}add text (`tritium data ingest` more sources) or lower seqlen to at most {total}")
        return total // seqlen

    def train_sequences(self, seqlen: int) -> Tensor:
        return self.sequences(seqlen, "train")

    def val_sequences(self, seqlen: int) -> Tensor:
        return self.sequences(seqlen, "val")

    def check_vocab(self, model_or_vocab_size) -> None:
        """Refuse a model whose embedding has fewer rows than the folder has token ids."""
        if isinstance(model_or_vocab_size, int):
            vocab = model_or_vocab_size
        else:
            vocab = getattr(getattr(model_or_vocab_size, "config", None), "vocab_size", None)
            if vocab is None:
                vocab = model_or_vocab_size.get_input_embeddings().num_embeddings
        if int(vocab) < self.vocab_size:
            raise TrainDataError(
                f"{self.path} was tokenized with {self.meta.get('tokenizer')!r}, a vocabulary of {self.vocab_size} "
                f"tokens, but the model has only {vocab}: build the model with vocab_size ≥ {self.vocab_size}, or "
                f"ingest the text again with the model's tokenizer (--tokenizer)")

    def check_tokenizer(self, tokenizer) -> None:
        """Refuse a tokenizer other than the folder's: its ids would mean other words."""
        if len(tokenizer) != self.vocab_size or tokenizer.eos_token_id != self.eos_id:
            raise TrainDataError(
                f"{self.path} was tokenized with {self.meta.get('tokenizer')!r} ({self.vocab_size} tokens, eos "
                f"{self.eos_id}), not with this tokenizer ({len(tokenizer)} tokens, eos {tokenizer.eos_token_id}): "
                f"use the folder's own (TokenFolder.open(path).tokenizer()) or ingest again with this one")

    def verify(self) -> None:
        """Read every token: the checksums must match tokens.json and every id must be in the vocabulary."""
        for split in SPLITS:
            file = self.path / SPLIT_FILES[split]
            if _sha256(file) != self.meta["splits"][split].get("sha256"):
                raise TrainDataError(f"{file} does not match the checksum in {META_FILE}: it was changed or "
                                     f"damaged; run `tritium data ingest` again")
            tokens = self.tokens(split).numpy()  # torch has few kernels for uint16/uint32
            if tokens.size and int(tokens.max()) >= self.vocab_size:
                raise TrainDataError(f"{file} holds token id {int(tokens.max())}, outside the vocabulary of "
                                     f"{self.vocab_size}: ingest again")

    def summary(self) -> str:
        lines = [f"{self.path}: {self.dtype.name} tokens, vocabulary {self.vocab_size}, tokenizer "
                 f"{self.meta.get('tokenizer')!r}"]
        for split in SPLITS:
            size = (self.path / SPLIT_FILES[split]).stat().st_size
            lines.append(f"  {split:5s} {self.n_documents(split):>8,d} documents {self.n_tokens(split):>12,d} tokens "
                         f"{size / 2**20:>9.1f} MB")
        return "\n".join(lines)


_DECODE_BLOCK = 1 << 20  # tokens decoded at a time when a token folder's text must be checked


def check_token_folder(folder: TokenFolder, data_path=None) -> None:
    """Refuse a token folder whose training split holds an evaluation split.

    ``ingest`` compares the documents with the evaluation splits before tokenizing and records which
    ones in ``tokens.json``; a folder compared with every split found here now is trusted. Another (made
    by an older tritium, or where fewer splits were available) has its training tokens decoded and checked.
    """
    current = checked_splits(data_path)
    recorded = folder.meta.get("test_split_check")
    if not current or (isinstance(recorded, list) and all(split in recorded for split in current)):
        return
    tokenizer = folder.tokenizer()
    tokens = folder.train_tokens()

    def blocks() -> Iterator[str]:
        for start in range(0, tokens.numel(), _DECODE_BLOCK):
            yield tokenizer.decode(tokens[start : start + _DECODE_BLOCK].tolist(), skip_special_tokens=True)

    memo = f"tokens:{folder.meta['splits']['train'].get('sha256') or file_memo_key(folder.path / SPLIT_FILES['train'])}"
    check_documents(blocks(), f"the training split of the token folder {folder.path.resolve()}", data_path,
                    "training", memo_key=memo, continuous=True)


def load_tokenizer_spec(spec: str):
    """A tokenizer from a token folder, a tokenizer folder, or a model (named default, HF folder, .gguf, hub id)."""
    return tokenizer_loader(spec)()


def tokenizer_loader(spec: str):
    """What loads the tokenizer ``spec`` names, found without loading it: a spec that names nothing fails here."""
    from transformers import AutoTokenizer

    from ..models.loader import load_tokenizer, resolve_model_source

    path = Path(os.path.expandvars(spec)).expanduser()
    if TokenFolder.is_folder(path):
        return TokenFolder.open(path).tokenizer
    if path.is_dir() and not (path / "config.json").is_file() and \
            any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json")):
        return lambda: AutoTokenizer.from_pretrained(str(path))
    source = resolve_model_source(spec)
    return lambda: load_tokenizer(source)
