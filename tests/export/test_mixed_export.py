"""Mixed precision in saved folders: each linear saves, packs and loads back on its own grid."""

import json

import torch
from transformers import AutoModelForCausalLM

import tritium  # noqa: F401  (registers quant_method "tritium")
from tritium.cli import main
from tritium.eval.size import size_report
from tritium.export.codes import load_codes
from tritium.export.hf import grids_from_dicts, save_fake_quantized, save_packed
from tritium.methods import RTNConfig, quantize_
from tritium.models import decoder_layout, tiny_model, tiny_tokenizer
from tritium.nn import QuantLinear, TernaryLinear, pack_model, packed_modules, packed_to_quantized
from tritium.quant import TernaryGrid, UniformGrid, grid_to_dict

IDS = torch.randint(0, 512, (2, 12), generator=torch.Generator().manual_seed(0))
GRID = UniformGrid(2, group=32)
OVERRIDES = {"*.mlp.down_proj": UniformGrid(4, group=32), "*.self_attn.o_proj": UniformGrid(3, group=32),
             "model.layers.0.mlp.up_proj": TernaryGrid("dlt", group=32),
             "model.layers.1.self_attn.v_proj": UniformGrid(3, group=32, symmetric=True)}


def _mixed(family="llama"):
    model = tiny_model(family, seed=0)
    result = quantize_(model, RTNConfig(grid=GRID, grid_overrides=OVERRIDES))
    assert len({q.grid for q in result.weights.values()}) == 5
    return model, result


def _save_args(result):
    return ("rtn", grid_to_dict(result.grid), (), result.method_args)


def test_fake_folder_records_and_reloads_each_linears_grid(tmp_path):
    model, result = _mixed()
    save_fake_quantized(model, tiny_tokenizer(), tmp_path / "fake", *_save_args(result), weights=result.weights,
                        grid_overrides=result.grid_overrides_dict())
    qconfig = json.loads((tmp_path / "fake" / "config.json").read_text())["quantization_config"]
    overrides = grids_from_dicts(qconfig["grid_overrides"])
    assert overrides == result.grid_overrides and "model.layers.0.mlp.gate_proj" not in overrides
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "fake")
    for name, module in decoder_layout(loaded).quantizable_linears().items():
        assert torch.equal(module.weight, model.get_submodule(name).weight)
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)
    # The codes sidecar holds every linear's codes on its own grid.
    codes = load_codes(tmp_path / "fake")
    assert grids_from_dicts(codes.grid_overrides) == result.grid_overrides
    for name, qweight in result.weights.items():
        again = packed_to_quantized(codes.weights[name], result.grid_for(name), name)
        assert torch.equal(again.dequantize(), qweight.dequantize())
    # The size report counts each linear on its own grid.
    size = size_report(loaded, result.grid, result.weights, overrides)
    assert size.linear_bits == sum(q.storage_bits() for q in result.weights.values())


def test_packed_folder_loads_back_with_each_linear_on_its_grid(tmp_path):
    for family in ("llama", "qwen2"):
        model, result = _mixed(family)
        pack_model(model, result.weights)
        folder = tmp_path / family
        save_packed(model, tiny_tokenizer(), folder, *_save_args(result), grid_overrides=result.grid_overrides_dict())
        loaded = AutoModelForCausalLM.from_pretrained(folder)
        modules = packed_modules(loaded)
        assert set(modules) == set(result.weights)
        for name, module in modules.items():
            grid = result.grid_for(name)
            assert isinstance(module, TernaryLinear if isinstance(grid, TernaryGrid) else QuantLinear)
            assert packed_to_quantized(module, grid, name).dequantize().equal(result.weights[name].dequantize())
        assert modules["model.layers.0.mlp.up_proj"].shift is not None  # DLT keeps its shift
        with torch.no_grad():
            assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_tritium_pack_packs_a_mixed_fake_folder(tmp_path):
    model, result = _mixed()
    save_fake_quantized(model, tiny_tokenizer(), tmp_path / "fake", *_save_args(result), weights=result.weights,
                        grid_overrides=result.grid_overrides_dict())
    # float32 float parts, so the logits show that packing is exact
    assert main(["pack", str(tmp_path / "fake"), "--out", str(tmp_path / "packed"), "--float-dtype", "float32"]) == 0
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "packed")
    assert isinstance(loaded.model.layers[0].mlp.up_proj, TernaryLinear)
    assert isinstance(loaded.model.layers[0].mlp.gate_proj, QuantLinear)
    pack_model(model, result.weights)  # the same packed modules, built in memory
    with torch.no_grad():
        assert torch.equal(loaded(IDS).logits, model(IDS).logits)


def test_unpacking_a_mixed_model_gives_back_every_linears_codes():
    from tritium.nn import unpack_model

    model, result = _mixed()
    pack_model(model, result.weights)
    weights = unpack_model(model, result.grid, result.grid_overrides)
    assert not packed_modules(model) and set(weights) == set(result.weights)
    for name, qweight in weights.items():
        assert qweight.grid == result.grid_for(name)
        assert torch.equal(qweight.dequantize(), result.weights[name].dequantize())
        assert torch.equal(model.get_submodule(name).weight, qweight.dequantize())
