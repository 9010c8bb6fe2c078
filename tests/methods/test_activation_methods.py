"""Weight + activation quantization in the methods: the model quantize_ leaves, the block pipeline's one switch
(GPTQ, AWQ and TesseraQ see quantized inputs), AWQ's scale objective, and the activation clipping search."""

from dataclasses import replace

import pytest
import torch

from tiny_outliers import calibration_ids, outlier_model
from tritium.calib.activation_clip import search_activation_clip_ratios
from tritium.calib.capture import capture_block_inputs
from tritium.calib.pipeline import BlockResult, PipelineSettings, block_forward, run_blockwise
from tritium.methods import RTNConfig, quantize_
from tritium.methods.awq import scale_objective
from tritium.methods.base import selected_linears
from tritium.methods.gptq import GPTQConfig, collect_hessians
from tritium.methods.grid_params import fake_quant_with, layout_for, rtn_params
from tritium.methods.tesseraq import TesseraQConfig
from tritium.models import decoder_layout, tiny_model
from tritium.nn.activation_quant import ActivationQuantizer, activation_grids, install_activation_quantizers
from tritium.quant import UniformGrid, quantize_weight
from tritium.quant.activations import ActivationGrid, fake_quantize_activations
from tritium.quant.grids import QuantConfigError

A8 = ActivationGrid(bits=8)
A4 = ActivationGrid(bits=4, symmetric=False)
W4 = UniformGrid(bits=4, group=32)


def test_the_model_quantize_leaves_quantizes_the_inputs_of_its_quantized_linears_only(calib_ids):
    model = tiny_model("llama")
    ids = calib_ids[:1]
    weights_only = tiny_model("llama")
    quantize_(weights_only, RTNConfig(grid=W4, skip=("*.mlp.down_proj",)))
    result = quantize_(model, RTNConfig(grid=W4, skip=("*.mlp.down_proj",), act_grid=A4))
    assert sorted(activation_grids(model)) == sorted(result.weights) == sorted(result.act_grids)
    assert not any(name.endswith("down_proj") for name in result.act_grids)  # a skipped linear stays float
    assert set(activation_grids(model).values()) == {A4}
    assert result.summary()["activations"]["grid"]["bits"] == 4 and "activations" not in result.method_args
    with torch.no_grad():  # the same weights, and the inputs quantized on top
        assert not torch.allclose(model(ids).logits, weights_only(ids).logits, atol=1e-3)
        install_activation_quantizers(weights_only, result.act_grids)
        assert torch.equal(model(ids).logits, weights_only(ids).logits)


def test_bad_activation_settings_fail_before_any_weight_changes(calib_ids):
    model = tiny_model("llama")
    before = model.model.layers[0].self_attn.q_proj.weight.clone()
    with pytest.raises(QuantConfigError, match="act_group 48 does not divide the input width 64 of "
                                                "model.layers.0.self_attn.q_proj .*pass --act-group 64 or 32 or 16"):
        quantize_(model, RTNConfig(grid=W4, act_grid=ActivationGrid(bits=8, group=48)))
    with pytest.raises(QuantConfigError, match="act_clip_search .* on calibration data"):
        quantize_(model, RTNConfig(grid=W4, act_grid=A4, act_clip_candidates=(1.0, 0.9)))
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, before) and not activation_grids(model)


def _walk(model, ids, method, grids):
    layout = decoder_layout(model)
    linears = selected_linears(layout, ())
    return run_blockwise(model, layout, linears, ids, method, PipelineSettings(activation_grids=grids), W4, "test",
                         progress=False)


def _rtn(ctx):
    return BlockResult({short: quantize_weight(m.weight.detach(), W4) for short, m in ctx.linears.items()})


