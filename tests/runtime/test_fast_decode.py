import pytest
import torch

from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model
from tritium.nn import pack_model
from tritium.quant import TernaryGrid
from tritium.runtime import FastDecoder, UnsupportedForFastDecode


def prompt(seed=0, length=7):
    return torch.randint(3, 500, (1, length), generator=torch.Generator().manual_seed(seed))


def hf_greedy(model, ids, n):
    with torch.no_grad():
        return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, eos_token_id=None,
                              pad_token_id=0)


@pytest.mark.parametrize("family", ["llama", "qwen2", "mistral"])
def test_tokens_and_logits_equal_hugging_face(family):
    model = tiny_model(family, seed=3)
    ids = prompt()
    decoder = FastDecoder(model, max_length=64)
    result = decoder.generate(ids, 12)
    assert torch.equal(result.tokens, hf_greedy(model, ids, 12))
    # logits of a later step, not only the argmax
    with torch.no_grad():
        reference = model(result.tokens[:, :10]).logits[:, -1]
    decoder.generate(result.tokens[:, :9], 1)  # refills the cache up to position 9
    ours = decoder.forward(result.tokens[:, 9:10], 9)
    assert torch.allclose(ours, reference, atol=1e-4, rtol=1e-4)


def test_packed_model_decodes_like_its_fake_quant_twin():
    grid = TernaryGrid("absmean", group=32)
    fake = tiny_model("llama", seed=5)
    weights = quantize_(fake, RTNConfig(grid=grid)).weights
    packed = tiny_model("llama", seed=5)
    quantize_(packed, RTNConfig(grid=grid))
    pack_model(packed, weights)
    ids = prompt(1)
    ours = FastDecoder(packed, max_length=64).generate(ids, 10).tokens
    assert torch.equal(ours, hf_greedy(fake, ids, 10))
    assert torch.equal(ours, hf_greedy(packed, ids, 10))


def test_stops_at_the_end_of_sequence_token():
    model = tiny_model("llama", seed=3)
    ids = prompt()
    full = FastDecoder(model, max_length=64).generate(ids, 12).tokens
    eos = int(full[0, ids.shape[1] + 3])
    stopped = FastDecoder(model, max_length=64).generate(ids, 12, eos_token_id=eos).tokens
    first = (full[0, ids.shape[1]:] == eos).nonzero()[0].item()
    assert torch.equal(stopped, full[:, : ids.shape[1] + first + 1])


