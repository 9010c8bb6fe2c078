"""A GGUF file's vocabulary, read from the model's own HF tokenizer files with the ``gguf`` package's helpers.

llama.cpp tokenizes with its own code, so the file must say which algorithm runs and how text is split first:

- **byte-level BPE** (``tokenizer.ggml.model = "gpt2"``: GPT-2, Llama-3, Qwen2, SmolLM2), read by
  ``gguf.BpeVocab``, with its merges from ``gguf.SpecialVocab`` and a named pre-tokenizer
  (``tokenizer.ggml.pre``) whose split rules llama.cpp hard-codes;
- **SentencePiece BPE** (``"llama"``: Llama-2, Mistral v0.1, Gemma), read by ``gguf.SentencePieceVocab``
  from ``tokenizer.model`` when the folder has it (and ``sentencepiece`` is installed), else by
  ``gguf.LlamaHfVocab`` from ``tokenizer.json``. llama.cpp merges SentencePiece pieces by their score, and
  LlamaHfVocab gives every piece the same placeholder score; the scores are then each piece's merge rank.

llama.cpp's own converter names the pre-tokenizer by hashing the ids of a test string against a table
of known models. Here it is named by what the tokenizer's ``pre_tokenizer`` does (its steps and
regexes), which needs no table of hashes; a tokenizer whose split rules match none of llama.cpp's is
refused instead of written as "default", which splits text differently. After writing,
:func:`check_llama_cpp_tokenization` has llama.cpp tokenize a few strings and compares with HF.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import gguf
from gguf import GGUFWriter, TokenType

from ..models.tiny import LLAMA3_SPLIT_REGEX, QWEN2_SPLIT_REGEX  # the split rules of their tokenizer.json
from ..utils.errors import TritiumError


class GGUFVocabError(TritiumError, ValueError):
    """The tokenizer cannot be written so that llama.cpp tokenizes text as HF does; the message says why."""


BYTE_LEVEL_GPT2 = "ByteLevel(GPT-2 regex)"  # ByteLevel with use_regex: GPT-2's own split pattern
BYTE_LEVEL = "ByteLevel"  # bytes to symbols only, the splitting done by a Split before it
# HF pre-tokenizer steps -> the llama.cpp pre-tokenizer whose hard-coded regexes split text the same way.
PRE_TOKENIZERS = {
    (BYTE_LEVEL_GPT2,): "gpt-2",
    ("Digits(individual)", BYTE_LEVEL_GPT2): "smollm",
    (f"Split({LLAMA3_SPLIT_REGEX})", BYTE_LEVEL): "llama-bpe",
    (f"Split({QWEN2_SPLIT_REGEX})", BYTE_LEVEL): "qwen2",
}
PRE_TOKENIZER_MODELS = {"gpt-2": "GPT-2", "smollm": "SmolLM/StarCoder", "llama-bpe": "Llama-3", "qwen2": "Qwen2/Qwen3"}
# llama.cpp takes a word that is a whole token without merging for these pre-tokenizers (HF's ignore_merges).
IGNORES_MERGES = {"llama-bpe"}
# Strings whose tokens llama.cpp must reproduce: spaces and newlines, digits, contractions, accents, CJK, emoji.
PROBE_TEXTS = (
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "two  spaces,\ttab\nnew line\n\n end  ",
    "numbers 3 33 333 3333 3.14 and 1,000,000",
    "I've been told he's there, 'RE you sure? We'Ve a'lL",
    "naïve café — 東京 🦙🦙 ?!...",
)


@dataclass
class GGUFVocab:
    """Everything the file's ``tokenizer.*`` keys hold, ready to write."""

    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE) or "llama" (SentencePiece)
    pre: str | None  # tokenizer.ggml.pre (byte-level BPE only)
    tokens: list[bytes]
    types: list[int]
    scores: list[float] | None  # SentencePiece only: llama.cpp merges the highest-scoring pair first
    add_space_prefix: bool
    reader: str  # which gguf helper read the tokens, for the report
    notes: list[str] = field(default_factory=list)
    special: gguf.SpecialVocab | None = None  # merges, special token ids, add-bos/eos flags, chat template

    def describe(self) -> str:
        kind = f"byte-level BPE, pre-tokenizer {self.pre!r}" if self.model == "gpt2" else "SentencePiece BPE"
        return f"{kind} ({len(self.tokens)} tokens, read by gguf.{self.reader})"

    def add_to(self, writer: GGUFWriter) -> None:
        writer.add_tokenizer_model(self.model)
        if self.pre is not None:
            writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        writer.add_token_types(self.types)
        writer.add_add_space_prefix(self.add_space_prefix)
        self.special.add_to_gguf(writer, quiet=True)


