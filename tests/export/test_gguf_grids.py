"""Models quantized on a GGUF grid export to that very type, losslessly, and llama.cpp runs them like tritium."""

import gguf
import llama_cpp  # noqa: F401  (installed with the project: if it is missing these tests fail, never skip)
import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader

from tritium.export.api import export_model
from tritium.export.gguf import write_gguf
from tritium.export.gguf_tensors import GGUFTypeError, choose_tensor_type, decode_tensor, encode_tensor
from tritium.methods import RTNConfig, quantize_
from tritium.methods.gptq import GPTQConfig, gptq_quantize
from tritium.models import tiny_model
from tritium.quant import GGUF_BLOCK_TYPES, GGUFBlockGrid, fake_quantize, quantize_weight

from test_gguf import assert_llama_cpp_matches

TYPES = list(GGUF_BLOCK_TYPES)
# llama.cpp multiplies the k-quants with activations rounded to int8 over 256-blocks (Q8_K), the simple
# types with 32-blocks (Q8_0/Q8_1): its logits stray further from tritium's float activations there, though
# the weights it reads are tritium's bit for bit (checked on read-back).
LOGIT_TOLERANCE = {t: 0.25 for t in TYPES if GGUF_BLOCK_TYPES[t].super_block}
FILE_TYPES = {"q3_k": "MOSTLY_Q3_K_S", "q4_k": "MOSTLY_Q4_K_S", "q5_k": "MOSTLY_Q5_K_S"}  # the others: MOSTLY_<type>


def edge_weight():
    """Random rows plus the blocks that break careless encoders: zero, constant, an outlier, one sign only."""
    w = torch.randn(6, 256, generator=torch.Generator().manual_seed(0))
    w[0, :32] = 0
    w[1, 32:64] = -0.25
    w[2, 70] = 9.0
    w[3, 96:128] = w[3, 96:128].abs() + 2
    w[4, 128:160] = -w[4, 128:160].abs()
    return w


def correlated_hessian(width=256, seed=1):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(512, width, generator=generator) @ torch.randn(width, width, generator=generator) / 8
    return 2 * x.t() @ x / x.shape[0]


