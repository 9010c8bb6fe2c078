import pytest
import torch

from tritium.eval import perplexity
from tritium.export.gguf import GGUFExportError, llama_cpp_chunk_nll, llama_cpp_logits, rope_row_permutation, write_gguf
from tritium.export.gguf_tensors import GGUFTypeError
from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model
from tritium.quant import TernaryGrid


def ternary_llama(hidden=256, family="llama", **overrides):
    model = tiny_model(family, hidden_size=hidden, intermediate_size=2 * hidden, num_attention_heads=4,
                       num_key_value_heads=2, **overrides)
    with torch.no_grad():  # sharper attention and logits, so a wrong q/k row order would show
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
            if layer.self_attn.q_proj.bias is not None:  # Qwen2's q/k/v biases: large enough to matter
                for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                    proj.bias.normal_(0, 0.5, generator=torch.Generator().manual_seed(7))
            if family == "gemma":  # (1 + w) norms: a missing offset on export would show
                layer.input_layernorm.weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(8))
        model.lm_head.weight.mul_(3)
    result = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel")))
    return model, result


def assert_llama_cpp_matches(path, model, logit_tolerance=0.1):
    """llama.cpp's logits of the file against tritium's: perplexity within 1%, every logit within 0.1 std
    (``logit_tolerance`` std)."""
    ids = torch.randint(3, 512, (64,), generator=torch.Generator().manual_seed(1))
    theirs = torch.tensor(llama_cpp_logits(path, ids.tolist()))
    with torch.no_grad():
        ours = model(ids[None]).logits[0]

    def ppl(logits):
        return torch.exp(-torch.log_softmax(logits[:-1].double(), -1).gather(1, ids[1:, None]).mean()).item()

    assert ppl(theirs) == pytest.approx(ppl(ours), rel=0.01)
    assert (theirs - ours).abs().max() < logit_tolerance * ours.std()


def test_rope_permutation_interleaves_each_heads_halves():
    assert rope_row_permutation(8, 2).tolist() == [0, 2, 1, 3, 4, 6, 5, 7]


@pytest.mark.parametrize("ttype, hidden, expected_type", [("tq1_0", 256, "TQ1_0"), ("tq2_0", 256, "TQ2_0"),
                                                           ("tq1_0", 192, "Q4_0")])
def test_llama_cpp_runs_the_file_and_matches_tritium(tmp_path, tokenizer, ttype, hidden, expected_type):
    pytest.importorskip("llama_cpp")
    model, result = ternary_llama(hidden)
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, ttype, tokenizer=tokenizer)
    assert report.type_counts()[expected_type] == 14
    assert report.linear_bits_per_weight == pytest.approx({"TQ1_0": 1.6875, "TQ2_0": 2.0625, "Q4_0": 4.5}[expected_type])
    assert_llama_cpp_matches(tmp_path / "m.gguf", model)


@pytest.mark.parametrize("family, overrides", [("qwen2", {}), ("gemma", {"tie_word_embeddings": True, "head_dim": 64}),
                                               ("qwen2", {"tie_word_embeddings": True})])
def test_llama_cpp_runs_qwen2_and_gemma_files_like_tritium(tmp_path, tokenizer, family, overrides):
    pytest.importorskip("llama_cpp")
    model, result = ternary_llama(256, family, **overrides)
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, "tq1_0", tokenizer=tokenizer)
    assert report.type_counts()["TQ1_0"] == 14 and report.max_abs_error == 0.0
    from gguf import GGUFReader

    assert bytes(GGUFReader(tmp_path / "m.gguf").fields["general.architecture"].parts[-1]).decode() == family
    assert_llama_cpp_matches(tmp_path / "m.gguf", model)


def test_llama_cpp_chunk_nll_is_tritiums_chunk_loss_each_row_in_a_fresh_context(tmp_path, tokenizer):
    pytest.importorskip("llama_cpp")
    model, result = ternary_llama(256)
    write_gguf(model, tmp_path / "m.gguf", result.weights, "tq1_0", tokenizer=tokenizer)
    chunks = torch.randint(3, 512, (3, 32), generator=torch.Generator().manual_seed(2))
    theirs = llama_cpp_chunk_nll(tmp_path / "m.gguf", chunks)
    ours = perplexity(model, chunks.reshape(1, -1), seqlen=32, progress=False).chunk_nll
    assert theirs == pytest.approx(ours, rel=0.01)
    assert len(set(theirs)) == 3
    # the second row alone gives its own figure: nothing of the first row's context is left over
    assert llama_cpp_chunk_nll(tmp_path / "m.gguf", chunks[1:2]) == pytest.approx(theirs[1:2], rel=1e-5)


