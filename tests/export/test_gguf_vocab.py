"""The GGUF vocabulary comes from the model's own HF tokenizer, and llama.cpp tokenizes text with it as HF does."""

import llama_cpp  # noqa: F401  (installed with the project: if it is missing these tests fail, never skip)
import pytest
from gguf import GGUFReader

import tritium.export.gguf_vocab as gguf_vocab
from tritium.export.gguf import write_gguf
from tritium.export.gguf_vocab import GGUFVocabError, llama_cpp_token_ids
from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model
from tritium.models.tiny import tiny_sentencepiece_tokenizer, train_byte_level_bpe
from tritium.quant import TernaryGrid

# Digit runs, contractions, runs of spaces and newlines, punctuation, accents, CJK and emoji: trained on this,
# the tokenizers merge across exactly the places where the pre-tokenizers of GPT-2, Llama-3, Qwen2 and
# llama.cpp's "default" split differently.
MIXED_TEXT = ("In 2024 we counted 333 apples, 1,000 pears and 42 plums (3.14 each).\n\n"
              "I've been told he's there, 'RE you sure? We'Ve a'lL gone:  two  spaces\tand tabs\n"
              "naïve café — 東京 🦙🦙 ?!... (hello) [world] {x}=y+z; 3333 33 3\n") * 20
TEXTS = ["In 2024 we counted 333 apples", "I'VE said (hello)\n\n  two  spaces", "naïve café 東京 🦙",
         "<|endoftext|>after a special token", "3333 33 3 1,000"]
N_VOCAB = 640  # rows of the embedding: more than any tokenizer here has, so the padding is written too


@pytest.fixture(scope="module")
def model_and_weights():
    model = tiny_model("llama", hidden_size=256, intermediate_size=512, vocab_size=N_VOCAB)
    result = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel")))
    return model, result.weights


def fields(path):
    return {key: field.contents() for key, field in GGUFReader(path).fields.items()
            if key.startswith("tokenizer.") and key not in ("tokenizer.ggml.merges", "tokenizer.ggml.scores")}


def hf_ids(tokenizer, texts):
    return [tokenizer(text)["input_ids"] for text in texts]


@pytest.mark.parametrize("style, pre", [("gpt2", "gpt-2"), ("smollm", "smollm"), ("llama3", "llama-bpe"),
                                        ("qwen2", "qwen2")])
def test_byte_level_bpe_gets_llama_cpps_pre_tokenizer_and_tokenizes_as_hf(tmp_path, model_and_weights, style, pre):
    model, weights = model_and_weights
    tokenizer = train_byte_level_bpe([MIXED_TEXT], 600, style=style)
    report = write_gguf(model, tmp_path / "m.gguf", weights, "tq1_0", tokenizer=tokenizer)
    assert report.tokenization_checked and f"pre-tokenizer {pre!r}" in report.vocabulary
    written = fields(tmp_path / "m.gguf")
    assert written["tokenizer.ggml.model"] == "gpt2" and written["tokenizer.ggml.pre"] == pre
    assert len(written["tokenizer.ggml.tokens"]) == N_VOCAB
    assert llama_cpp_token_ids(tmp_path / "m.gguf", TEXTS) == hf_ids(tokenizer, TEXTS)


@pytest.mark.parametrize("style", ["gpt2", "llama3", "qwen2"])
def test_writing_llama_cpps_default_pre_tokenizer_would_be_caught(tmp_path, model_and_weights, monkeypatch, style):
    """What naming the pre-tokenizer is for: with 'default' llama.cpp splits these texts otherwise, and the
    read-back refuses the file."""
    model, weights = model_and_weights
    tokenizer = train_byte_level_bpe([MIXED_TEXT], 600, style=style)
    monkeypatch.setattr(gguf_vocab, "pre_tokenizer_name", lambda spec: "default")
    with pytest.raises(GGUFVocabError, match="llama.cpp tokenizes .* where the HF tokenizer gives"):
        write_gguf(model, tmp_path / "m.gguf", weights, "tq1_0", tokenizer=tokenizer)
    assert list(tmp_path.iterdir()) == []


def forget_tokenizer_model(tokenizer):
    """As a tokenizer saved by transformers 5 comes back: tokenizer.json only, no tokenizer.model."""
    tokenizer.vocab_file = None
    tokenizer.init_kwargs["vocab_file"] = None
    return tokenizer


@pytest.mark.parametrize("style, space_prefix", [("llama", True), ("gemma", False)])
@pytest.mark.parametrize("with_model_file, reader", [(True, "SentencePieceVocab"), (False, "LlamaHfVocab")])
def test_sentencepiece_tokenizers_tokenize_as_hf(tmp_path, model_and_weights, style, space_prefix,
                                                with_model_file, reader):
    model, weights = model_and_weights
    tokenizer = tiny_sentencepiece_tokenizer(tmp_path / "tok", style)
    if not with_model_file:
        forget_tokenizer_model(tokenizer)
    report = write_gguf(model, tmp_path / "m.gguf", weights, "tq1_0", tokenizer=tokenizer)
    assert report.tokenization_checked and report.vocabulary.endswith(f"read by gguf.{reader})")
    written = fields(tmp_path / "m.gguf")
    assert written["tokenizer.ggml.model"] == "llama" and "tokenizer.ggml.pre" not in written
    assert written["tokenizer.ggml.add_space_prefix"] is space_prefix
    assert written["tokenizer.ggml.bos_token_id"] == tokenizer.bos_token_id
    assert written["tokenizer.ggml.eos_token_id"] == tokenizer.eos_token_id
    texts = ["The quick brown fox jumps over the lazy dog.", "weights\n\nper  group 42 €",
             f"Perplexity{tokenizer.eos_token}"]
    if not space_prefix:  # with one, the documented difference below
        texts.append(f"{tokenizer.eos_token}Perplexity{tokenizer.bos_token} is")
    assert llama_cpp_token_ids(tmp_path / "m.gguf", texts) == hf_ids(tokenizer, texts)