def read_hf_vocab(tokenizer, n_vocab: int) -> GGUFVocab:
    """The GGUF vocabulary of an HF tokenizer, for an embedding of ``n_vocab`` rows; refused with a
    GGUFVocabError when llama.cpp would tokenize differently."""
    if not getattr(tokenizer, "is_fast", False) or not hasattr(tokenizer, "backend_tokenizer"):
        raise GGUFVocabError(f"the tokenizer ({type(tokenizer).__name__}) is not an HF fast tokenizer: GGUF export "
                             "reads tokenizer.json; load it with AutoTokenizer, or pass tokenizer_gguf=")
    spec = json.loads(tokenizer.backend_tokenizer.to_str())
    with tempfile.TemporaryDirectory(prefix="tritium-vocab-") as folder:
        folder = Path(folder)
        tokenizer.save_pretrained(folder)
        _copy_sentencepiece_model(tokenizer, folder)
        if _is_byte_level_bpe(spec):
            vocab = _byte_level_bpe(folder, spec)
        elif _is_sentencepiece_bpe(spec):
            vocab = _sentencepiece_bpe(folder, spec, tokenizer)
        else:
            raise GGUFVocabError(
                f"the tokenizer is a {spec['model']['type']} model (decoder {(spec.get('decoder') or {}).get('type')}); "
                "GGUF export writes byte-level BPE (GPT-2, Llama-3, Qwen2, SmolLM2) and SentencePiece BPE (Llama-2, "
                "Gemma) tokenizers: pass tokenizer_gguf= a GGUF file that holds this model's vocabulary")
        _mark_added_tokens(vocab, tokenizer)
        vocab.special = gguf.SpecialVocab(folder, load_merges=vocab.model == "gpt2", n_vocab=len(vocab.tokens))
    _set_special_tokens(vocab, tokenizer)
    _pad(vocab, n_vocab)
    return vocab


def _copy_sentencepiece_model(tokenizer, folder: Path) -> None:
    """save_pretrained writes only tokenizer.json; the tokenizer.model it was read from, if it still exists,
    has SentencePiece's own scores."""
    source = getattr(tokenizer, "vocab_file", None) or tokenizer.init_kwargs.get("vocab_file")
    if isinstance(source, (str, os.PathLike)) and str(source).endswith(".model") and Path(source).is_file():
        shutil.copyfile(source, folder / "tokenizer.model")


def _is_byte_level_bpe(spec: dict) -> bool:
    model = spec["model"]
    return model["type"] == "BPE" and not model.get("byte_fallback") and (spec.get("decoder") or {}).get(
        "type") == "ByteLevel"


def _is_sentencepiece_bpe(spec: dict) -> bool:
    model = spec["model"]
    return model["type"] == "BPE" and bool(model.get("byte_fallback"))


