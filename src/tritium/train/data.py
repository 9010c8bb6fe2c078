"""Training data: packed token sequences from files, an HF dataset, or text sampled from the teacher.

Every source ends as a ``[n_sequences, seqlen]`` tensor of token ids. Documents are
tokenized, joined with an end-of-text token between them and cut into fixed-length
sequences (the tail that does not fill one is dropped), the packing of GPT-style
pretraining: no padding, every token trains.

The data-free mode (LLM-QAT) samples sequences from the teacher: the first token uniformly
from the vocabulary, the next few greedily, the rest from the teacher's distribution. The
samples are written in shards beside a manifest, so an interrupted generation resumes and
later runs reuse them; each shard's random stream depends only on (seed, shard index).
"""

from __future__ import annotations

import hashlib
import inspect
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterable

import torch
from torch import Tensor

from ..data.documents import (  # noqa: F401  (HF_PREFIX, TrainDataError: their names here before data/documents.py)
    HF_PREFIX,
    TrainDataError,
    eos_id,
    expand_sources,
    hf_documents,
    item_documents,
)
from ..utils.io import atomic_write_bytes, atomic_write_json

TEACHER_SOURCE = "teacher"

# --------------------------------------------------------------------------- reading documents






def check_training_sources(sources: Iterable[str], text_field: str = "text", data_path=None) -> None:
    """Refuse training data that holds an evaluation split, by its content whatever its name. Reads the
    text and tokenizes nothing, so it runs before any evaluation or training (``load_sequences`` calls it
    again; text found clean once is remembered)."""
    from ..data.contamination import check_documents, check_text, file_memo_key

    for source in sources:
        if source == TEACHER_SOURCE or (not source.startswith(HF_PREFIX) and TeacherCorpus.is_corpus(source)):
            continue  # sampled from the model itself
        if source.startswith(HF_PREFIX):
            check_documents(hf_documents(source, text_field), f"the training data {source!r}", data_path,
                            "training", memo_key=f"{source}:{text_field}")
        elif _is_token_folder(source):
            from ..data.tokens import TokenFolder, check_token_folder

            check_token_folder(TokenFolder.open(source), data_path)
        elif _dataset_split(source):
            from ..data.sources import load_text_rows

            name, split = _dataset_split(source)
            check_text("\n\n".join(load_text_rows(name, split, data_path)), f"the training source {source!r}",
                       data_path, "training")
        else:
            for file in expand_sources([source], data_path):  # refuses a test split by its name
                check_documents(item_documents(file, text_field), f"the training file {Path(file).resolve()}",
                                data_path, "training", memo_key=file_memo_key(file, text_field))


def _dataset_split(source: str) -> tuple[str, str] | None:
    """``wikitext2-valid`` → ("wikitext2", "valid") for a known data set; test splits are refused."""
    from ..data.sources import DATASETS

    name, _, split = source.rpartition("-")
    if name not in DATASETS or Path(source).exists():
        return None
    if split == "test":
        raise TrainDataError(f"{source!r} is a test split, which the perplexity evaluation reads: never train on it. "
                             f"Use {name}-valid or other text.")
    if split not in DATASETS[name].files:
        raise TrainDataError(f"{name} has no split {split!r}; it has {', '.join(DATASETS[name].files)}")
    return name, split








def tokenize_documents(tokenizer, documents: Iterable[str]) -> Tensor:
    """One 1-D stream of token ids, an end-of-text token after every non-empty document."""
    eos = eos_id(tokenizer)
    pieces: list[Tensor] = []
    for doc in documents:
        if not doc.strip():
            continue
        ids = tokenizer(doc, add_special_tokens=False).input_ids
        pieces.append(torch.tensor(ids + [eos], dtype=torch.long))
    if not pieces:
        raise TrainDataError("the training data holds no text (every document is empty)")
    return torch.cat(pieces)


