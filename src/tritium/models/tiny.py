"""Tiny random models and a tiny tokenizer, built from configs in milliseconds.

Tests and examples use them in place of a hub download; each family keeps its own
real module classes so adapters and methods see the true layout.
"""

from __future__ import annotations

import torch

TINY_FAMILIES = ("llama", "mistral", "qwen2", "qwen3", "gemma")

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
    }
    if family not in classes:
        raise ValueError(f"tiny family {family!r} is unknown: choose one of {TINY_FAMILIES}")
    settings = dict(_TINY_DEFAULTS)
    if family in ("gemma", "qwen3"):
        settings["head_dim"] = settings["hidden_size"] // settings["num_attention_heads"]
    settings.update(overrides)
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


def train_byte_level_bpe(texts, vocab_size: int, show_progress: bool = False):
    """A byte-level BPE tokenizer trained on ``texts`` (any iterable of strings, streamed).

    ``<|endoftext|>`` is id 0 and serves as end-of-text (and beginning) token, as in GPT-2;
    byte-level means every string encodes, whatever its script, with no unknown token.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>")


def tiny_tokenizer(vocab_size: int = 512):
    """A byte-level BPE tokenizer trained on a fixed paragraph: deterministic and offline."""
    return train_byte_level_bpe([_TOKENIZER_TEXT], vocab_size)
