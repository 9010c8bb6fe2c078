"""Tiny random models and a tiny tokenizer, built from configs in milliseconds.

Tests and examples use them in place of a hub download; each family keeps its own
real module classes so adapters and methods see the true layout.
"""

from __future__ import annotations

import torch

TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2")

_TINY_DEFAULTS = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    tie_word_embeddings=False,
)


def tiny_config(family: str = "llama", **overrides):
    import transformers

    classes = {
        "llama": "LlamaConfig",
        "mistral": "MistralConfig",
        "qwen2": "Qwen2Config",
        "qwen3": "Qwen3Config",
        "gemma": "GemmaConfig",
        "gemma2": "Gemma2Config",
    }
    if family not in classes:
        raise ValueError(f"tiny family {family!r} is unknown: choose one of {TINY_FAMILIES}")
    settings = dict(_TINY_DEFAULTS)
    settings.update(overrides)
    if family in ("gemma", "gemma2", "qwen3") and "head_dim" not in overrides:  # their default is a fixed 256/128
        settings["head_dim"] = settings["hidden_size"] // settings["num_attention_heads"]
    if family == "gemma2" and "query_pre_attn_scalar" not in overrides:  # the real models' rule: their head_dim
        settings["query_pre_attn_scalar"] = settings["head_dim"]
    return getattr(transformers, classes[family])(**settings)


def tiny_model(family: str = "llama", seed: int = 0, **overrides):
    """A randomly initialised causal LM of ``family`` in eval mode."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    config = tiny_config(family, **overrides)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    return model.eval()


_TOKENIZER_TEXT = (
    "The quick brown fox jumps over the lazy dog. A ternary weight is minus one, zero or one. "
    "Quantization maps float weights to a small grid of values and keeps a scale per group. "
    "Perplexity is the exponential of the average negative log-likelihood per token. "
) * 8


# The split regexes of Llama-3's and Qwen2's tokenizer.json (they differ in \p{N}{1,3} against \p{N}).
LLAMA3_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                      r"\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                     r"\s*[\r\n]+|\s+(?!\S)|\s+")
BYTE_LEVEL_STYLES = ("gpt2", "smollm", "llama3", "qwen2")


def _byte_level_pre_tokenizer(style: str):
    """How each family's tokenizer.json splits text before merging."""
    from tokenizers import Regex, pre_tokenizers

    if style == "gpt2":  # ByteLevel's own GPT-2 regex
        return pre_tokenizers.ByteLevel(add_prefix_space=False)
    if style == "smollm":  # every digit alone, then GPT-2's regex
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    if style in ("llama3", "qwen2"):
        regex = LLAMA3_SPLIT_REGEX if style == "llama3" else QWEN2_SPLIT_REGEX
        return pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(regex), behavior="isolated"),
                                        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    raise ValueError(f"byte-level BPE style {style!r} is unknown: choose one of {', '.join(BYTE_LEVEL_STYLES)}")


def train_byte_level_bpe(texts, vocab_size: int, show_progress: bool = False, style: str = "gpt2"):
    """A byte-level BPE tokenizer trained on ``texts`` (any iterable of strings, streamed).

    ``<|endoftext|>`` is id 0 and serves as end-of-text (and beginning) token, as in GPT-2;
    byte-level means every string encodes, whatever its script, with no unknown token.
    ``style`` picks the pre-tokenizer of GPT-2, SmolLM2, Llama-3 or Qwen2 (:data:`BYTE_LEVEL_STYLES`).
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    pre_tokenizer = _byte_level_pre_tokenizer(style)
    tok = Tokenizer(models.BPE(ignore_merges=style == "llama3"))  # Llama-3 takes a word in the vocabulary whole
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_tokenizer(vocab_size: int = 512, style: str = "gpt2"):
    """A byte-level BPE tokenizer trained on a fixed paragraph: deterministic and offline."""
    return train_byte_level_bpe([_TOKENIZER_TEXT], vocab_size, style=style)


SENTENCEPIECE_STYLES = ("llama", "gemma")


def tiny_sentencepiece_tokenizer(folder, style: str = "llama", vocab_size: int = 600):
    """A SentencePiece BPE tokenizer trained on the fixed paragraph, saved as ``folder/tokenizer.model`` and
    loaded as HF loads Llama-2's ("llama": BOS 1, EOS 2, a space put before the text) or Gemma's ("gemma":
    pad 0, EOS 1, BOS 2, no space before the text). Needs the sentencepiece and protobuf packages."""
    import io
    from pathlib import Path

    import sentencepiece
    import transformers

    if style not in SENTENCEPIECE_STYLES:
        raise ValueError(f"SentencePiece style {style!r} is unknown: choose one of {', '.join(SENTENCEPIECE_STYLES)}")
    ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1) if style == "llama" else dict(
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>")
    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(_TOKENIZER_TEXT.split(". ")), model_writer=model, vocab_size=vocab_size,
        model_type="bpe", byte_fallback=True, character_coverage=1.0, add_dummy_prefix=style == "llama",
        hard_vocab_limit=False, minloglevel=2, **ids)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tokenizer.model").write_bytes(model.getvalue())
    cls = transformers.LlamaTokenizer if style == "llama" else transformers.GemmaTokenizer
    return cls.from_pretrained(str(folder))