def test_unsupported_models_and_inputs_fail_clearly():
    with pytest.raises(UnsupportedForFastDecode, match="gemma"):
        FastDecoder(tiny_model("gemma"))
    decoder = FastDecoder(tiny_model("llama"), max_length=8)
    with pytest.raises(ValueError, match="one prompt"):
        decoder.generate(torch.zeros(2, 3, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="holds 8"):
        decoder.generate(prompt(length=6), 4)


def test_an_fp16_head_copy_is_exact_for_fp16_valued_weights():
    """A packed folder stores the head in fp16; multiplying the fp16 copy in fp32 gives the fp32 head's logits."""
    model = tiny_model("llama", seed=3)
    ids = prompt()
    rounded = tiny_model("llama", seed=3)
    with torch.no_grad():
        rounded.lm_head.weight.copy_(rounded.lm_head.weight.half().float())
    for weights, exact in ((rounded, True), (model, False)):
        full, half = FastDecoder(weights, max_length=64), FastDecoder(weights, max_length=64, head_dtype=torch.float16)
        assert half.head_weight.dtype == torch.float16
        full.generate(ids, 1), half.generate(ids, 1)
        a, b = full.forward(ids[:, -1:], ids.shape[1]), half.forward(ids[:, -1:], ids.shape[1])
        assert b.dtype == torch.float32
        if exact:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        else:
            assert not torch.equal(a, b) and torch.allclose(a, b, atol=1e-2)
    with pytest.raises(UnsupportedForFastDecode, match="float16"):
        FastDecoder(model, head_dtype=torch.bfloat16)
    # "auto" takes the fp16 copy only where it is exact
    assert FastDecoder(rounded, head_dtype="auto").head_weight is not None
    assert FastDecoder(model, head_dtype="auto").head_weight is None


def test_fusing_projections_keeps_the_weights_and_adds_no_copy():
    """q/k/v and gate/up run as one matmul each; the float modules then read views of the fused matrix."""
    model = tiny_model("qwen2", seed=4)  # q/k/v with biases
    before = {k: v.clone() for k, v in model.state_dict().items()}
    FastDecoder(model, max_length=32)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    attn, mlp = model.model.layers[0].self_attn, model.model.layers[0].mlp
    assert attn.k_proj.weight.untyped_storage().data_ptr() == attn.q_proj.weight.untyped_storage().data_ptr()
    assert attn.v_proj.bias.untyped_storage().data_ptr() == attn.q_proj.bias.untyped_storage().data_ptr()
    assert mlp.up_proj.weight.untyped_storage().data_ptr() == mlp.gate_proj.weight.untyped_storage().data_ptr()


def test_generation_stops_at_the_model_s_context_with_a_warning():
    """Positions past max_position_embeddings were never trained: the loop stops there and says so."""
    model = tiny_model("llama", max_position_embeddings=16)
    ids = prompt(length=6)
    with pytest.warns(RuntimeWarning, match=r"prompt \(6 tokens\) plus max_new_tokens 40 exceeds the model's context"):
        result = FastDecoder(model).generate(ids, 40)
    assert result.tokens.shape[1] == 16 and result.new_tokens == 10
    assert torch.equal(result.tokens, hf_greedy(model, ids, 10))
    with pytest.raises(ValueError, match="no room is left"):
        FastDecoder(model).generate(prompt(length=16), 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_a_16bit_head_is_read_as_it_is_by_the_16bit_kernel(dtype):
    """A model loaded in bf16/fp16 on the CPU: the lean loop multiplies its head weight directly (no copy) in fp32."""
    model = tiny_model("llama", seed=3).to(dtype)
    decoder = FastDecoder(model, max_length=32, head_dtype="auto")
    assert decoder.head_weight.data_ptr() == model.lm_head.weight.data_ptr()
    ids = prompt()
    decoder.generate(ids, 1)
    ours = decoder.forward(ids[:, -1:], ids.shape[1])
    plain = FastDecoder(model, max_length=32, head_dtype=None)  # None: the module (torch's matmul), as before
    assert plain.head_weight is None
    plain.generate(ids, 1)
    theirs = plain.forward(ids[:, -1:], ids.shape[1])
    assert ours.dtype == dtype
    # the same loop; only the head's arithmetic differs (fp32 sums, rounded once to the 16-bit dtype)
    torch.testing.assert_close(ours.float(), theirs.float(), **({"rtol": 2e-2, "atol": 2e-2} if dtype == torch.bfloat16
                                                               else {"rtol": 2e-3, "atol": 2e-3}))


def packed_ternary_model(seed=5, family="llama"):
    grid = TernaryGrid("absmean", group=32)
    model = tiny_model(family, seed=seed)
    weights = quantize_(model, RTNConfig(grid=grid)).weights
    pack_model(model, weights)
    return model.eval()


def quantize_block_inputs(model, grid):
    from tritium.nn.activation_quant import install_activation_quantizers

    names = [name for name, module in model.named_modules() if getattr(module, "is_packed_linear", False)]
    install_activation_quantizers(model, {name: grid for name in names})
    return len(names)


def count_calls(monkeypatch, module, name):
    calls = []
    original = getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def test_an_a8_model_fuses_its_int8_projections_and_decodes_like_generate(monkeypatch):
    """W1.58A8: q/k/v and gate/up each run as one tritium::packed_linear_a8 call where the int8 kernel runs; the
    tokens and logits are those of the model's own forward, whose modules quantize their inputs themselves."""
    import tritium.kernels as kernels
    from tritium.quant.activations import ActivationGrid

    model = packed_ternary_model()
    quantize_block_inputs(model, ActivationGrid(bits=8))
    ids = prompt(2)
    expected = hf_greedy(model, ids, 10)
    calls = count_calls(monkeypatch, kernels, "packed_linear_a8")
    decoder = FastDecoder(model, max_length=64)
    decoder.generate(ids[:, :-1], 1)  # fills the cache up to the last prompt position
    calls.clear()
    with torch.no_grad():
        logits = decoder.forward(ids[:, -1:], ids.shape[1] - 1)
        reference = model(ids).logits[:, -1]
    blocks = model.config.num_hidden_layers
    # 4 calls a block (q/k/v, o, gate/up, down) on a CPU with the SIMD kernels; the portable path keeps float inputs
    assert len(calls) == (4 * blocks if kernels.planes_available() else 0)
    assert torch.allclose(logits, reference, atol=1e-4, rtol=1e-4)
    assert torch.equal(FastDecoder(model, max_length=64).generate(ids, 10).tokens, expected)


def test_an_a4_model_s_linears_run_through_their_modules_so_their_quantizers_run():
    from tritium.quant.activations import ActivationGrid

    model = packed_ternary_model(seed=6)
    quantize_block_inputs(model, ActivationGrid(bits=4))
    ids = prompt(3)
    ours = FastDecoder(model, max_length=64).generate(ids, 10).tokens
    assert torch.equal(ours, hf_greedy(model, ids, 10))
    decoder = FastDecoder(model, max_length=64)
    decoder.generate(ids[:, :-1], 1)
    plain = packed_ternary_model(seed=6)  # the same weights with float inputs: what skipping the hooks would give
    with torch.no_grad():
        ours = decoder.forward(ids[:, -1:], ids.shape[1] - 1)
        assert torch.allclose(ours, model(ids).logits[:, -1], atol=1e-4, rtol=1e-4)
        assert not torch.allclose(ours, plain(ids).logits[:, -1], atol=1e-2)


def test_models_with_online_rotations_or_other_hooks_are_refused_not_decoded_wrongly():
    from tritium.models.online_rotation import OnlineRotationSettings, add_online_rotations_
    from tritium.runtime import fast_decode_unsupported_reason

    rotated = tiny_model("llama", seed=3)
    rotated.set_attn_implementation("sdpa")
    add_online_rotations_(rotated, OnlineRotationSettings(online_rotation="down_proj"))
    with pytest.raises(UnsupportedForFastDecode, match="tritium_online_sdpa"):
        FastDecoder(rotated)
    hooked = tiny_model("llama", seed=3)
    hooked.model.layers[1].post_attention_layernorm.register_forward_hook(lambda module, args, out: out * 2)
    assert "model.layers.1.post_attention_layernorm" in fast_decode_unsupported_reason(hooked)
    outer = tiny_model("llama", seed=3)
    outer.model.register_forward_pre_hook(lambda module, args: None)
    assert "model.model's own forward" in fast_decode_unsupported_reason(outer)


def test_a_hooked_lm_head_runs_as_its_module():
    model = tiny_model("llama", seed=3).eval()
    model.lm_head.register_forward_hook(lambda module, args, out: out + 1.0)
    ids = prompt()
    decoder = FastDecoder(model, max_length=64, head_dtype="auto")
    decoder.generate(ids[:, :-1], 1)
    with torch.no_grad():
        reference = model(ids).logits[:, -1]
        assert torch.allclose(decoder.forward(ids[:, -1:], ids.shape[1] - 1), reference, atol=1e-4, rtol=1e-4)
    with pytest.raises(UnsupportedForFastDecode, match="hooks"):
        FastDecoder(model, head_dtype=torch.float16)
