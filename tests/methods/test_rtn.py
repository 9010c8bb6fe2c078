import pytest
import torch

from tritium.methods import RTNConfig, config_from_dict, method_names, quantize_
from tritium.models import decoder_layout, tiny_model
from tritium.quant import QuantConfigError, TernaryGrid, UniformGrid, quantize_weight


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma"])
@pytest.mark.parametrize("grid", [UniformGrid(bits=3, group=32), TernaryGrid("absmean", group="channel"),
                                  TernaryGrid("dlt", group=32)])
def test_rtn_puts_every_decoder_weight_on_its_grid(family, grid):
    model = tiny_model(family)
    before = {n: m.weight.detach().clone() for n, m in decoder_layout(model).quantizable_linears().items()}
    head = model.lm_head.weight.detach().clone()
    result = quantize_(model, RTNConfig(grid=grid))
    linears = decoder_layout(model).quantizable_linears()
    assert set(result.weights) == set(linears)
    for name, module in linears.items():
        expected = quantize_weight(before[name], grid).dequantize()
        assert torch.equal(module.weight, expected)
        assert not torch.equal(module.weight, before[name])
    assert torch.equal(model.lm_head.weight, head)


def test_skip_keeps_layers_float():
    model = tiny_model("llama")
    down = model.model.layers[0].mlp.down_proj.weight.detach().clone()
    result = quantize_(model, RTNConfig(grid=UniformGrid(bits=2, group=32), skip=("*.mlp.down_proj",)))
    assert torch.equal(model.model.layers[0].mlp.down_proj.weight, down)
    assert not any(n.endswith("down_proj") for n in result.weights)
    with pytest.raises(QuantConfigError, match="exclude every one"):
        quantize_(tiny_model("llama"), RTNConfig(skip=("*",)))


def test_registry_and_config_errors():
    assert "rtn" in method_names()
    config = config_from_dict("rtn", {"kind": "uniform", "bits": 2, "group": 32})
    assert isinstance(config, RTNConfig) and config.grid.bits == 2
    with pytest.raises(QuantConfigError, match="unknown method 'gptq-x'"):
        config_from_dict("gptq-x", {"kind": "uniform"})
    with pytest.raises(QuantConfigError, match="has no option"):
        config_from_dict("rtn", {"kind": "uniform"}, damp=0.1)


def test_group_that_does_not_divide_fails_before_any_weight_changes():
    model = tiny_model("llama", hidden_size=48, intermediate_size=96, num_attention_heads=4, num_key_value_heads=2)
    snapshot = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(QuantConfigError, match="does not divide"):
        quantize_(model, RTNConfig(grid=UniformGrid(bits=4, group=32)))
    assert all(torch.equal(v, snapshot[k]) for k, v in model.state_dict().items())
