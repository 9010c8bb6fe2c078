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
            if family.startswith("gemma"):  # (1 + w) norms: a missing offset on export would show
                for norm in ("input_layernorm", "post_attention_layernorm", "pre_feedforward_layernorm",
                             "post_feedforward_layernorm"):
                    if hasattr(layer, norm):
                        getattr(layer, norm).weight.normal_(0, 0.3, generator=torch.Generator().manual_seed(8))
            if family == "qwen3":  # per-head q/k norms: a dropped or misnamed one would show
                layer.self_attn.q_norm.weight.normal_(1, 0.5, generator=torch.Generator().manual_seed(9))
                layer.self_attn.k_norm.weight.normal_(1, 0.5, generator=torch.Generator().manual_seed(10))
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
    import llama_cpp  # noqa: F401  (a test dependency: a missing one fails, never skips)
    model, result = ternary_llama(hidden)
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, ttype, tokenizer=tokenizer)
    assert report.type_counts()[expected_type] == 14
    assert report.linear_bits_per_weight == pytest.approx({"TQ1_0": 1.6875, "TQ2_0": 2.0625, "Q4_0": 4.5}[expected_type])
    assert_llama_cpp_matches(tmp_path / "m.gguf", model)


@pytest.mark.parametrize("family, overrides, arch", [
    ("qwen2", {}, "qwen2"), ("qwen2", {"tie_word_embeddings": True}, "qwen2"),
    ("qwen3", {}, "qwen3"), ("qwen3", {"tie_word_embeddings": True}, "qwen3"),
    ("mistral", {}, "llama"), ("gemma", {"tie_word_embeddings": True}, "gemma"),
    ("gemma2", {"tie_word_embeddings": True, "sliding_window": 16}, "gemma2")])  # 64 tokens: windows matter
def test_llama_cpp_runs_every_architecture_like_tritium(tmp_path, tokenizer, family, overrides, arch):
    import llama_cpp  # noqa: F401  (a test dependency: a missing one fails, never skips)
    model, result = ternary_llama(256, family, **overrides)
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, "tq1_0", tokenizer=tokenizer)
    assert report.type_counts()["TQ1_0"] == 14 and report.max_abs_error == 0.0
    from gguf import GGUFReader

    fields = GGUFReader(tmp_path / "m.gguf").fields
    assert bytes(fields["general.architecture"].parts[-1]).decode() == arch
    head_dim = getattr(model.config, "head_dim", None) or 256 // 4
    assert fields[f"{arch}.attention.key_length"].contents() == head_dim
    assert_llama_cpp_matches(tmp_path / "m.gguf", model)


@pytest.mark.parametrize("family, tokenizer_kind, gtype", [
    ("gemma", "sentencepiece-gemma", "q8_0"), ("qwen3", "bpe-qwen2", "q4_0"), ("llama", "bpe-llama3", "q8_0"),
    ("mistral", "sentencepiece-llama", "q4_0")])
def test_each_family_with_its_own_kind_of_tokenizer_runs_in_llama_cpp_on_a_gguf_grid(tmp_path, family,
                                                                                    tokenizer_kind, gtype):
    """The whole file from the model's own parts: a GGUF grid's exact type, the family's graph and its tokenizer."""
    import llama_cpp  # noqa: F401  (a test dependency: a missing one fails, never skips)
    from tritium.export.gguf_vocab import llama_cpp_token_ids
    from tritium.models.tiny import tiny_sentencepiece_tokenizer, tiny_tokenizer
    from tritium.quant import GGUFBlockGrid

    kind, style = tokenizer_kind.split("-")
    tok = (tiny_sentencepiece_tokenizer(tmp_path / "tok", style) if kind == "sentencepiece"
           else tiny_tokenizer(style=style))
    model = tiny_model(family, hidden_size=256, intermediate_size=512, vocab_size=640,
                       tie_word_embeddings=family == "gemma")
    result = quantize_(model, RTNConfig(grid=GGUFBlockGrid(gtype)))
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, tokenizer=tok)
    assert report.type_counts()[gtype.upper()] == 14 and report.max_abs_error == 0.0 and report.tokenization_checked
    texts = ["The quick brown fox jumps over the lazy dog.", "Quantization maps float weights\n\nto a grid"]
    assert llama_cpp_token_ids(tmp_path / "m.gguf", texts) == [tok(text)["input_ids"] for text in texts]
    assert_llama_cpp_matches(tmp_path / "m.gguf", model)


LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}


@pytest.mark.parametrize("overrides, float_qk", [
    ({"rope_parameters": LLAMA3_ROPE}, False),  # Llama-3.1/3.2's rope: written as per-frequency factors
    ({"rope_parameters": {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0}}, False),
    ({"attention_bias": True}, False),  # q/k biases take the rope row order too
    ({}, True)])  # q/k linears left in float (skipped by the method) are permuted as the quantized ones
def test_llama_cpp_runs_scaled_rope_biases_and_float_projections_like_tritium(tmp_path, tokenizer, overrides,
                                                                              float_qk):
    import llama_cpp  # noqa: F401  (a test dependency: a missing one fails, never skips)
    model, result = ternary_llama(256, "llama", **overrides)
    weights = {name: qw for name, qw in result.weights.items()
               if not (float_qk and name.endswith(("q_proj", "k_proj")))}
    report = write_gguf(model, tmp_path / "m.gguf", weights, "tq1_0", tokenizer=tokenizer)
    assert ("rope_freqs.weight" in report.tensor_types) == ("rope_parameters" in overrides)
    assert_llama_cpp_matches(tmp_path / "m.gguf", model)