def _pre_tokenizer_steps(node: dict | None) -> list[str]:
    """The HF pre-tokenizer as a list of named steps (a Sequence flattened)."""
    if node is None:
        return []
    kind = node.get("type")
    if kind == "Sequence":
        return [step for child in node.get("pretokenizers", []) for step in _pre_tokenizer_steps(child)]
    if kind == "ByteLevel":
        if node.get("add_prefix_space"):
            return ["ByteLevel(add_prefix_space)"]  # llama.cpp never adds a space before byte-level BPE text
        return [BYTE_LEVEL_GPT2 if node.get("use_regex", True) else BYTE_LEVEL]
    if kind == "Digits":
        return ["Digits(individual)" if node.get("individual_digits") else "Digits(grouped)"]
    if kind == "Split" and "Regex" in node.get("pattern", {}) and node.get("behavior") == "Isolated" and not node.get(
            "invert"):
        return [f"Split({node['pattern']['Regex']})"]
    return [json.dumps(node, ensure_ascii=False)]


def pre_tokenizer_name(spec: dict) -> str:
    """llama.cpp's name for the tokenizer.json ``spec``'s pre-tokenizer, or a GGUFVocabError listing the known ones."""
    steps = tuple(_pre_tokenizer_steps(spec.get("pre_tokenizer")))
    name = PRE_TOKENIZERS.get(steps)
    if name is None:
        known = "; ".join(f"{PRE_TOKENIZER_MODELS[n]} ({n!r})" for n in PRE_TOKENIZERS.values())
        raise GGUFVocabError(
            f"the tokenizer splits text with {' + '.join(steps) or 'no pre-tokenizer'}, which matches none of the "
            f"pre-tokenizers tritium names for llama.cpp ({known}); writing llama.cpp's 'default' would split text "
            "differently, so nothing is written: pass tokenizer_gguf= a GGUF file that holds this model's vocabulary")
    ignores = bool(spec["model"].get("ignore_merges"))
    if ignores != (name in IGNORES_MERGES):
        raise GGUFVocabError(
            f"the tokenizer's pre-tokenizer is llama.cpp's {name!r}, but its ignore_merges is {ignores} where llama.cpp "
            f"uses {name in IGNORES_MERGES} for {name!r}: words would merge differently; pass tokenizer_gguf=")
    return name


def _byte_level_bpe(folder: Path, spec: dict) -> GGUFVocab:
    pre = pre_tokenizer_name(spec)
    notes = []
    normalizer = (spec.get("normalizer") or {}).get("type")
    if normalizer not in (None, "NFC"):
        raise GGUFVocabError(f"the tokenizer normalizes text with {normalizer}, which llama.cpp's byte-level BPE "
                             "does not do: pass tokenizer_gguf=")
    if normalizer == "NFC":  # Qwen2's: text already in NFC (nearly all text) tokenizes the same
        notes.append("the HF tokenizer NFC-normalizes text and llama.cpp does not: text not in NFC may tokenize "
                     "differently")
    try:
        bpe = gguf.BpeVocab(folder)
    except (FileNotFoundError, ValueError) as err:
        raise GGUFVocabError(f"gguf.BpeVocab cannot read the tokenizer: {err}") from err
    tokens, _, types = _unzip(bpe.all_tokens())
    return GGUFVocab("gpt2", pre, tokens, types, None, add_space_prefix=False, reader="BpeVocab", notes=notes)