@pytest.mark.parametrize("gtype", TYPES)
@pytest.mark.parametrize("method", ["rtn", "gptq", "gptq-act-order"])
def test_every_type_round_trips_bit_exactly_through_ggufs_own_dequantizer(gtype, method):
    grid = GGUFBlockGrid(gtype)
    w = edge_weight()
    if method == "rtn":
        qw = quantize_weight(w, grid)
    else:
        qw, _ = gptq_quantize(w, correlated_hessian(), grid, act_order=method.endswith("act-order"))
    qtype = GGMLQuantizationType[gtype.upper()]
    choice = choose_tensor_type(qw, "tq1_0")
    assert choice.qtype == qtype and not choice.fallback
    raw = encode_tensor(qw, qtype)
    block, type_size = GGML_QUANT_SIZES[qtype]
    assert raw.dtype == np.uint8 and raw.shape == (6, 256 // block * type_size)
    decoded = decode_tensor(raw, qtype)
    ours = qw.dequantize(torch.float32).numpy()
    assert decoded.dtype == np.float32 and np.array_equal(decoded, ours)
    if method == "rtn":  # and that is the weight the fake-quant model computes with
        assert np.array_equal(fake_quantize(w, grid).detach().numpy(), decoded)


@pytest.mark.parametrize("gtype, bits", [("q2_k", 4), ("q3_k", 6), ("q4_k", 6), ("q5_k", 6), ("q6_k", 8)])
def test_k_quant_sub_block_scales_that_are_not_multiples_of_one_d_are_refused(gtype, bits):
    qtype = GGMLQuantizationType[gtype.upper()]
    qw = quantize_weight(torch.randn(2, 256), GGUFBlockGrid(gtype))
    qw.scale[0, 3] *= 1.001
    with pytest.raises(GGUFTypeError, match=f"sub-block scales are not {bits}-bit multiples of one fp16 value.*"
                                            f"{gtype.upper()} cannot hold them exactly"):
        encode_tensor(qw, qtype)
    if GGUF_BLOCK_TYPES[gtype].has_min:
        qw = quantize_weight(torch.randn(2, 256), GGUFBlockGrid(gtype))
        qw.shift[1, 0] = 0.5  # a min that raises the sub-block: the k-quants' mins only lower it
        with pytest.raises(GGUFTypeError, match=f"a sub-block min raises its sub-block, but {gtype.upper()}'s mins"):
            encode_tensor(qw, qtype)
        qw = quantize_weight(torch.randn(2, 256), GGUFBlockGrid(gtype))
        qw.shift[1, 0] *= 1.001
        with pytest.raises(GGUFTypeError, match=f"sub-block mins are not {bits}-bit multiples"):
            encode_tensor(qw, qtype)


@pytest.mark.parametrize("gtype", TYPES)
def test_every_code_and_sub_block_integer_lands_where_ggufs_dequantizer_reads_it(gtype):
    """Random codes and sub-block integers over their whole ranges (all 243 trit patterns of a TQ1_0 byte,
    every 6-bit Q3_K scale, ...), not only those a quantizer happens to choose."""
    from tritium.quant import GroupLayout, QuantizedWeight

    grid = GGUFBlockGrid(gtype)
    fmt, generator = grid.format, torch.Generator().manual_seed(5)
    rows, width = 64, 512
    layout = GroupLayout(rows, width, grid.group)
    codes = torch.randint(0, grid.levels, (rows, width), generator=generator, dtype=torch.uint8)
    n_groups = width // grid.group

    def fp16_values(shape):
        return (torch.rand(shape, generator=generator) * 0.02 + 1e-3).half().float()

    def integers(code, shape, nonzero):
        k = torch.randint(code.low, code.high + 1, shape, generator=generator).float()
        return torch.where(k == 0, 1.0, k) if nonzero else k

    zero = shift = None
    if fmt.super_block:
        per_super = 256 // grid.group
        scale = (fp16_values((rows, n_groups // per_super, 1)) * integers(fmt.sub_scale, (rows, n_groups // per_super,
                                                                                         per_super), True))
        scale = scale.reshape(rows, n_groups)
        if grid.has_min:
            shift = -(fp16_values((rows, n_groups // per_super, 1)) *
                      integers(fmt.sub_min, (rows, n_groups // per_super, per_super), False)).reshape(rows, n_groups)
    else:
        scale = fp16_values((rows, n_groups))
        shift = -fp16_values((rows, n_groups)) if grid.has_min else None
    if not grid.has_min:
        zero = torch.full_like(scale, float(grid.fixed_zero))
    qw = QuantizedWeight(codes, scale, grid, layout, zero=zero, shift=shift)
    qtype = GGMLQuantizationType[gtype.upper()]
    assert np.array_equal(decode_tensor(encode_tensor(qw, qtype), qtype), qw.dequantize().numpy())


def test_scales_that_are_not_fp16_values_are_refused_rather_than_rounded():
    qw = quantize_weight(torch.randn(2, 64), GGUFBlockGrid("q4_1"))
    qw.scale[0, 0] = 1 / 3
    with pytest.raises(GGUFTypeError, match=r"blk\.0\.ffn_up: its scale \(d\) values are not fp16"):
        encode_tensor(qw, GGMLQuantizationType.Q4_1, name="blk.0.ffn_up")
    with pytest.raises(GGUFTypeError, match="stored as Q4_1, not Q8_0"):
        encode_tensor(qw, GGMLQuantizationType.Q8_0)


def small_llama(hidden=256, seed=0, intermediate=None):
    model = tiny_model("llama", seed=seed, hidden_size=hidden, intermediate_size=intermediate or 2 * hidden,
                       num_attention_heads=4, num_key_value_heads=2)
    with torch.no_grad():  # sharper attention and logits, so a wrong q/k row order would show
        for layer in model.model.layers:
            layer.self_attn.q_proj.weight.mul_(4)
            layer.self_attn.k_proj.weight.mul_(4)
        model.lm_head.weight.mul_(3)
    return model


def _file_type(path):
    return int(GGUFReader(path).fields["general.file_type"].parts[-1][0])


@pytest.mark.parametrize("gtype", TYPES)
def test_llama_cpp_runs_a_gguf_grid_model_like_tritium(tmp_path, tokenizer, gtype):
    model = small_llama()
    result = quantize_(model, RTNConfig(grid=GGUFBlockGrid(gtype)))
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, tokenizer=tokenizer)
    assert report.type_counts()[gtype.upper()] == 14 and report.fallback_reasons == {}
    assert report.max_abs_error == 0.0  # checked bit for bit on read-back
    assert report.linear_bits_per_weight == pytest.approx(GGUF_BLOCK_TYPES[gtype].bits_per_weight)
    file_type = FILE_TYPES.get(gtype, f"MOSTLY_{gtype.upper()}")
    assert _file_type(tmp_path / "m.gguf") == getattr(gguf.LlamaFileType, file_type)
    assert_llama_cpp_matches(tmp_path / "m.gguf", model, LOGIT_TOLERANCE.get(gtype, 0.1))


@pytest.mark.parametrize("gtype", ["q4_0", "q4_1", "q2_k", "q3_k", "q4_k", "q6_k", "tq1_0"])
def test_a_gptq_model_on_a_gguf_grid_exports_losslessly_and_runs_in_llama_cpp(tmp_path, tokenizer, gtype):
    model = small_llama()
    calibration = torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(2))
    result = quantize_(model, GPTQConfig(grid=GGUFBlockGrid(gtype), act_order=True), calibration)
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, tokenizer=tokenizer)
    assert report.type_counts()[gtype.upper()] == 14 and report.max_abs_error == 0.0
    assert_llama_cpp_matches(tmp_path / "m.gguf", model, LOGIT_TOLERANCE.get(gtype, 0.1))


@pytest.mark.parametrize("packed", [False, True])
# the k-quants' sub-block scales are float32 products, not fp16 (Q3_K's signed); TQ1_0 packs base 3 in blocks of 256
@pytest.mark.parametrize("gtype", ["q5_1", "q4_k", "q3_k", "tq1_0"])
def test_fake_and_packed_folders_on_a_gguf_grid_export_losslessly(tmp_path, tokenizer, packed, gtype):
    from tritium.export.hf import save_fake_quantized, save_packed
    from tritium.nn import GGUFBlockLinear, pack_model
    from tritium.quant import grid_to_dict

    grid = GGUFBlockGrid(gtype)
    model = small_llama(hidden=256 if grid.format.row_multiple == 256 else 128)
    result = quantize_(model, RTNConfig(grid=grid))
    folder = tmp_path / "model"
    ids = torch.randint(3, 512, (1, 16), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        fake_logits = model(ids).logits
    if packed:
        pack_model(model, result.weights)
        assert isinstance(model.model.layers[0].mlp.down_proj, GGUFBlockLinear)
        with torch.no_grad():  # the packed modules compute what the fake-quant weights compute
            assert torch.allclose(model(ids).logits, fake_logits, atol=1e-4)
        save_packed(model, tokenizer, folder, "rtn", grid_to_dict(grid), (), result.method_args)
    else:
        save_fake_quantized(model, tokenizer, folder, "rtn", grid_to_dict(grid), (), result.method_args,
                            weights=result.weights)
    report = export_model(folder, "gguf", tmp_path / "m.gguf")
    gguf_report = report.details["gguf"]
    assert gguf_report.type_counts()[gtype.upper()] == 14 and gguf_report.max_abs_error == 0.0
    assert not any("fallback" in line for line in report.lines)
    tensors = {t.name: t for t in GGUFReader(tmp_path / "m.gguf").tensors}
    down = tensors["blk.1.ffn_down.weight"]
    want = result.weights["model.layers.1.mlp.down_proj"].dequantize().numpy()
    assert np.array_equal(decode_tensor(np.asarray(down.data), down.tensor_type).reshape(want.shape), want)


def test_a_model_with_fallback_linears_exports_each_in_its_own_type_and_runs_in_llama_cpp(tmp_path, tokenizer):
    from tritium.export.hf import save_fake_quantized
    from tritium.quant import grid_to_dict

    model = small_llama(intermediate=288)  # the down projections read 288 inputs: Q4_0, as llama.cpp's quantize does
    result = quantize_(model, RTNConfig(grid=GGUFBlockGrid("q2_k")))
    assert sorted(result.details["gguf_fallbacks"]) == ["model.layers.0.mlp.down_proj", "model.layers.1.mlp.down_proj"]
    folder = tmp_path / "model"
    save_fake_quantized(model, tokenizer, folder, "rtn", grid_to_dict(result.grid), (), result.method_args,
                        weights=result.weights, grid_overrides=result.grid_overrides_dict())
    report = export_model(folder, "gguf", tmp_path / "m.gguf").details["gguf"]
    assert report.type_counts() == {"Q2_K": 12, "Q4_0": 2, "F32": 5, "F16": 2} and report.max_abs_error == 0.0
    assert report.tensor_types["blk.1.ffn_down.weight"] == "Q4_0"
    assert _file_type(tmp_path / "m.gguf") == gguf.LlamaFileType.MOSTLY_Q2_K
    assert_llama_cpp_matches(tmp_path / "m.gguf", model, LOGIT_TOLERANCE["q2_k"])