def test_the_documented_sentencepiece_difference_is_one_space_before_text_or_after_a_special_token(
        tmp_path, model_and_weights):
    """transformers 5 builds Llama-2-style tokenizers with a Metaspace that adds no '▁' before a text already
    starting with a space, nor after a special token; llama.cpp, like SentencePiece, adds one. The report says so."""
    model, weights = model_and_weights
    tokenizer = tiny_sentencepiece_tokenizer(tmp_path / "tok", "llama")
    report = write_gguf(model, tmp_path / "m.gguf", weights, "tq1_0", tokenizer=tokenizer)
    assert any("already begins with a space or that follows a special token" in note for note in report.notes)
    space, after_special = llama_cpp_token_ids(tmp_path / "m.gguf", [" leading space", "</s>weights"])
    assert space == [tokenizer.convert_tokens_to_ids("\u2581")] + tokenizer(" leading space")["input_ids"]
    assert after_special == tokenizer("</s> weights")["input_ids"]


def test_sentencepiece_scores_from_merge_ranks_are_what_makes_llama_cpp_merge_as_hf(tmp_path, model_and_weights,
                                                                                   monkeypatch):
    """gguf.LlamaHfVocab gives every piece one placeholder score; llama.cpp would then merge left to right."""
    model, weights = model_and_weights
    tokenizer = forget_tokenizer_model(tiny_sentencepiece_tokenizer(tmp_path / "tok", "gemma"))
    monkeypatch.setattr(gguf_vocab, "_merge_rank_scores", lambda merges, tokens: [-1000.0] * len(tokens))
    with pytest.raises(GGUFVocabError, match="llama.cpp tokenizes"):
        write_gguf(model, tmp_path / "m.gguf", weights, "tq1_0", tokenizer=tokenizer)


def test_tokenizers_llama_cpp_cannot_reproduce_are_refused_before_any_file(tmp_path, model_and_weights):
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    model, weights = model_and_weights
    target = tmp_path / "out" / "m.gguf"
    custom = train_byte_level_bpe([MIXED_TEXT], 400)
    custom.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{L}+|\s+"), behavior="isolated"), pre_tokenizers.ByteLevel(use_regex=False,
                                                                                                   add_prefix_space=False)])
    with pytest.raises(GGUFVocabError, match=r"matches none of the pre-tokenizers.*'llama-bpe'.*tokenizer_gguf="):
        write_gguf(model, target, weights, "tq1_0", tokenizer=custom)
    prefixed = train_byte_level_bpe([MIXED_TEXT], 400)
    prefixed.backend_tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=True)
    with pytest.raises(GGUFVocabError, match="add_prefix_space"):
        write_gguf(model, target, weights, "tq1_0", tokenizer=prefixed)
    unigram = Tokenizer(models.Unigram())
    unigram.train_from_iterator([MIXED_TEXT], trainers.UnigramTrainer(vocab_size=100, show_progress=False))
    with pytest.raises(GGUFVocabError, match="Unigram model"):
        write_gguf(model, target, weights, "tq1_0", tokenizer=PreTrainedTokenizerFast(tokenizer_object=unigram))
    too_big = train_byte_level_bpe([MIXED_TEXT * 3 + "".join(chr(0x4E00 + i) for i in range(400))], 1000)
    with pytest.raises(GGUFVocabError, match=f"tokens but the embedding only {N_VOCAB} rows"):
        write_gguf(model, target, weights, "tq1_0", tokenizer=too_big)
    assert not target.parent.exists()


def test_tokenizer_gguf_still_copies_a_shipped_vocabulary(tmp_path, model_and_weights):
    model, weights = model_and_weights
    tokenizer = train_byte_level_bpe([MIXED_TEXT], 600, style="llama3")
    write_gguf(model, tmp_path / "first.gguf", weights, "tq1_0", tokenizer=tokenizer)
    report = write_gguf(model, tmp_path / "copy.gguf", weights, "tq1_0", tokenizer_gguf=tmp_path / "first.gguf")
    assert report.vocabulary.startswith("copied from")
    assert fields(tmp_path / "copy.gguf") == fields(tmp_path / "first.gguf")


@pytest.mark.slow
def test_the_real_smollm2_vocabulary_tokenizes_as_hf(tmp_path):
    """The default model's tokenizer, as transformers rebuilds it from the shipped GGUF, writes as 'gpt-2'."""
    from tritium.models import load_tokenizer

    tokenizer = load_tokenizer("smollm2-135m")
    model = tiny_model("llama", vocab_size=len(tokenizer))
    result = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel")))
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, "tq1_0", tokenizer=tokenizer)
    assert report.tokenization_checked and "'gpt-2'" in report.vocabulary
    assert llama_cpp_token_ids(tmp_path / "m.gguf", TEXTS) == hf_ids(tokenizer, TEXTS)