def _sentencepiece_bpe(folder: Path, spec: dict, tokenizer) -> GGUFVocab:
    if (folder / "tokenizer.model").is_file() and gguf.vocab.SentencePieceProcessor is not None:
        piece_vocab = gguf.SentencePieceVocab(folder)
        tokens, scores, types = _unzip(piece_vocab.all_tokens())
        reader = "SentencePieceVocab"
        for index, piece in enumerate(tokenizer.convert_ids_to_tokens(list(range(len(tokens))))):
            if piece is not None and piece.encode("utf-8") != tokens[index]:
                raise GGUFVocabError(f"tokenizer.model and tokenizer.json disagree on token {index} "
                                     f"({tokens[index]!r} against {piece!r}): they belong to different tokenizers")
    else:
        hf_vocab = gguf.LlamaHfVocab(folder)
        tokens, _, types = _unzip(hf_vocab.all_tokens())
        scores = _merge_rank_scores(spec["model"]["merges"], tokens)
        reader = "LlamaHfVocab"
    # SentencePiece writes a space as "▁" and may put one before the text ("▁Hello"): llama.cpp must do the same.
    first = tokenizer.convert_ids_to_tokens(tokenizer("a", add_special_tokens=False)["input_ids"])
    add_space_prefix = bool(first) and first[0].startswith("\u2581")
    notes = []
    if add_space_prefix and _prefix_skipped_before_a_space(spec):
        notes.append("the HF tokenizer puts no '▁' before text that already begins with a space or that follows a "
                     "special token, and llama.cpp (like SentencePiece and HF's legacy Llama tokenizer) does: such "
                     "text gets one '▁' more in llama.cpp")
    return GGUFVocab("llama", None, tokens, types, scores, add_space_prefix=add_space_prefix, reader=reader,
                     notes=notes)


def _prefix_skipped_before_a_space(spec: dict) -> bool:
    """tokenizers' Metaspace adds its "▁" only at the start of the text, and not where it already begins with a
    space (how transformers 5 builds Llama-2-style tokenizers); llama.cpp adds one there and after every special
    token, as the original Llama-2 tokenizer.json (a Prepend normalizer) and SentencePiece do."""
    pre = spec.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", [pre]) if pre.get("type") == "Sequence" else [pre]
    return any(step.get("type") == "Metaspace" and step.get("prepend_scheme") in ("first", "always")
               for step in steps)


def _merge_rank_scores(merges: list, tokens: list[bytes]) -> list[float]:
    """SentencePiece-style scores from tokenizer.json's merges: llama.cpp joins the pair whose result scores
    highest, HF the pair whose merge comes first, so a piece scores minus the rank of the first merge making it.
    Pieces no merge makes (characters, bytes, control tokens) score below every merge."""
    rank_of: dict[bytes, int] = {}
    for rank, merge in enumerate(merges):
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        rank_of.setdefault((left + right).encode("utf-8"), rank)
    floor = -float(len(merges) + 1)
    return [-float(rank_of[t]) if t in rank_of else floor for t in tokens]


def _unzip(entries) -> tuple[list[bytes], list[float], list[int]]:
    tokens, scores, types = [], [], []
    for text, score, kind in entries:
        tokens.append(text)
        scores.append(float(score))
        types.append(int(kind))
    return tokens, scores, types


def _mark_added_tokens(vocab: GGUFVocab, tokenizer) -> None:
    """HF's added tokens are matched whole in the text (special ones only when asked): llama.cpp does that for
    CONTROL and USER_DEFINED tokens. Added tokens the gguf reader does not know (past tokenizer.model's pieces)
    are appended."""
    for index, added in sorted(tokenizer.added_tokens_decoder.items()):
        kind = int(TokenType.CONTROL if added.special else TokenType.USER_DEFINED)
        if index == len(vocab.tokens):
            vocab.tokens.append(added.content.encode("utf-8"))
            vocab.types.append(kind)
            if vocab.scores is not None:
                vocab.scores.append(-1000.0)
        elif index > len(vocab.tokens):
            raise GGUFVocabError(f"the tokenizer's added token {added.content!r} has id {index}, past the "
                                 f"{len(vocab.tokens)} tokens before it: GGUF needs every id")
        elif vocab.types[index] in (TokenType.NORMAL, TokenType.USER_DEFINED, TokenType.CONTROL):
            vocab.types[index] = kind


