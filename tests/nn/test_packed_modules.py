import pytest
import torch

from tritium.methods import RTNConfig, quantize_
from tritium.models import tiny_model
from tritium.nn import (
    PackedLinear,
    QuantLinear,
    TernaryLinear,
    pack_model,
    packed_bits_report,
    packed_modules,
)
from tritium.pack import PackError
from tritium.quant import TernaryGrid, UniformGrid, quantize_weight

GRIDS = {
    "ternary-absmean-channel": TernaryGrid("absmean", group="channel"),
    "ternary-dlt-g32": TernaryGrid("dlt", group=32),
    "ternary-twn-g48-ragged": TernaryGrid("twn", group=48, ragged_groups=True),
    "w4g32": UniformGrid(4, group=32),
    "w3g64-sym": UniformGrid(3, group=64, symmetric=True),
    "w2-channel": UniformGrid(2, group="channel"),
}


def _fake_and_packed(family, grid, layout="base3", seed=0):
    fake = tiny_model(family, seed=seed)
    result = quantize_(fake, RTNConfig(grid=grid))
    packed = tiny_model(family, seed=seed)
    quantize_(packed, RTNConfig(grid=grid))
    pack_model(packed, result.weights, ternary_layout=layout)
    return fake, packed, result


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
@pytest.mark.parametrize("grid_name", list(GRIDS))
def test_packed_model_reproduces_fake_quant_logits(family, grid_name):
    fake, packed, result = _fake_and_packed(family, GRIDS[grid_name], layout="2bit" if "twn" in grid_name else "base3")
    modules = packed_modules(packed)
    assert set(modules) == set(result.weights)
    assert not any(isinstance(m, torch.nn.Linear) for n, m in packed.named_modules() if n in result.weights)
    ids = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        # batch 1 / one token exercises the lookup kernel; the longer batch the decode + GEMM path
        for chunk in (ids, ids[:1, :1], ids[:1, :3]):
            torch.testing.assert_close(packed(chunk).logits, fake(chunk).logits, rtol=1e-4, atol=1e-4)


def test_packed_modules_hold_no_float_weight():
    _, packed, _ = _fake_and_packed("llama", GRIDS["ternary-dlt-g32"])
    q_proj = packed.model.layers[0].self_attn.q_proj
    assert isinstance(q_proj, TernaryLinear)
    names = {n for n, _ in q_proj.named_buffers()} | {n for n, _ in q_proj.named_parameters()}
    assert names == {"packed", "scale", "shift"}
    assert q_proj.packed.dtype == torch.uint8 and q_proj.scale.dtype == torch.float16
    report = packed_bits_report(packed)
    # 32 trits take ceil(32/5) = 7 bytes; fp16 scale and shift per 32 weights
    assert report["bits_per_weight"] == pytest.approx(7 * 8 / 32 + (16 + 16) / 32)


def test_generate_with_kv_cache_on_packed_model():
    fake, packed, _ = _fake_and_packed("qwen2", GRIDS["ternary-dlt-g32"])
    prompt = torch.randint(0, 512, (1, 6), generator=torch.Generator().manual_seed(3))
    kwargs = dict(max_new_tokens=8, do_sample=False, use_cache=True, return_dict_in_generate=True, output_scores=True)
    got, want = packed.generate(prompt, **kwargs), fake.generate(prompt, **kwargs)
    assert torch.equal(got.sequences, want.sequences)
    for a, b in zip(got.scores, want.scores):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # The cached path agrees with one full forward over the generated sequence.
    with torch.no_grad():
        full = packed(got.sequences).logits[0, prompt.shape[1] - 1:-1]
    torch.testing.assert_close(torch.stack([s[0] for s in got.scores]), full, rtol=1e-4, atol=1e-4)


def test_module_classes_and_errors():
    w = torch.randn(16, 40)
    module = PackedLinear.from_quantized(quantize_weight(w, UniformGrid(4, group=8)), bias=torch.randn(16))
    assert isinstance(module, QuantLinear) and module.zero is not None
    x = torch.randn(3, 40)
    torch.testing.assert_close(module(x), x @ quantize_weight(w, UniformGrid(4, group=8)).dequantize().T + module.bias)
    with pytest.raises(RuntimeError, match="expects 40"):
        module(torch.randn(3, 41))
    model = tiny_model("llama")
    with pytest.raises(PackError, match="no such module"):
        pack_model(model, {"model.layers.9.mlp.up_proj": quantize_weight(w, UniformGrid(4, group=8))})
    with pytest.raises(PackError, match="another model"):
        pack_model(model, {"model.layers.0.mlp.up_proj": quantize_weight(w, UniformGrid(4, group=8))})


def test_cpu_kernel_layout_follows_new_weights():
    from tritium.pack import pack_quantized

    grid = TernaryGrid("absmean", group=8)
    first, second = (quantize_weight(torch.randn(16, 40), grid) for _ in range(2))
    module = PackedLinear.from_quantized(first)
    x = torch.randn(1, 40)
    torch.testing.assert_close(module(x), x @ first.dequantize().T)
    module.load_packed(pack_quantized(second))  # new tensors
    torch.testing.assert_close(module(x), x @ second.dequantize().T)
    module.packed.copy_(pack_quantized(first).packed)  # same tensor, edited in place
    module.scale.copy_(pack_quantized(first).scale)
    torch.testing.assert_close(module(x), x @ first.dequantize().T)