def test_the_pipeline_quantizes_a_blocks_inputs_while_it_is_calibrated_and_feeds_on_the_quantized_block(calib_ids):
    model = outlier_model()
    layout = decoder_layout(model)
    inputs = capture_block_inputs(model, layout, calib_ids)
    with torch.no_grad():
        float_out = block_forward(layout.blocks[0], inputs.hidden, inputs.layer_kwargs[0], 8, torch.device("cpu"))
    grids = {name: A4 for name in layout.quantizable_linears()}
    seen = []

    def method(ctx):
        seen.append({"quantized": sorted(activation_grids(ctx.block)), "quant_inputs": ctx.quant_inputs.clone(),
                     "float_targets": ctx.float_targets.clone()})
        return _rtn(ctx)

    _walk(model, calib_ids, method, grids)
    assert [s["quantized"] for s in seen] == [sorted(layout.block_linears(i)) for i in range(2)]
    assert activation_grids(model) == {}  # each block is left as it was found, its weights quantized
    assert torch.allclose(seen[0]["float_targets"], float_out, atol=1e-6)  # the targets stay float
    # block 1 reads block 0 as it now computes: quantized weights and quantized inputs
    install_activation_quantizers(layout.blocks[0], {short: A4 for short in layout.block_linears(0)})
    with torch.no_grad():
        expected = block_forward(layout.blocks[0], inputs.hidden, inputs.layer_kwargs[0], 8, torch.device("cpu"))
    assert torch.allclose(seen[1]["quant_inputs"], expected, atol=1e-5)
    weights_only = outlier_model()
    seen_without = []
    _walk(weights_only, calib_ids, lambda ctx: seen_without.append(ctx.quant_inputs.clone()) or _rtn(ctx), None)
    assert not torch.allclose(seen_without[1], expected, atol=1e-3)


def test_gptq_measures_its_hessians_on_quantized_inputs(calib_ids):
    checked = []

    def method(ctx):
        raw = []
        ctx.forward_observed(ctx.quant_inputs, ["self_attn.q_proj"],
                             lambda _n: lambda _m, args: raw.append(args[0].reshape(-1, args[0].shape[-1])),
                             "raw inputs", before=True)
        x = torch.cat(raw).float()
        xq = fake_quantize_activations(x, A4)
        sums, count = collect_hessians(ctx, ("self_attn.q_proj",))["self_attn.q_proj"]
        assert count == x.shape[0]
        checked.append((torch.allclose(sums, xq.t() @ xq, rtol=1e-4, atol=1e-3),
                        torch.allclose(sums, x.t() @ x, rtol=1e-3, atol=1e-2)))
        return _rtn(ctx)

    _walk(outlier_model(), calib_ids, method, {n: A4 for n in decoder_layout(outlier_model()).quantizable_linears()})
    assert checked == [(True, False), (True, False)]


def test_awq_scores_a_scale_on_weight_and_activation_error_against_the_float_output(calib_ids):
    losses = []

    def method(ctx):
        name = "mlp.down_proj"
        raw = []
        ctx.forward_observed(ctx.quant_inputs, [name], lambda _n: lambda _m, args: raw.append(args[0]), "raw",
                             before=True)
        loss_for = scale_objective(ctx, (name,), [name], W4, ctx.quant_inputs)
        w = ctx.block.get_submodule(name).weight.detach().float()
        s = torch.rand(w.shape[1], generator=torch.Generator().manual_seed(ctx.index)) + 0.5
        scaled = w * s
        layout = layout_for(scaled, W4)
        wq = fake_quant_with(scaled, rtn_params(scaled, W4, layout), W4, layout) / s
        x = torch.cat(raw).float()
        expected = ((fake_quantize_activations(x / s, A4) * s) @ wq.t() - x @ w.t()).pow(2).mean()
        losses.append((loss_for(s), float(expected)))
        return _rtn(ctx)

    _walk(outlier_model(), calib_ids, method, {n: A4 for n in decoder_layout(outlier_model()).quantizable_linears()})
    for got, expected in losses:
        assert got == pytest.approx(expected, rel=1e-4)