def _set_special_tokens(vocab: GGUFVocab, tokenizer) -> None:
    """The special token ids from the tokenizer itself, and whether it puts BOS/EOS around text, found by
    encoding a probe with and without special tokens (what HF does, however its template says it)."""
    for kind in ("bos", "eos", "unk", "pad", "sep", "cls", "mask"):
        token_id = getattr(tokenizer, f"{kind}_token_id", None)
        if isinstance(token_id, int):
            vocab.special.special_token_ids[kind] = token_id
    plain = tokenizer(PROBE_TEXTS[0], add_special_tokens=False)["input_ids"]
    full = tokenizer(PROBE_TEXTS[0])["input_ids"]
    bos, eos = tokenizer.bos_token_id, tokenizer.eos_token_id
    add_bos = len(full) > len(plain) and bos is not None and full[0] == bos and full[1:len(plain) + 1] == plain
    add_eos = len(full) > len(plain) + add_bos and eos is not None and full[-1] == eos
    if [bos] * add_bos + plain + [eos] * add_eos != full:
        raise GGUFVocabError(f"the tokenizer puts {full} around {PROBE_TEXTS[0]!r} where the text alone is {plain}: "
                             "llama.cpp can add only a BOS before and an EOS after; pass tokenizer_gguf=")
    vocab.special.add_special_token = {"bos": add_bos, "eos": add_eos}


def _pad(vocab: GGUFVocab, n_vocab: int) -> None:
    """llama.cpp sizes the vocabulary from the token list: pad it to the embedding's rows, as HF models pad."""
    if len(vocab.tokens) > n_vocab:
        raise GGUFVocabError(f"the tokenizer has {len(vocab.tokens)} tokens but the embedding only {n_vocab} rows: "
                             "they belong to different models")
    for index in range(len(vocab.tokens), n_vocab):
        vocab.tokens.append(f"[PAD{index}]".encode())
        vocab.types.append(int(TokenType.UNUSED))
        if vocab.scores is not None:
            vocab.scores.append(-1000.0)


def llama_cpp_token_ids(path: str | os.PathLike, texts, add_special: bool = True) -> list[list[int]]:
    """The ids llama.cpp (through llama-cpp-python's C API) gives each of ``texts`` with the file's vocabulary
    alone: no weights are read and no context is made."""
    import logging

    import llama_cpp
    import llama_cpp.llama  # noqa: F401  (routes llama.cpp's log through the "llama-cpp-python" logger)

    params = llama_cpp.llama_model_default_params()
    params.vocab_only = True
    log = logging.getLogger("llama-cpp-python")
    level = log.level
    log.setLevel(logging.ERROR)  # loading prints the whole vocabulary summary otherwise
    try:
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
    finally:
        log.setLevel(level)
    if not model:
        raise GGUFVocabError(f"llama.cpp cannot read the vocabulary of {path}")
    try:
        vocab = llama_cpp.llama_model_get_vocab(model)
        out = []
        for text in texts:
            data = text.encode("utf-8")
            room = len(data) + 8  # a token holds at least one byte; BOS and EOS may be added
            ids = (llama_cpp.llama_token * room)()
            # parse_special: HF matches its added tokens, special ones included, wherever they are in the text
            count = llama_cpp.llama_tokenize(vocab, data, len(data), ids, room, add_special, True)
            if count < 0:
                raise GGUFVocabError(f"llama.cpp could not tokenize {text!r} with {path}")
            out.append(list(ids[:count]))
        return out
    finally:
        llama_cpp.llama_model_free(model)


def check_llama_cpp_tokenization(path: str | os.PathLike, tokenizer, texts=PROBE_TEXTS) -> bool:
    """Have llama.cpp tokenize ``texts`` with the written file and refuse it (GGUFVocabError) where the ids
    differ from HF's. Returns False, checking nothing, when llama-cpp-python is not installed."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return False
    for text, theirs in zip(texts, llama_cpp_token_ids(path, texts)):
        ours = tokenizer(text)["input_ids"]
        if theirs != ours:
            raise GGUFVocabError(f"llama.cpp tokenizes {text!r} as {theirs} where the HF tokenizer gives {ours}: "
                                 "the vocabulary was not written faithfully; pass tokenizer_gguf= a GGUF file that "
                                 "holds this model's vocabulary")
    return True