def test_smollm2_widths_fall_back_and_read_back_exactly(tmp_path, tokenizer):
    model, result = ternary_llama(hidden=192)  # 192 and 384 do not divide into 256-blocks
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, "tq1_0", tokenizer=tokenizer)
    assert set(report.type_counts()) >= {"Q4_0"} and "TQ1_0" not in report.type_counts()
    assert all("256" in reason for reason in report.fallback_reasons.values())
    assert report.max_abs_error == 0.0


def test_bad_requests_fail_clearly_and_leave_the_old_file(tmp_path, tokenizer):
    target = tmp_path / "m.gguf"
    target.write_bytes(b"previous")
    model, result = ternary_llama(hidden=192)
    with pytest.raises(GGUFTypeError, match="TQ1_0 cannot hold"):
        write_gguf(model, target, result.weights, "tq1_0", allow_fallback=False, tokenizer=tokenizer)
    with pytest.raises(GGUFExportError, match="tokenizer"):
        write_gguf(model, target, result.weights, "tq1_0")
    with pytest.raises(GGUFExportError, match="must be one of"):
        write_gguf(model, target, result.weights, "q2_k", tokenizer=tokenizer)
    phi = tiny_model("llama")
    phi.config.model_type = "phi3"  # a family llama.cpp knows under another graph
    with pytest.raises(GGUFExportError, match="'phi3' is not one of them.*compressed-tensors"):
        write_gguf(phi, target, {}, "tq1_0", tokenizer=tokenizer)
    gemma_untied = tiny_model("gemma", tie_word_embeddings=False)
    with pytest.raises(GGUFExportError, match="reuses the embedding as the output head"):
        write_gguf(gemma_untied, target, {}, "tq1_0", tokenizer=tokenizer)
    gemma_rotated = tiny_model("gemma", tie_word_embeddings=True)  # rotation unties the weights, not the config
    gemma_rotated.lm_head.weight = torch.nn.Parameter(gemma_rotated.lm_head.weight.detach() * 2)
    with pytest.raises(GGUFExportError, match="reuses the embedding as the output head"):
        write_gguf(gemma_rotated, target, {}, "tq1_0", tokenizer=tokenizer)
    assert target.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["m.gguf"]


@pytest.mark.parametrize("embedding_type, qtype, rel_error", [("f16", "F16", 1e-3), ("q8_0", "Q8_0", 1 / 127),
                                                               ("f32", "F32", 0.0)])
def test_embeddings_and_output_take_the_chosen_type(tmp_path, tokenizer, embedding_type, qtype, rel_error):
    import numpy as np
    from gguf import GGUFReader

    from tritium.export.gguf_tensors import decode_tensor

    model, result = ternary_llama(hidden=256)
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, "tq1_0", embedding_type=embedding_type,
                        tokenizer=tokenizer)
    assert report.tensor_types["token_embd.weight"] == report.tensor_types["output.weight"] == qtype
    assert report.tensor_types["blk.0.attn_norm.weight"] == "F32"
    tensors = {t.name: t for t in GGUFReader(tmp_path / "m.gguf").tensors}
    assert {name: t.tensor_type.name for name, t in tensors.items()} == report.tensor_types
    tables = {"token_embd.weight": model.model.embed_tokens.weight, "output.weight": model.lm_head.weight}
    for name, weight in tables.items():
        want = weight.detach().numpy()
        got = decode_tensor(np.asarray(tensors[name].data), tensors[name].tensor_type).reshape(want.shape)
        assert np.abs(got - want).max() <= rel_error * np.abs(want).max()
    # The report's totals are the file's own: every tensor's bytes over every tensor's weights.
    assert report.total_params == sum(int(t.n_elements) for t in tensors.values())
    assert report.total_bits_per_weight == pytest.approx(
        8 * sum(int(t.n_bytes) for t in tensors.values()) / report.total_params)
    assert report.linear_bits_per_weight == pytest.approx(1.6875)


def test_read_back_validation_catches_a_wrong_tensor(tmp_path, tokenizer, monkeypatch):
    import tritium.export.gguf as gguf_export

    model, result = ternary_llama(hidden=256)
    target = tmp_path / "m.gguf"
    encode = gguf_export.encode_tensor

    def damaged(qw, qtype, **kwargs):  # an encoder bug: the first bytes of every row's first block are lost
        raw = encode(qw, qtype, **kwargs).copy()
        raw[:, :8] = 0
        return raw

    monkeypatch.setattr(gguf_export, "encode_tensor", damaged)
    with pytest.raises(GGUFExportError, match=r"blk\.0\..*reads back with error"):
        write_gguf(model, target, result.weights, "tq1_0", tokenizer=tokenizer)
    assert not target.exists() and not list(tmp_path.iterdir())
