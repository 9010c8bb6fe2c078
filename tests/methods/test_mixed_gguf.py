"""The bit allocator over llama.cpp's block formats: ``--bits-budget`` with ``--grid gguf:TYPE`` picks a GGUF type
per linear, counting each format's own scale bits, and the result exports to GGUF in those types."""

import pytest
import torch

from tritium.export.gguf import write_gguf
from tritium.methods import config_from_dict, quantize_
from tritium.methods.mixed import bits_table, check_mixed_precision, default_candidates, linear_grids
from tritium.methods.base import get_method
from tritium.models import decoder_layout, tiny_model, tiny_tokenizer
from tritium.quant import GGUF_BLOCK_TYPES, GGUFBlockGrid, QuantConfigError

K_QUANTS = tuple(GGUFBlockGrid(t) for t in ("q2_k", "q3_k", "q4_k", "q5_k", "q6_k"))


def many_small_linears(layers=6, intermediate=256):
    """Widths that divide 256, and enough small linears (k and v read 256 inputs into 64 rows) that one step up a
    type moves the average by less than a hundredth of a bit."""
    return tiny_model("llama", seed=0, num_hidden_layers=layers, hidden_size=256, intermediate_size=intermediate,
                      num_attention_heads=4, num_key_value_heads=1)


def calibration():
    return torch.randint(0, 512, (4, 32), generator=torch.Generator().manual_seed(1))


def test_the_default_candidates_of_a_gguf_grid_are_gguf_types():
    assert default_candidates(GGUFBlockGrid("q2_k")) == K_QUANTS == default_candidates(GGUFBlockGrid("q6_k"))
    assert default_candidates(GGUFBlockGrid("tq2_0")) == (GGUFBlockGrid("tq2_0"), *K_QUANTS)
    assert default_candidates(GGUFBlockGrid("q4_0")) == tuple(map(GGUFBlockGrid, ("q4_0", "q5_0", "q8_0")))
    assert default_candidates(GGUFBlockGrid("q5_1")) == tuple(map(GGUFBlockGrid, ("q4_1", "q5_1", "q8_0")))


def test_the_bits_counted_are_the_formats_own_with_llama_cpps_fallbacks():
    model = tiny_model("llama", seed=0, num_hidden_layers=1, hidden_size=256, intermediate_size=288,
                       num_attention_heads=4, num_key_value_heads=2)
    linears = decoder_layout(model).quantizable_linears()
    table = bits_table(linears, K_QUANTS)
    up, down = "model.layers.0.mlp.up_proj", "model.layers.0.mlp.down_proj"
    # d, dmin and the sub-block integers included: Q2_K 2.625, Q3_K 3.4375, Q4_K 4.5, Q5_K 5.5, Q6_K 6.5625 bits
    assert [bits / (288 * 256) for bits in table[up]] == [2.625, 3.4375, 4.5, 5.5, 6.5625]
    # 288 inputs hold no 256-weight super-block: each k-quant stores down_proj in its fallback type
    assert linear_grids(linears, K_QUANTS)[down] == [GGUFBlockGrid(t) for t in ("q4_0", "q4_0", "q5_0", "q5_1",
                                                                               "q8_0")]
    assert [bits / (256 * 288) for bits in table[down]] == [4.5, 4.5, 5.5, 6.0, 8.5]


@pytest.mark.parametrize("base, budget", [("q2_k", 3.0), ("q4_k", 4.8), ("tq2_0", 2.4)])
def test_the_allocation_hits_the_budget_within_a_hundredth_of_a_bit_and_exports_in_its_types(tmp_path, base,
                                                                                            budget):
    model = many_small_linears()
    result = quantize_(model, config_from_dict("rtn", {"kind": "gguf", "type": base}, bits_budget=budget),
                       calibration())
    allocation = result.details["mixed_precision"]
    weights = sum(q.codes.numel() for q in result.weights.values())
    achieved = sum(q.codes.numel() * q.grid.bits_per_weight for q in result.weights.values()) / weights
    assert budget - 0.01 <= achieved <= budget + 1e-9
    assert allocation["achieved_bits_per_weight"] == pytest.approx(achieved, abs=1e-5)
    assert len({q.grid for q in result.weights.values()}) > 1  # a mix, not one type
    for name, layer in allocation["layers"].items():
        grid = result.weights[name].grid
        assert isinstance(grid, GGUFBlockGrid) and layer["grid"] == grid.describe()
        assert layer["label"] == grid.type.upper()  # the report names each layer's type
    report = write_gguf(model, tmp_path / "m.gguf", result.weights, tokenizer=tiny_tokenizer())
    assert report.max_abs_error == 0.0 and not report.fallback_reasons
    for name, qweight in result.weights.items():
        block, kind = name.split(".")[2], name.split(".")[-1]
        gguf_name = {"q_proj": "attn_q", "k_proj": "attn_k", "v_proj": "attn_v", "o_proj": "attn_output",
                     "gate_proj": "ffn_gate", "up_proj": "ffn_up", "down_proj": "ffn_down"}[kind]
        assert report.tensor_types[f"blk.{block}.{gguf_name}.weight"] == qweight.grid.type.upper()
    # the bits the allocator counted are the bytes in the file
    assert report.linear_bits_per_weight == pytest.approx(achieved, rel=1e-12)


def test_a_budget_no_gguf_allocation_reaches_is_refused_naming_the_range():
    model = many_small_linears(layers=1)
    linears = decoder_layout(model).quantizable_linears()
    for budget, range_text in [(2.0, "between 2.625 and 6.562"), (7.0, "between 2.625 and 6.562")]:
        config = config_from_dict("rtn", {"kind": "gguf", "type": "q2_k"}, bits_budget=budget)
        with pytest.raises(QuantConfigError, match=f"bits_budget {budget:g} cannot be reached.*gguf:q2_k, gguf:q3_k.*"
                                                   f"{range_text}"):
            check_mixed_precision(config, get_method("rtn"), linears)
    ternary = config_from_dict("rtn", {"kind": "gguf", "type": "tq2_0"}, bits_budget=2.0)
    with pytest.raises(QuantConfigError, match="between 2.062 and 6.562"):
        check_mixed_precision(ternary, get_method("rtn"), linears)
    assert GGUF_BLOCK_TYPES["tq2_0"].bits_per_weight == 2.0625