def pack_tokens(stream: Tensor, seqlen: int, what: str = "the training data") -> Tensor:
    """``[n, seqlen]`` consecutive windows of ``stream``; the tail that fills no window is dropped."""
    if seqlen < 2:
        raise TrainDataError(f"seqlen must be at least 2 tokens, got {seqlen}")
    n = stream.numel() // seqlen
    if n == 0:
        raise TrainDataError(
            f"{what} has {stream.numel()} tokens, fewer than one sequence of {seqlen}: add text or lower seqlen"
        )
    return stream[: n * seqlen].view(n, seqlen).clone()


def _is_token_folder(source: str) -> bool:
    from ..data.tokens import TokenFolder

    return TokenFolder.is_folder(source)


def check_context(model, seqlen: int) -> None:
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    if context is not None and seqlen > context:
        raise TrainDataError(
            f"seqlen {seqlen} is longer than the model's context of {context} tokens: use seqlen ≤ {context}"
        )


def load_sequences(sources: list[str] | str, tokenizer, seqlen: int, text_field: str = "text",
                   model=None, data_path=None) -> Tensor:
    """Packed ``[n, seqlen]`` training sequences from files, folders, globs, ``hf:`` specs, a teacher corpus
    or a token folder of ``tritium data ingest`` (its train split; it must match ``tokenizer``)."""
    sources = [sources] if isinstance(sources, str) else list(sources)
    if not sources:
        raise TrainDataError("no training data given: pass text, jsonl or parquet files, an hf: dataset or 'teacher'")
    if model is not None:
        check_context(model, seqlen)
    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is not None and len(tokenizer) > vocab:
        raise TrainDataError(f"the tokenizer has {len(tokenizer)} tokens, more than the model's vocabulary of {vocab}")
    check_training_sources(sources, text_field, data_path)
    streams: list[Tensor] = []
    rows: list[Tensor] = []
    for source in sources:
        if source.startswith(HF_PREFIX):
            streams.append(tokenize_documents(tokenizer, hf_documents(source, text_field)))
        elif _is_token_folder(source):  # tokenized once by `tritium data ingest`
            from ..data.tokens import TokenFolder

            folder = TokenFolder.open(source)
            folder.check_tokenizer(tokenizer)
            if vocab is not None:
                folder.check_vocab(vocab)
            rows.append(folder.train_sequences(seqlen))
        elif TeacherCorpus.is_corpus(source):
            corpus = TeacherCorpus.open(source)
            if vocab is not None and corpus.manifest["vocab_size"] != vocab:
                raise TrainDataError(f"the teacher corpus {source} was sampled with a vocabulary of "
                                     f"{corpus.manifest['vocab_size']} tokens, the model has {vocab}")
            if corpus.seqlen == seqlen:
                rows.append(corpus.sequences())
            else:
                eos = torch.full((corpus.n_sequences, 1), eos_id(tokenizer), dtype=torch.long)
                streams.append(torch.cat([corpus.sequences(), eos], dim=1).flatten())
        elif _dataset_split(source):
            name, split = _dataset_split(source)
            from ..data.sources import load_text_rows

            # one document: the rows of a split are lines of one text (GPTQ joins them the same way)
            streams.append(tokenize_documents(tokenizer, ["\n\n".join(load_text_rows(name, split, data_path))]))
        else:
            docs = (doc for f in expand_sources([source], data_path) for doc in item_documents(f, text_field))
            streams.append(tokenize_documents(tokenizer, docs))
    if streams:
        rows.append(pack_tokens(torch.cat(streams), seqlen))
    sequences = torch.cat(rows)
    if vocab is not None and int(sequences.max()) >= vocab:
        raise TrainDataError(f"token id {int(sequences.max())} is outside the model's vocabulary of {vocab}")
    return sequences


# --------------------------------------------------------------------------- order and position