def test_tesseraq_reconstructs_each_block_on_quantized_inputs(calib_ids, monkeypatch):
    calls = {"training": 0}
    real = ActivationQuantizer.__call__

    def counting(self, module, args):
        if torch.is_grad_enabled():
            calls["training"] += 1
        return real(self, module, args)

    monkeypatch.setattr(ActivationQuantizer, "__call__", counting)
    model = outlier_model()
    config = TesseraQConfig(grid=W4, act_grid=A4, soft_fractions=(0.5,), steps_per_stage=2, batch_size=2, n_grid=4,
                            clip_n_grid=4, search_tokens=64, clip_tokens=64)
    result = quantize_(model, config, calib_ids[:4])
    assert calls["training"] > 0  # the Adam steps' forward passes went through the quantizers
    assert sorted(activation_grids(model)) == sorted(result.weights)
    assert result.method_args.get("activations") is None  # the record is the result's, not a method option


def test_gptq_with_activations_is_a_different_run_than_without(calib_ids):
    with_act, without = outlier_model(), outlier_model()
    a = quantize_(with_act, GPTQConfig(grid=W4, act_grid=A4), calib_ids)
    b = quantize_(without, GPTQConfig(grid=W4), calib_ids)
    assert any(not torch.equal(a.weights[n].codes, b.weights[n].codes) for n in a.weights)


def test_the_clipping_search_keeps_each_linears_least_error_ratio(calib_ids):
    model = outlier_model()
    linears = selected_linears(decoder_layout(model), ())
    candidates = (1.0, 0.9, 0.8, 0.7)
    ratios = search_activation_clip_ratios(model, linears, A4, calib_ids, candidates, tokens=64)
    assert set(ratios) == set(linears) and set(ratios.values()) <= set(candidates)
    name = "model.layers.1.mlp.down_proj"
    raw = []
    handle = linears[name].register_forward_pre_hook(lambda _m, args: raw.append(args[0].reshape(-1, args[0].shape[-1])))
    with torch.no_grad():
        model(input_ids=calib_ids[:2])  # 64 tokens: 2 samples of 32
    handle.remove()
    x, w = torch.cat(raw), linears[name].weight.detach()
    errors = [float((fake_quantize_activations(x, replace(A4, clip_ratio=r)) @ w.t() - x @ w.t()).pow(2).sum())
              for r in candidates]
    assert ratios[name] == candidates[errors.index(min(errors))]
    assert set(search_activation_clip_ratios(model, linears, A4, calib_ids, (1.0,), tokens=64).values()) == {1.0}
    fresh = outlier_model()
    searched = search_activation_clip_ratios(fresh, selected_linears(decoder_layout(fresh), ()), A4, calib_ids,
                                             candidates)
    result = quantize_(model, RTNConfig(grid=W4, act_grid=A4, act_clip_candidates=candidates), calib_ids)
    assert {n: g.clip_ratio for n, g in result.act_grids.items()} == searched
    assert "activation_clip_search" in result.details


WA_RECIPES = ["w4a8-rtn", "w4a4-rtn", "w4a4-gptq-cpu", "w4a4-tesseraq-cpu", "w3a4-tesseraq-cpu"]


@pytest.mark.parametrize("name", WA_RECIPES)
@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
def test_the_wa_recipes_run_unchanged_on_every_family(name, family, data_dir, tokenizer):
    from tritium.recipes import load_recipe
    from tritium.runner import quantize_model

    recipe = load_recipe(name)
    model = tiny_model(family, max_position_embeddings=max(256, recipe["calib"]["seqlen"]))
    result, config = quantize_model(model, tokenizer, recipe, data_dir)
    assert len(result.weights) == 14 and sorted(activation_grids(model)) == sorted(result.weights)
    assert config.act_grid.bits == recipe["act_bits"]
    if recipe.get("act_clip_search"):
        assert "activation_clip_search" in result.details
    if recipe["method"] != "rtn":
        assert result.details["calibration_shape"] == [recipe["calib"]["samples"], recipe["calib"]["seqlen"]]
        assert result.method_args["forward_batch_size"] == 8
    with torch.no_grad():
        assert torch.isfinite(model(torch.randint(0, 500, (1, 16))).logits).all()