def tiny_gemma3():
    import transformers

    config = transformers.Gemma3TextConfig(vocab_size=512, hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                           head_dim=16)
    return transformers.AutoModelForCausalLM.from_config(config).eval()


@pytest.mark.parametrize("make_model, message", [
    (lambda: tiny_gemma3(), r"writes the llama, mistral, qwen2, qwen3, gemma, gemma2 families.*'gemma3_text' is not "
                            r"one of them \(llama.cpp's gemma3 graph also needs"),
    (lambda: tiny_model("gemma2", tie_word_embeddings=True, query_pre_attn_scalar=64),
     r"gemma2 model would run differently in llama.cpp: its queries are scaled by query_pre_attn_scalar 64"),
    (lambda: tiny_model("gemma2", tie_word_embeddings=True, final_logit_softcapping=None),
     r"no final_logit_softcapping, which llama.cpp's gemma2 graph always applies"),
    (lambda: tiny_model("llama", hidden_act="gelu"), r"MLP uses 'gelu'.*llama graph computes silu"),
    (lambda: tiny_model("qwen2", rope_parameters=LLAMA3_ROPE), r"scales its rope \('llama3'\).*qwen2 graph"),
    (lambda: tiny_model("llama", rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                                                  "original_max_position_embeddings": 64}), "rope scaling 'yarn'"),
])
def test_what_llama_cpp_would_run_differently_is_refused_before_any_file(tmp_path, tokenizer, make_model, message):
    target = tmp_path / "new" / "m.gguf"
    with pytest.raises(GGUFExportError, match=message):
        write_gguf(make_model(), target, {}, "tq1_0", tokenizer=tokenizer)
    assert list(tmp_path.iterdir()) == []  # not even the folder


def test_a_sliding_window_shorter_than_the_context_is_noted_and_the_export_says_what_it_wrote(tmp_path, tokenizer):
    from tritium.export.api import export_model

    model = tiny_model("mistral", sliding_window=32)
    result = quantize_(model, RTNConfig(grid=TernaryGrid("absmean", group="channel")))
    report = export_model(model, "gguf", tmp_path / "m.gguf", result=result, tokenizer=tokenizer)
    assert any("sliding window of 32 tokens" in note for note in report.details["gguf"].notes)
    lines = "\n".join(report.lines)
    assert "note: the model attends over a sliding window of 32 tokens" in lines
    assert "vocabulary: byte-level BPE, pre-tokenizer 'gpt-2' (512 tokens, read by gguf.BpeVocab)" in lines


def test_an_existing_file_is_replaced_only_with_overwrite(tmp_path, tokenizer):
    model, result = ternary_llama(hidden=256)
    target = tmp_path / "m.gguf"
    write_gguf(model, target, result.weights, "tq1_0", tokenizer=tokenizer)
    first = target.read_bytes()
    with pytest.raises(GGUFExportError, match="already exists: pass overwrite=True"):
        write_gguf(model, target, result.weights, "tq2_0", tokenizer=tokenizer)
    assert target.read_bytes() == first
    report = write_gguf(model, target, result.weights, "tq2_0", tokenizer=tokenizer, overwrite=True)
    assert report.type_counts()["TQ2_0"] == 14 and target.read_bytes() != first
    with pytest.raises(GGUFExportError, match="is a folder"):
        write_gguf(model, tmp_path, result.weights, "tq1_0", tokenizer=tokenizer, overwrite=True)


def test_a_write_failing_midway_leaves_the_old_file_and_no_partial_one(tmp_path, tokenizer, monkeypatch):
    from gguf import GGUFWriter

    model, result = ternary_llama(hidden=256)
    target = tmp_path / "m.gguf"
    target.write_bytes(b"previous")
    write_tensors = GGUFWriter.write_tensors_to_file
    reached = []

    def disk_full(self, *args, **kwargs):  # half the tensor data lands in the file, then the disk is full
        reached.append(self.path)
        self.fout[0].write(b"\0" * 4096)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        write_gguf(model, target, result.weights, "tq1_0", tokenizer=tokenizer, overwrite=True)
    assert reached and reached[0] != target  # the failure came while writing a temporary beside the target
    assert target.read_bytes() == b"previous" and [p.name for p in tmp_path.iterdir()] == ["m.gguf"]
    monkeypatch.setattr(GGUFWriter, "write_tensors_to_file", write_tensors)
    write_gguf(model, target, result.weights, "tq1_0", tokenizer=tokenizer, overwrite=True)
    assert target.read_bytes()[:4] == b"GGUF"


def test_llama_cpp_chunk_nll_is_tritiums_chunk_loss_each_row_in_a_fresh_context(tmp_path, tokenizer):
    import llama_cpp  # noqa: F401  (a test dependency: a missing one fails, never skips)
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
    with pytest.raises(GGUFTypeError, match="TQ1_0 cannot hold"):  # found midway: the old file must survive
        write_gguf(model, target, result.weights, "tq1_0", allow_fallback=False, tokenizer=tokenizer, overwrite=True)
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