@dataclass
class SequenceSampler:
    """Which sequences each optimizer step reads: a fresh seeded permutation per epoch, and a cursor.

    Its state (epoch, position) goes into every checkpoint, so a resumed run reads what the
    uninterrupted one would have read.
    """

    n_sequences: int
    seed: int = 0
    epoch: int = 0
    position: int = 0
    _order: Tensor | None = field(default=None, repr=False)

    def _epoch_order(self) -> Tensor:
        if self._order is None:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._order = torch.randperm(self.n_sequences, generator=gen)
        return self._order

    def next_indices(self, count: int) -> Tensor:
        out = []
        while count > 0:
            order = self._epoch_order()
            take = min(count, self.n_sequences - self.position)
            out.append(order[self.position : self.position + take])
            self.position += take
            count -= take
            if self.position == self.n_sequences:
                self.epoch, self.position, self._order = self.epoch + 1, 0, None
        return torch.cat(out)

    def state_dict(self) -> dict:
        return {"n_sequences": self.n_sequences, "seed": self.seed, "epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        if state["n_sequences"] != self.n_sequences or state["seed"] != self.seed:
            raise TrainDataError(
                f"the checkpoint was made with {state['n_sequences']} training sequences (seed {state['seed']}), "
                f"this run has {self.n_sequences} (seed {self.seed}): resume with the same data and seed"
            )
        self.epoch, self.position, self._order = state["epoch"], state["position"], None


# --------------------------------------------------------------------------- data-free: sample from the teacher


@dataclass
class TeacherSamplingConfig:
    n_sequences: int = 256
    seqlen: int = 512
    seed: int = 0
    shard_size: int = 32  # sequences per shard file
    batch_size: int = 8  # sequences sampled together
    greedy_tokens: int = 3  # LLM-QAT: the first tokens after the random one are the teacher's top-1
    temperature: float = 1.0
    top_k: int | None = None

    def __post_init__(self):
        if self.n_sequences < 1 or self.seqlen < 2:
            raise TrainDataError(f"teacher sampling needs n_sequences ≥ 1 and seqlen ≥ 2, got {self.n_sequences}, "
                                 f"{self.seqlen}")
        if self.shard_size < 1 or self.batch_size < 1:
            raise TrainDataError("shard_size and batch_size must be positive")
        if self.temperature <= 0:
            raise TrainDataError(f"temperature must be positive, got {self.temperature}")


def model_fingerprint(model) -> str:
    """A short hash of the config and a few weights: a corpus belongs to the teacher that sampled it."""
    h = hashlib.sha256(json.dumps(model.config.to_dict(), sort_keys=True, default=str).encode())
    for _, p in list(model.named_parameters())[:3]:
        h.update(p.detach().flatten()[:256].float().numpy().tobytes())
    return h.hexdigest()[:16]


def _cache_kwarg(model) -> str:
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


@torch.no_grad()
def sample_from_teacher(model, batch: int, seqlen: int, generator: torch.Generator, candidate_ids: Tensor,
                        cfg: TeacherSamplingConfig) -> Tensor:
    """``[batch, seqlen]`` sequences: a random first token, ``greedy_tokens`` top-1 tokens, then sampling."""
    from transformers import DynamicCache

    device = next(model.parameters()).device
    first = candidate_ids[torch.randint(0, candidate_ids.numel(), (batch,), generator=generator)]
    tokens = torch.empty(batch, seqlen, dtype=torch.long)
    tokens[:, 0] = first
    cache = DynamicCache(config=model.config)
    kwarg = _cache_kwarg(model)
    step_input = first.view(batch, 1).to(device)
    for pos in range(1, seqlen):
        logits = model(step_input, use_cache=True, **{kwarg: cache}).logits[:, -1].float().cpu()
        if pos <= cfg.greedy_tokens:
            nxt = logits.argmax(-1)
        else:
            logits = logits / cfg.temperature
            if cfg.top_k:
                kth = torch.topk(logits, cfg.top_k, dim=-1).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            nxt = torch.multinomial(torch.softmax(logits, -1), 1, generator=generator).squeeze(1)
        tokens[:, pos] = nxt
        step_input = nxt.view(batch, 1).to(device)
    return tokens


class TeacherCorpus:
    """A folder of teacher-sampled token shards plus ``manifest.json``."""

    MANIFEST = "manifest.json"

    def __init__(self, folder: Path, manifest: dict):
        self.folder, self.manifest = folder, manifest

    @classmethod
    def is_corpus(cls, source: str) -> bool:
        return (Path(source).expanduser() / cls.MANIFEST).is_file()

    @classmethod
    def open(cls, folder) -> "TeacherCorpus":
        folder = Path(folder).expanduser()
        manifest = json.loads((folder / cls.MANIFEST).read_text())
        corpus = cls(folder, manifest)
        missing = [s for s in corpus.shard_names() if not (folder / s).is_file()]
        if missing:
            raise TrainDataError(f"the teacher corpus {folder} is incomplete ({len(missing)} shard(s) missing, e.g. "
                                 f"{missing[0]}): run the generation again to finish it")
        return corpus

    @property
    def seqlen(self) -> int:
        return self.manifest["sampling"]["seqlen"]

    @property
    def n_sequences(self) -> int:
        return self.manifest["sampling"]["n_sequences"]

    def shard_names(self) -> list[str]:
        size = self.manifest["sampling"]["shard_size"]
        return [f"shard-{i:05d}.safetensors" for i in range(-(-self.n_sequences // size))]

    def sequences(self) -> Tensor:
        from safetensors.torch import load_file

        parts = []
        for name in self.shard_names():
            try:
                parts.append(load_file(self.folder / name)["tokens"].long())
            except Exception as err:
                raise TrainDataError(f"{self.folder / name} is corrupt ({err}); delete it and generate again") from err
        return torch.cat(parts)


def generate_teacher_corpus(model, tokenizer, folder, cfg: TeacherSamplingConfig, progress: bool = True
                            ) -> TeacherCorpus:
    """Sample ``cfg.n_sequences`` sequences from ``model`` into ``folder`` (shards written atomically).

    Shards already there are kept when the manifest matches, so an interrupted run resumes and a
    finished corpus is reused; a folder made by another teacher or other settings is refused.
    """
    from safetensors.torch import save as save_safetensors
    from ..utils.progress import progress_bar
    from .losses import check_same_vocabulary

    check_context(model, cfg.seqlen)
    check_same_vocabulary(model, model, tokenizer)
    folder = Path(folder).expanduser()
    vocab = int(model.config.vocab_size)
    manifest = {"format": "tritium-teacher-corpus-1", "teacher": model_fingerprint(model), "vocab_size": vocab,
                "tokenizer_size": len(tokenizer), "sampling": asdict(cfg)}
    manifest_path = folder / TeacherCorpus.MANIFEST
    if manifest_path.is_file():
        old = json.loads(manifest_path.read_text())
        if old != manifest:
            raise TrainDataError(
                f"{folder} holds a teacher corpus made with other settings or another teacher "
                f"({old.get('sampling')} by {old.get('teacher')}): choose a new folder or delete it"
            )
    else:
        atomic_write_json(manifest_path, manifest)
    corpus = TeacherCorpus(folder, manifest)
    special = set(tokenizer.all_special_ids)
    candidates = torch.tensor([i for i in range(min(len(tokenizer), vocab)) if i not in special])
    was_training = model.training
    model.eval()
    names = corpus.shard_names()
    bar = progress_bar(total=cfg.n_sequences, desc="teacher samples", unit="seq", enabled=progress)
    for index, name in enumerate(names):
        count = min(cfg.shard_size, cfg.n_sequences - index * cfg.shard_size)
        if (folder / name).is_file():
            bar.update(count)
            continue
        generator = torch.Generator().manual_seed(cfg.seed * 1_000_003 + index)
        rows = []
        for start in range(0, count, cfg.batch_size):
            rows.append(sample_from_teacher(model, min(cfg.batch_size, count - start), cfg.seqlen, generator,
                                            candidates, cfg))
            bar.update(rows[-1].shape[0])
        tokens = torch.cat(rows).to(torch.int32)
        atomic_write_bytes(folder / name, save_safetensors({"tokens": tokens.contiguous()}))
    bar.close()
    model.train(was_training)
    return TeacherCorpus.open(folder)


def corpus_text_sample(corpus: TeacherCorpus, tokenizer, n: int = 2) -> list[str]:
    """A few decoded sequences, to eyeball what the teacher wrote."""
    return [tokenizer.decode(row) for row in corpus.sequences()[:n].tolist()]
