import copy

import pytest
import torch

from tritium.calib import BlockResult, PipelineSettings, run_blockwise
from tritium.methods import config_from_dict, quantize_
from tritium.methods.awq import AWQConfig, clip_ratios, fold_scale, inspected_module, scale_objective
from tritium.methods.base import selected_linears
from tritium.models import decoder_layout, tiny_model
from tritium.quant.grids import TernaryGrid, UniformGrid, quantize_weight

from tiny_outliers import calibration_ids, hidden_error, outlier_model


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_folding_scales_leaves_the_float_block_unchanged(family):
    model = tiny_model(family, num_attention_heads=4, num_key_value_heads=4)  # no GQA: v→o folds too
    layout = decoder_layout(model)
    block = layout.blocks[0]
    x = torch.randn(2, 8, 64)
    kwargs = {"position_embeddings": model.model.rotary_emb(x, torch.arange(8)[None])}
    with torch.no_grad():
        before = block(x, **kwargs)
        for group in layout.scale_groups:
            assert group.producer is not None
            width = block.get_submodule(group.consumers[0]).in_features
            scale = torch.rand(width, generator=torch.Generator().manual_seed(width)) * 3 + 0.2
            fold_scale(block, group.producer, group.consumers, scale, layout.norm_weight_offset)
        after = block(x, **kwargs)
    assert torch.allclose(before, after, atol=1e-5, rtol=1e-4)


def test_clip_ratios_shrink_uniform_ranges_and_bracket_one_for_ternary():
    config = AWQConfig()
    uniform = clip_ratios(UniformGrid(bits=2), config)
    assert uniform[0] == 1.0 and min(uniform) >= config.clip_max_shrink
    ternary = clip_ratios(TernaryGrid(), config)
    assert 1.0 in ternary and min(ternary) < 1 < max(ternary)


@pytest.mark.parametrize("family,grid", [
    ("llama", {"kind": "uniform", "bits": 2, "group": 16}),
    ("llama", {"kind": "uniform", "bits": 3, "group": "channel"}),
    ("llama", {"kind": "ternary", "variant": "absmean", "group": 16}),
    ("gemma", {"kind": "ternary", "variant": "dlt", "group": 16}),
])
def test_awq_lowers_block_output_error_against_rtn(family, grid, calib_ids):
    reference = outlier_model(family)
    rtn = outlier_model(family)
    quantize_(rtn, config_from_dict("rtn", grid))
    awq = outlier_model(family)
    result = quantize_(awq, config_from_dict("awq", grid, n_grid=10, clip_n_grid=10), calib_ids)
    assert hidden_error(awq, reference, calib_ids) < hidden_error(rtn, reference, calib_ids)
    # The scales moved into the norms: the model's norm weights are no longer the float ones.
    assert not torch.equal(decoder_layout(awq).blocks[0].input_layernorm.weight,
                           decoder_layout(reference).blocks[0].input_layernorm.weight) or \
        result.details["blocks"][0]["input_layernorm.alpha"] is None


def test_the_scale_search_inspects_the_module_that_holds_the_group():
    groups = {g.producer: inspected_module(g.consumers) for g in decoder_layout(tiny_model()).scale_groups}
    assert groups == {"input_layernorm": "self_attn", None: "self_attn.o_proj",
                      "post_attention_layernorm": "mlp", "mlp.up_proj": "mlp.down_proj"}


@pytest.mark.parametrize("producer,module", [("input_layernorm", "self_attn"), ("post_attention_layernorm", "mlp")])
def test_the_scale_objective_is_the_error_of_the_whole_module_output(producer, module):
    """At s = 1 the objective is the MSE of the attention (or MLP) output with its consumers
    RTN-quantized, measured here independently on a copy of the block: the error goes through
    the softmax and the gate, not just through each linear's own output."""
    grid = UniformGrid(bits=2, group=16)
    model = outlier_model()
    layout = decoder_layout(model)
    seen = []

    def spy(ctx):
        if ctx.index == 0:
            group = next(g for g in ctx.scale_groups if g.producer == producer)
            objective = scale_objective(ctx, group.consumers, list(group.consumers), grid, ctx.quant_inputs)
            width = ctx.block.get_submodule(group.consumers[0]).in_features
            quantized = copy.deepcopy(ctx.block)
            for name in group.consumers:
                linear = quantized.get_submodule(name)
                linear.weight.data = quantize_weight(linear.weight, grid).dequantize()
            outputs = []
            for block in (ctx.block, quantized):
                handle = block.get_submodule(module).register_forward_hook(
                    lambda m, args, out: outputs.append(out[0] if isinstance(out, tuple) else out))
                with torch.no_grad():
                    block(ctx.quant_inputs, **ctx.kwargs)
                handle.remove()
            expected = float((outputs[1] - outputs[0]).pow(2).mean())
            seen.append((objective(torch.ones(width)), expected))
        return BlockResult({})

    run_blockwise(model, layout, selected_linears(layout, ()), calibration_ids(), spy, PipelineSettings(),
                  grid, "spy", progress=False)
    (got, expected), = seen
    assert expected > 0 and got == pytest.approx(expected, rel=1e-5)
