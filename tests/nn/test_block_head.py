"""A block-quantized embedding and LM head: equal to their references, saved and reloaded exactly."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from transformers import AutoModelForCausalLM

import tritium  # noqa: F401  (registers the loader)
from tritium.eval.size import size_report
from tritium.export.hf import save_packed
from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model
from tritium.nn import (
    BlockEmbedding,
    BlockLMHead,
    check_head_quantizable,
    dequantize_head_,
    head_type_of,
    pack_model,
    quantize_head_,
)
from tritium.pack.blocks import HeadTypeError, quantize_blocks
from tritium.quant import TernaryGrid
from tritium.runtime import FastDecoder

GRID = TernaryGrid("absmean", group=32)


def _packed(tied: bool, seed: int = 0, **overrides):
    model = tiny_model("llama", seed=seed, tie_word_embeddings=tied, **overrides)
    pack_model(model, quantize_(model, RTNConfig(grid=GRID)).weights)
    return model


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
def test_embedding_and_head_equal_their_dequantized_references(kind):
    model = tiny_model("llama", seed=1)
    embed, head = model.model.embed_tokens, model.lm_head
    table, linear = BlockEmbedding.from_embedding(embed, kind), BlockLMHead.from_linear(head, kind)
    reference_table = quantize_blocks(embed.weight, kind).dequantize()
    reference_head = quantize_blocks(head.weight, kind).dequantize()
    ids = torch.tensor([[5, 0, 511], [7, 7, 3]])
    torch.testing.assert_close(table(ids), F.embedding(ids, reference_table), rtol=0, atol=0)
    x = torch.randn(2, 3, head.in_features)
    torch.testing.assert_close(linear(x), F.linear(x, reference_head), rtol=1e-4, atol=1e-4)
    assert 0 < float((reference_head - head.weight.detach()).abs().max()) < (0.1 if kind == "q8_0" else 0.5)


def test_block_modules_keep_their_scales_in_fp16_and_follow_the_model_dtype():
    model = tiny_model("llama", seed=2)
    quantize_head_(model, "q8_0")
    model.to(torch.bfloat16)
    embed = model.model.embed_tokens
    assert embed.scale.dtype == torch.float16 and embed.codes.dtype == torch.int8
    assert embed(torch.tensor([[1, 2]])).dtype == torch.bfloat16
    assert model(torch.tensor([[1, 2]])).logits.dtype == torch.bfloat16


def test_a_tied_pair_becomes_one_table_and_transformers_no_longer_ties_it():
    model = _packed(tied=True)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    record = quantize_head_(model, "q4_0")
    assert record["tied"] and record["type"] == "q4_0"
    assert model.lm_head.tied_to is model.model.embed_tokens
    assert not [k for k in model.state_dict() if k.startswith("lm_head.")]  # the blocks are saved once
    assert model.config.tie_word_embeddings is False
    model.tie_weights()  # transformers' own tying must leave the block modules alone
    assert isinstance(model.lm_head, BlockLMHead) and model.lm_head.tied_to is model.model.embed_tokens


@pytest.mark.parametrize("kind", ["q8_0", "q4_0"])
@pytest.mark.parametrize("tied", [True, False])
def test_packed_folder_with_a_block_head_reloads_to_the_same_logits(tmp_path, tokenizer, kind, tied):
    model = _packed(tied, seed=3)
    quantize_head_(model, kind)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        want = model(ids).logits
    save_packed(model, tokenizer, tmp_path / "m", "rtn", {"kind": "ternary", "variant": "absmean", "group": 32},
                float_dtype="float16")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["quantization_config"]["head"]["type"] == kind
    assert config["quantization_config"]["head"]["tied"] is tied
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    assert head_type_of(loaded) == kind and isinstance(loaded.lm_head, BlockLMHead)
    assert (loaded.lm_head.tied_to is loaded.model.embed_tokens) is tied
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, want)


def test_a_float_head_folder_keeps_the_config_it_always_had(tmp_path, tokenizer):
    model = _packed(tied=True)
    save_packed(model, tokenizer, tmp_path / "m", "rtn", {"kind": "ternary", "variant": "absmean", "group": 32})
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "head" not in config["quantization_config"] and config["tie_word_embeddings"] is True


def test_a_corrupt_block_head_fails_its_checksum_on_load(tmp_path, tokenizer):
    from safetensors.torch import load_file, save_file

    model = _packed(tied=False)
    quantize_head_(model, "q8_0")
    save_packed(model, tokenizer, tmp_path / "m", "rtn", {"kind": "ternary", "variant": "absmean", "group": 32})
    path = tmp_path / "m" / "model.safetensors"
    state = load_file(path)
    state["lm_head.codes"][0, 0, 0] += 1
    save_file(state, path, metadata={"format": "pt"})
    from tritium.utils.integrity import MANIFEST_FILE, DamagedFileError

    with pytest.raises(DamagedFileError, match=r"damaged tensors: lm_head.codes"):  # the folder's manifest
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")
    (tmp_path / "m" / MANIFEST_FILE).unlink()  # without it, the head's own checksum still catches the change
    with pytest.raises(Exception, match="checksum"):
        AutoModelForCausalLM.from_pretrained(tmp_path / "m")


def test_size_report_counts_the_heads_real_bits():
    for tied in (True, False):
        model = tiny_model("llama", tie_word_embeddings=tied)
        before = size_report(model)
        quantize_head_(model, "q4_0")
        after = size_report(model)
        vocab_weights = 512 * 64
        assert after.embedding_bits_per_weight == 4.5 and after.lm_head_params == (0 if tied else vocab_weights)
        saved = (16 - 4.5) * vocab_weights * (1 if tied else 2)
        assert before.total_bits - after.total_bits == pytest.approx(saved)


def test_heads_that_cannot_take_the_type_are_refused_with_the_reason():
    check_head_quantizable(tiny_model("llama", hidden_size=48, num_attention_heads=4), "f16")  # f16 always fits
    with pytest.raises(HeadTypeError, match="multiple of 32"):
        check_head_quantizable(tiny_model("llama", hidden_size=48, num_attention_heads=4), "q8_0")
    biased = tiny_model("llama")
    biased.lm_head = nn.Linear(64, 512, bias=True)
    with pytest.raises(HeadTypeError, match="bias"):
        check_head_quantizable(biased, "q4_0")
    with pytest.raises(HeadTypeError, match="GemmaTextScaledWordEmbedding"):
        check_head_quantizable(tiny_model("gemma"), "q8_0")
    with pytest.raises(HeadTypeError, match="unknown"):
        check_head_quantizable(tiny_model("llama"), "q5_k")
    done = tiny_model("llama")
    quantize_head_(done, "q8_0")
    check_head_quantizable(done, "q8_0")  # the type it has: nothing to do
    for other in ("q4_0", "f16"):
        with pytest.raises(HeadTypeError, match="already q8_0"):
            check_head_quantizable(done, other)


def test_dequantize_head_gives_float_modules_with_the_decoded_values():
    model = _packed(tied=True)
    quantize_head_(model, "q8_0")
    ids = torch.tensor([[4, 9, 1]])
    with torch.no_grad():
        want = model(ids).logits
        dequantize_head_(model)
        assert type(model.model.embed_tokens) is nn.Embedding and model.lm_head.weight is model.model.embed_tokens.weight
        assert model.config.tie_word_embeddings is True
        torch.testing.assert_close(model(ids).logits, want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("tied", [True, False])
def test_lean_decode_loop_with_a_block_head_matches_generate(tied):
    model = _packed(tied, seed=4)
    quantize_head_(model, "q8_0")
    ids = torch.randint(3, 500, (1, 6), generator=torch.Generator().manual_seed(0))
    ours = FastDecoder(model, max_length=32, head_dtype="auto").generate(ids, 8).tokens
    with torch.no_grad():
        theirs = model.generate(ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=None,
                                pad_token_id=0)
    assert torch.equal(ours, theirs)
